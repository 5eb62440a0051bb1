"""`triptych train|eval|bench medical` and `triptych data medical ...` (heavy imports inside commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from apps.medical.cli_data import data  # noqa: F401  (the `triptych data medical` group)
from core.cli_checks import device_option, one_of
from core.reporting import check_json_destination

WEIGHTS = Path(__file__).parent / "weights"


def _table(title: str, metrics: dict) -> None:
    from core.reporting import print_metrics

    print_metrics(title, metrics)


def _write_json(path: str | None, metrics: dict) -> None:
    from core.reporting import write_metrics_json

    write_metrics_json(path, metrics)



def train(
    ct: Annotated[str | None, typer.Option("--ct", help="Rendered training set (labels.csv + volumes).")] = None,
    reports: Annotated[str | None, typer.Option("--reports", help="IU indiana_reports.csv (or its folder): train the report classifier.")] = None,
    out: Annotated[str | None, typer.Option(help="Output folder (default: the shipped weights folder).")] = None,
    patients: Annotated[str, typer.Option(help="Patient range to train on; must lie within 0001:0800.")] = "LIDC-IDRI-0001:LIDC-IDRI-0800",
    preset: Annotated[str, typer.Option(help="Training preset: detector_evidence (the shipped model: the dense detector's "
                                             "candidates + report risk factors, per-modality evidence added; needs "
                                             "--detector or a pack written with one), detector_risk, candidates_risk "
                                             "(ranked Hessian candidates, the default), candidates, candidates_aux, "
                                             "small / small_blob (whole-lung volume), tiny / tiny_candidates / "
                                             "tiny_detector (smoke tests; they take the width of the BERT in use, the "
                                             "bundled MiniLM by default).")] = "candidates_risk",
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the preset's epochs.")] = None,
    device: Annotated[str, typer.Option(callback=device_option(allow_auto=True), help="auto, cpu, cuda, cuda:N or mps "
                                        "(checked against this machine before any data is read).")] = "auto",
    bert_path: Annotated[str, typer.Option(help="Local BERT folder (e.g. BioBERT); empty = bundled MiniLM.")] = "",
    cache: Annotated[str | None, typer.Option(help="Cache folder for prepared volumes.")] = "datasets/prepared/medical",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    pack: Annotated[str | None, typer.Option(help="Train from a compact pack (see --write-pack) instead of --ct.")] = None,
    write_pack: Annotated[str | None, typer.Option(help="With --ct: write a compact training pack here and stop.")] = None,
    detector: Annotated[str | None, typer.Option(help="Nodule-detector bundle for the detector presets (see --train-detector); "
                                                     "with --train-detector, the detector to continue training from.")] = None,
    train_detector: Annotated[str | None, typer.Option(help="With --ct: train the dense nodule detector, write its bundle here and stop.")] = None,
    seconds: Annotated[float, typer.Option(min=0.0, help="--train-detector: wall-clock budget (0 = the preset's steps).")] = 0.0,
    detector_preset: Annotated[str, typer.Option(help="--train-detector: small, wide (shipped), small_group_norm or tiny.")] = "small",
    steps: Annotated[int, typer.Option(min=0, help="--train-detector: optimisation steps (0 = the preset's).")] = 0,
    workers: Annotated[int, typer.Option(min=1, help="--train-detector: processes reading the volumes.")] = 1,
    extra_pack: Annotated[list[str] | None, typer.Option("--extra-pack", help="With --pack: packs of other renders (render seeds) of the "
                                                         "training patients, written with the same --detector; training "
                                                         "studies only; repeatable.")] = None,
    extra_ct: Annotated[list[str] | None, typer.Option("--extra-ct", help="--train-detector: other renders (render seeds) of the "
                                                       "training patients, training patches only; repeatable.")] = None,
    modalities: Annotated[str, typer.Option(callback=one_of("both", "ct", "report"), help="both (the fusion model), or ct / report: a dedicated single-modality "
                                                 "model, the other input absent in training and validation; its bundle holds only "
                                                 "its input's modules.")] = "both",
    share_detector: Annotated[bool, typer.Option("--share-detector", help="Detector presets: save the model without "
                                                 "its nodule detector (the service loads it with the fusion model "
                                                 "that holds that detector: the shipped single-input models).")] = False,
    history_dropout: Annotated[float, typer.Option(help="Chance a training report loses its risk factors and half its "
                                                        "clauses (0 = the presets' default).")] = 0.0,
    history_dropout_factors: Annotated[bool, typer.Option("--history-dropout-factors", help="With --history-dropout: "
                                                          "each risk factor is lost with chance 1/2, not all.")] = False,
    drop_unused: Annotated[str | None, typer.Option("--drop-unused", help="Re-save this single-input bundle "
                                                    "(--modalities ct|report) with only the tensors its input uses, "
                                                    "checked to answer bit-identically, and stop; no retraining. "
                                                    "--detector: the fusion model it loads beside (default: the "
                                                    "shipped one).")] = None,
) -> None:
    """Train the radiology models: the IU report classifier (--reports), the nodule detector
    (--train-detector) and/or the CT + report fusion model (--ct)."""
    from apps.medical.data import parse_patient_range
    from core.offline import enforce_offline

    parse_patient_range(patients)  # a malformed --patients is refused before any loading
    enforce_offline()
    # given only when set: 0 / off leave the preset's own values
    history = {**({"history_dropout": history_dropout} if history_dropout else {}),
               **({"history_dropout_factors": True} if history_dropout_factors else {})}
    if drop_unused:
        from apps.medical.train import drop_unused_tensors

        drop_unused_tensors(drop_unused, bert_path, detector, log=typer.echo)
        return
    if train_detector:
        if not ct:
            raise typer.BadParameter("--train-detector needs --ct DIR (a rendered training set)")
        import torch

        from apps.medical.data import parse_patient_range
        from apps.medical.detector_train import (
            DetectorTrainConfig,
            load_detector_bundle,
            load_detector_studies,
            save_detector_bundle,
        )
        from apps.medical.detector_train import train_detector as fit_detector

        resolved = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        config = DetectorTrainConfig.from_name(detector_preset, seed=seed, device=resolved, seconds=seconds,
                                               **({"steps": steps} if steps else {}))
        studies = load_detector_studies(ct, config.detector, parse_patient_range(patients), workers=workers, log=typer.echo)
        extra = [s for root in extra_ct or [] for s in
                 load_detector_studies(root, config.detector, parse_patient_range(patients), workers=workers, log=typer.echo)]
        init = load_detector_bundle(detector) if detector else None
        det, info = fit_detector(studies, config, log=typer.echo, extra=extra, init=init)
        save_detector_bundle(det, train_detector, config, info["metrics"], sorted({s.patient_id for s in studies}),
                             info["history"])
        _table("nodule detector (patient-held-out validation)", info["metrics"])
        return
    if pack:
        import torch

        from apps.medical.train import FusionTrainConfig, train_from_pack

        config = FusionTrainConfig.from_name(preset, modalities=modalities, share_detector=share_detector, **history)
        config.loop.device = device
        if epochs is not None:
            config.loop.epochs = epochs
        runs = train_from_pack(pack, Path(out or WEIGHTS / "fusion"), config, seeds=(seed,), log=typer.echo,
                               extra_packs=tuple(extra_pack or ()))
        _table("fusion model from pack (patient-held-out validation)",
               {k: v for k, v in runs[f"seed{seed}"].items() if isinstance(v, (int, float))})
        return
    if not ct and not reports:
        raise typer.BadParameter("give --ct DIR (fusion model) and/or --reports FILE (IU report classifier)")
    if reports:
        from apps.medical.train import train_reports

        # --out names the fusion bundle when both are trained; the classifier then goes to its shipped place
        report_out = Path(out) if out and not ct else WEIGHTS / "iu_reports"
        metrics = train_reports(reports, report_out, seed=seed)
        _table("IU report classifier (uid-held-out validation)", metrics)
    if ct:
        import torch

        from apps.medical.data import parse_patient_range
        from apps.medical.train import FusionTrainConfig, train_fusion

        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
        config = FusionTrainConfig.from_name(preset, seed=seed, modalities=modalities, share_detector=share_detector,
                                             **history)
        config.loop.device = device
        if epochs is not None:
            config.loop.epochs = epochs
        if write_pack:
            from apps.medical.train import build_training_model, load_arrays
            from apps.medical.train import write_pack as write_pack_fn

            model = build_training_model(config.model, bert_path, detector)
            arrays = load_arrays(ct, model, parse_patient_range(patients), Path(cache) if cache else None, typer.echo,
                                 split=(config.val_fraction, config.seed))
            typer.echo(f"pack written to {write_pack_fn(arrays, model, write_pack)}")
            return
        _, metrics = train_fusion(ct, Path(out or WEIGHTS / "fusion"), config, parse_patient_range(patients),
                                  bert_path=bert_path, cache=Path(cache) if cache else None, log=typer.echo,
                                  detector=detector)
        _table("fusion model (patient-held-out validation)", {k: v for k, v in metrics.items() if isinstance(v, (int, float))})


def evaluate(
    ct: Annotated[str | None, typer.Option("--ct", help="Rendered set with labels.csv (e.g. patients 0801-1012).")] = None,
    reports: Annotated[str | None, typer.Option("--reports", help="IU indiana_reports.csv (or its folder).")] = None,
    json_out: Annotated[str | None, typer.Option("--json", help="Write the flat metrics JSON here.")] = None,
    bundle: Annotated[str | None, typer.Option(help="Fusion bundle folder (default: shipped).")] = None,
    classifier: Annotated[str | None, typer.Option(help="IU classifier JSON (default: the report_classifier_path setting, "
                                                        "the shipped one).")] = None,
    bert_path: Annotated[str, typer.Option(help="Local BERT folder the bundle was trained with; empty = MiniLM.")] = "",
    cache: Annotated[str | None, typer.Option(help="Cache folder for prepared volumes.")] = None,
    record: Annotated[str | None, typer.Option(help="Also write the metrics into the bundle's model card under this prefix (e.g. eval_0801_1012_).")] = None,
    side: Annotated[str | None, typer.Option("--side", callback=one_of("val", "train"), help="val | train: only the patients on that side of the fusion model's patient split (a training render).")] = None,
    ct_only_bundle: Annotated[str | None, typer.Option(help="--ct: the dedicated CT-only model that answers a study without a "
                                                           "report (default: the ct_only_bundle_dir setting unless --bundle "
                                                           "is given; 'none': the fusion model's own reading).")] = None,
    report_only_bundle: Annotated[str | None, typer.Option(help="--ct: the same for a study without a CT "
                                                               "(report_only_bundle_dir: the shipped report-only "
                                                               "model).")] = None,
) -> None:
    """Evaluate: --ct DIR (auc, auc_ct_only, auc_text_only, accuracy, ece; AUCs by contrast and slice spacing) or
    --reports FILE (auc, f1)."""
    from core.offline import enforce_offline

    enforce_offline()
    if bool(ct) == bool(reports):
        raise typer.BadParameter("give exactly one of --ct DIR or --reports FILE")
    if side not in (None, "val", "train"):
        raise typer.BadParameter("--side is val or train")
    check_json_destination(json_out)
    if reports:
        from apps.medical.evaluate import evaluate_reports
        from apps.medical.settings import get_settings

        metrics = evaluate_reports(reports, classifier or get_settings().report_classifier_path)
        _table("IU reports: nodule / mass / neoplasm", metrics)
    else:
        import torch

        from apps.medical.evaluate import evaluate_ct

        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
        from apps.medical.settings import get_settings

        settings = get_settings()

        def single_input(given: str | None, setting: Path | None) -> str | Path | None:
            if given is not None:
                return None if given.strip().lower() in ("", "none") else given
            return None if bundle else setting

        metrics = evaluate_ct(ct, bundle or settings.bundle_dir, bert_path, Path(cache) if cache else None, side=side,
                              ct_only_dir=single_input(ct_only_bundle, settings.ct_only_bundle_dir),
                              report_only_dir=single_input(report_only_bundle, settings.report_only_bundle_dir))
        _table("rendered CT + report", metrics)
        if record:
            from apps.medical.evaluate import record_in_card

            record_in_card(bundle or settings.bundle_dir, metrics, record,
                           reproduce=f"triptych eval medical --ct {ct} --json out.json")
    _write_json(json_out, metrics)


def bench(
    ct: Annotated[str, typer.Option("--ct", help="Rendered set (labels.csv) to time studies from.")],
    studies: Annotated[int, typer.Option(min=1, help="How many studies to time.")] = 10,
    threads: Annotated[int, typer.Option(min=1, help="torch CPU threads.")] = 2,
    bundle: Annotated[str | None, typer.Option(help="Fusion bundle folder (default: shipped).")] = None,
    json_out: Annotated[str | None, typer.Option("--json", help="Write timings JSON here.")] = None,
) -> None:
    """Seconds per study on CPU: file -> pipeline -> model + explanation (occlusion of each candidate; Grad-CAM for
    whole-volume models) -> heat-map PNGs."""
    import tempfile
    import time

    import numpy as np
    import torch

    from core.offline import enforce_offline

    enforce_offline()
    check_json_destination(json_out)
    torch.set_num_threads(threads)
    from apps.medical.data import load_rendered
    from apps.medical.service import MedicalRunner, StudyInput
    with tempfile.TemporaryDirectory() as tmp:
        from apps.medical.settings import get_settings

        settings = get_settings()
        runner = MedicalRunner(bundle or settings.bundle_dir, tmp, threads=threads,
                               **({} if bundle else {"ct_only_dir": settings.ct_only_bundle_dir,
                                                     "report_only_dir": settings.report_only_bundle_dir}))
        times = []
        for study in load_rendered(ct)[:studies]:
            started = time.perf_counter()
            volume = runner.load_ct(study.volume_path)
            runner.analyze(StudyInput(volume, study.report))
            times.append(time.perf_counter() - started)
    metrics = {"seconds_per_study_mean": float(np.mean(times)), "seconds_per_study_p95": float(np.percentile(times, 95)),
               "seconds_per_study_max": float(np.max(times)), "studies": float(len(times)), "threads": float(threads)}
    _table("radiology: CPU seconds per study", metrics)
    _write_json(json_out, metrics)
