"""`triptych train|eval|bench industrial` and `triptych data industrial ...` (heavy imports inside commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from apps.industrial import SPLITS, WEIGHTS
from core.cli_checks import number_list, one_of
from core.reporting import check_json_destination

PARTS = ("detector", "vibration", "fusion", "defect-classifier")

data = typer.Typer(help="DeepPCB conversion for ultralytics and split lists.", no_args_is_help=True)


def _table(title: str, metrics: dict) -> None:
    from core.reporting import print_metrics

    print_metrics(title, metrics)


def _write_json(path: str | None, metrics: dict) -> None:
    from core.reporting import write_metrics_json

    write_metrics_json(path, metrics)



def _check_data_yaml(path: Path) -> None:
    """The detector's --data is the ultralytics data.yaml that `data industrial prepare` writes: a mapping
    with train and val. Checked before ultralytics starts (it fails on anything else with a TypeError)."""
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"--data {path} not found (a data.yaml from `triptych data industrial prepare`)")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"--data {path} is not YAML (expected the data.yaml of `data industrial prepare`)") from exc
    if not isinstance(content, dict) or not {"train", "val"} <= set(content):
        raise ValueError(f"--data {path} is not an ultralytics data.yaml: expected a mapping with train: and val: "
                         "(see `triptych data industrial prepare`)")


def _check_crops(path: Path) -> None:
    """The defect classifier's --crops is the .npz of `data industrial crops`: arrays x (crops) and y (labels)."""
    from apps.industrial.data import open_npz

    if not path.is_file():
        raise FileNotFoundError(f"--crops {path} not found (an .npz from `triptych data industrial crops`)")
    with open_npz(path) as archive:
        missing = {"x", "y"} - set(archive.files)
    if missing:
        raise ValueError(f"--crops {path} lacks arrays {sorted(missing)} (expected x and y from `data industrial crops`)")


def _check_bundle_options(bundles: dict[str, str | None]) -> None:
    """Bundle folders given on the command line, checked before an evaluation starts: one that does not
    exist is named with its option here, not after the DeepPCB part has run (or, for --classifier,
    silently left out)."""
    from core.bundle import require_bundle_files

    for option, folder in bundles.items():
        if folder is not None:
            require_bundle_files(folder, what=option)


def _check_cwru_folder(cwru: str) -> None:
    """A cheap look at --cwru before a long DeepPCB evaluation runs ahead of it."""
    from core.data import dataset_files

    if not dataset_files(cwru, ".npz"):
        raise FileNotFoundError(f"no *.npz files under --cwru {cwru} (expected CWRU recordings, e.g. 1797_IR_007_DE12.npz)")


def train(
    part: Annotated[str, typer.Option(callback=one_of(*PARTS), help="detector, vibration, fusion or defect-classifier.")] = "vibration",
    cwru: Annotated[str | None, typer.Option("--cwru", help="CWRU folder (npz files, original layout).")] = None,
    deeppcb: Annotated[str | None, typer.Option("--deeppcb", help="DeepPCB folder (for --part fusion).")] = None,
    data_yaml: Annotated[str | None, typer.Option("--data", help="ultralytics data.yaml from `triptych data industrial prepare`.")] = None,
    arch: Annotated[str, typer.Option(help="Detector architecture: yolo11n, yolo11s or yolov7-tiny.")] = "yolo11n",
    epochs: Annotated[int, typer.Option(help="Detector epochs (an upper bound when --hours is given).")] = 100,
    hours: Annotated[float | None, typer.Option(help="Detector wall-clock budget in hours (ultralytics `time`).")] = None,
    batch: Annotated[int, typer.Option(help="Detector batch size.")] = 32,
    device: Annotated[str, typer.Option(help="cpu, or a CUDA device such as 0 / cuda.")] = "cpu",
    out: Annotated[str | None, typer.Option(help="Output folder (default: runs/industrial/<part>).")] = None,
    cross_validate: Annotated[bool, typer.Option(help="Vibration: leave-one-diameter-out CV before the final fit.")] = True,
    coupling: Annotated[float, typer.Option(help="Fusion: coupling strength of the paired events it is trained on.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    dropout: Annotated[float, typer.Option(help="Detector on template-diff data: share of training samples given the no-template encoding.")] = 0.3,
    keep: Annotated[str, typer.Option(help="Detector weights to keep: last (final EMA) or best (ultralytics' pick on the validation groups).")] = "last",
    init: Annotated[str | None, typer.Option(help="Detector: warm-start from this detector bundle (e.g. apps/industrial/weights/detector_template).")] = None,
    exclude_groups: Annotated[str | None, typer.Option("--exclude-groups", help="Detector: leave these training board groups out (e.g. group44000,group77000) to calibrate the board threshold on them.")] = None,
    crops: Annotated[str | None, typer.Option("--crops", help="Defect classifier: crops file from `triptych data industrial crops`.")] = None,
    crop_epochs: Annotated[int, typer.Option(help="Defect classifier epochs.")] = 30,
    widths: Annotated[str, typer.Option(callback=number_list(int, 1), help="Defect classifier: channels per stage, comma-separated.")] = "16,32,64,128",
    crop_template_dropout: Annotated[float, typer.Option(help="Defect classifier: share of training crops shown without their template.")] = 0.0,
) -> None:
    """Train the industrial models: --part detector (ultralytics; GPU), vibration (CPU is fine), fusion."""
    from core.offline import enforce_offline

    enforce_offline()
    import torch

    if device == "cpu":
        torch.set_num_threads(1)
    target = Path(out or f"runs/industrial/{part}")
    if part == "vibration":
        if not cwru:
            raise typer.BadParameter("--part vibration needs --cwru DIR")
        from apps.industrial.train import VibrationTrainConfig, train_vibration

        metrics = train_vibration(Path(cwru), target, config=VibrationTrainConfig(seed=seed), cross_validate=cross_validate, log=typer.echo)
        _table("vibration classifier", metrics)
    elif part == "detector":
        if not data_yaml:
            raise typer.BadParameter("--part detector needs --data data.yaml (see `triptych data industrial prepare`)")
        _check_data_yaml(Path(data_yaml))
        from apps.industrial.data import parse_groups
        from apps.industrial.detector import ARCHITECTURES, train_detector

        if arch not in ARCHITECTURES:  # before train_detector makes its output folder
            raise typer.BadParameter(f"--arch {arch!r}: choose from {', '.join(ARCHITECTURES)}")

        dev = "0" if device == "cuda" else device
        metrics = train_detector(arch, Path(data_yaml), target, epochs=epochs, time_hours=hours, batch=batch, device=dev, seed=seed,
                                 dropout=dropout, keep=keep, init=Path(init) if init else None,
                                 exclude_groups=parse_groups(exclude_groups))
        _table(f"detector {arch} (validation board groups)", metrics)
        typer.echo(f"weights: {target / 'model.safetensors'} + {target / 'model.yaml'}; package with `triptych data industrial bundle-detector`")
    elif part == "fusion":
        if not (cwru and deeppcb):
            raise typer.BadParameter("--part fusion needs --cwru DIR and --deeppcb DIR")
        from apps.industrial.fusion_train import train_fusion_bundle

        metrics = train_fusion_bundle(Path(deeppcb), Path(cwru), target, coupling=coupling, seed=seed, log=typer.echo)
        _table("fusion model", metrics)
    elif part == "defect-classifier":
        if not crops:
            raise typer.BadParameter("--part defect-classifier needs --crops FILE (see `triptych data industrial crops`)")
        _check_crops(Path(crops))
        from apps.industrial.reclassify import CropTrainConfig, train_reclassifier_bundle

        metrics = train_reclassifier_bundle(Path(crops), target, CropTrainConfig(epochs=crop_epochs, seed=seed, template_dropout=crop_template_dropout),
                                            widths=tuple(int(w) for w in widths.split(",")), device=device, log=typer.echo)
        _table("defect crop classifier", metrics)
    else:
        raise typer.BadParameter("--part must be detector, vibration, fusion or defect-classifier")


def evaluate(
    deeppcb: Annotated[str | None, typer.Option("--deeppcb", help="DeepPCB folder in its own layout (DIR/PCBData/...).")] = None,
    split: Annotated[str | None, typer.Option("--split", help="List file: a name inside DIR/PCBData (test.txt, trainval.txt) or a path "
                                            "(default: DeepPCB's own test list, PCBData/test.txt, when DIR has it, else "
                                            "PCBData/trainval.txt, whose boards the shipped detectors mostly trained on).")] = None,
    cwru: Annotated[str | None, typer.Option("--cwru", help="Folder with CWRU *.npz (any depth).")] = None,
    cwru_sensor: Annotated[str, typer.Option("--cwru-sensor", callback=one_of("DE", "FE", "BA"), help="Accelerometer read from the CWRU files: DE (drive end, what the model is trained on), FE (fan end) or BA (base); files without it are skipped.")] = "DE",
    json_out: Annotated[str | None, typer.Option("--json", help="Write one flat JSON object here.")] = None,
    detector: Annotated[str | None, typer.Option(help="Default detector bundle, as the service's detector_dir: reads the boards without a template and, unless --template-detector pairs it, every board (with its template when template-aware). Default: the service's pair, the shipped template-aware detector for boards with a template, the image-only one for the others.")] = None,
    template_detector: Annotated[str | None, typer.Option("--template-detector", help="Template-aware detector for boards with a template, paired with --detector (or the settings' image-only one) as the service pairs them.")] = None,
    vibration: Annotated[str | None, typer.Option(help="Vibration bundle (default: shipped).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads.")] = 2,
    limit: Annotated[int | None, typer.Option(min=1, help="Evaluate only the first N boards (smoke runs).")] = None,
    no_template: Annotated[bool, typer.Option("--no-template", help="Do not give a template-aware detector the boards' templates (the endpoint's path without one).")] = False,
    backend: Annotated[str, typer.Option(callback=one_of("onnx", "torch"), help="Detector runtime: onnx (onnxruntime) or torch.")] = "onnx",
    precision: Annotated[str | None, typer.Option(callback=one_of("fp32", "int8"), help="Detector precision: fp32 or int8 (onnx only; default: the settings').")] = None,
    classifier: Annotated[str | None, typer.Option(help="Defect crop classifier bundle that relabels boxes of boards read with their template (default: the settings').")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="onnxruntime detector sessions sharing --threads, each board's inputs split across them (default: the settings' detector_workers).")] = None,
    no_classifier: Annotated[bool, typer.Option("--no-classifier", help="Keep the detector's own classes.")] = False,
) -> None:
    """Evaluate the shipped models: --deeppcb DIR --split LIST (detection) and/or --cwru DIR (vibration).

    DeepPCB boards are decided as the service decides them under the TRIPTYCH_INDUSTRIAL_ settings (thresholds,
    minimum defect sizes, rule, review band); a board answered review counts as not passed."""
    from core.offline import enforce_offline

    enforce_offline()
    if not deeppcb and not cwru:
        raise typer.BadParameter("give --deeppcb DIR [--split LIST] and/or --cwru DIR")
    check_json_destination(json_out)
    # (--detector and --template-detector are read first thing, after the board list: load_bundle names them)
    _check_bundle_options({"--vibration": vibration, "--classifier": None if no_classifier else classifier})
    if deeppcb and cwru:
        _check_cwru_folder(cwru)
    metrics: dict[str, float] = {}
    if deeppcb:
        from apps.industrial.evaluate import evaluate_deeppcb
        from apps.industrial.settings import get_settings

        settings = get_settings()
        if precision is None:
            precision = settings.detector_precision if backend == "onnx" else "fp32"
        # As the service routes each board (service.detector_route): a board with a template goes to the
        # template-aware detector when one is loaded, any other board to the default (image-only) one.
        template_dir = None
        if template_detector is not None:
            template_dir = Path(template_detector)
        elif detector is None:
            tdir = settings.template_detector_dir
            if tdir is not None and (Path(tdir) / "model.safetensors").exists():
                template_dir = Path(tdir)
        if no_template:
            template_dir = None  # every board read on the image alone, the endpoint's path without a template
        if detector is None:
            detector = str(settings.detector_dir)
        reclassifier = None
        classifier_dir = Path(classifier) if classifier else settings.defect_classifier_dir
        if not no_classifier and classifier_dir is not None and (classifier_dir / "model.safetensors").exists():
            from apps.industrial.reclassify import load_reclassifier

            reclassifier = load_reclassifier(classifier_dir, threads=threads, backend="onnx" if backend == "onnx" else "torch")
        from apps.industrial.data import default_eval_split

        split = split or default_eval_split(Path(deeppcb))
        m = evaluate_deeppcb(Path(detector), Path(deeppcb), split, threads=threads, limit=limit,
                             backend=backend, precision=precision, use_template=not no_template, reclassifier=reclassifier,
                             workers=settings.detector_workers if workers is None else workers, template_bundle_dir=template_dir,
                             settings=settings)
        mode = {0.0: "without template", 1.0: "with template"}.get(m["template_used"], f"{m['template_used']:.0%} of boards with template")
        _table(f"DeepPCB {split} ({backend} {precision}, {mode})", m)
        metrics.update(m)
    if cwru:
        from apps.industrial.evaluate import evaluate_cwru

        m = evaluate_cwru(Path(vibration or WEIGHTS / "vibration"), Path(cwru), threads=threads, sensor=cwru_sensor)
        _table(f"CWRU vibration ({cwru_sensor} accelerometer)", m)
        if deeppcb:
            # Both evaluations in one call: the vibration keys prefixed, and also unprefixed (accuracy,
            # macro_f1, n_windows, ...) wherever a detection key does not already hold the name.
            metrics.update({f"vibration_{k}": v for k, v in m.items()} | {k: v for k, v in m.items() if k not in metrics})
        else:
            metrics.update(m)
    _write_json(json_out, metrics)


def bench(
    deeppcb: Annotated[str, typer.Option("--deeppcb", help="DeepPCB folder (its held-out groups feed the pairing).")],
    cwru: Annotated[str | None, typer.Option("--cwru", help="CWRU folder (needed unless --speed).")] = None,
    speed: Annotated[bool, typer.Option("--speed", help="Only measure CPU speed: the detector's images/s (onnx and torch, 1 and 2 threads) and the service runner's boards/s, one board at a time.")] = False,
    json_out: Annotated[str | None, typer.Option("--json", help="Write the flat metrics here.")] = None,
    cache: Annotated[str, typer.Option(help="Folder for cached upstream features.")] = "runs/industrial/bench",
    split: Annotated[str, typer.Option(help="Split list whose boards feed the benchmark (must be held out from detector training).")] = str(SPLITS / "deeppcb_val.txt"),
    couplings: Annotated[str, typer.Option(callback=number_list(float, 0.0, 1.0), help="Comma-separated coupling strengths, each 0..1.")] = "0,0.25,0.5,0.75,1",
) -> None:
    """Paired image+vibration benchmark (explicit generative assumption): fused vs single-modality vs Bayesian."""
    from core.offline import enforce_offline

    enforce_offline()
    check_json_destination(json_out)
    import torch

    if speed:
        from apps.industrial.data import load_deeppcb
        from apps.industrial.evaluate import detector_speed, precision_speed

        samples = load_deeppcb(Path(deeppcb), split)[:16]
        images = [s.image for s in samples]
        metrics = {}
        for threads in (1, 2):
            m = detector_speed(WEIGHTS / "detector", images, threads, backend="torch")
            metrics[f"torch_{threads}thread_images_per_second"] = m["images_per_second"]
            # onnxruntime fp32 vs int8, interleaved round by round to cancel the shared machine's load
            metrics.update({f"onnx_{k}": v for k, v in precision_speed(WEIGHTS / "detector", images, threads).items()})
        # the service's runtime: two 1-thread INT8 sessions, boards sent two at a time (settings.detector_workers)
        m = detector_speed(WEIGHTS / "detector", images, 2, repeats=3, batch=2, precision="int8", workers=2)
        metrics["onnx_int8_2workers_batch2_images_per_second"] = m["images_per_second"]
        # the whole runner as the service configures it, one board at a time (what a line sending boards in turn gets)
        from apps.industrial.evaluate import service_speed
        from apps.industrial.service import load_runner
        from apps.industrial.settings import get_settings

        metrics.update(service_speed(load_runner(get_settings()), samples))
        _table("detector CPU speed (640 px, forward + NMS; service_*: the runner, one board at a time)", metrics)
        _write_json(json_out, metrics)
        return
    if not cwru:
        raise typer.BadParameter("the paired benchmark needs --cwru DIR")

    torch.set_num_threads(1)
    from apps.industrial.benchmark import PairingConfig, run_benchmark, upstream_features
    from core.bundle import load_bundle

    detector_bundle = load_bundle(WEIGHTS / "detector")
    img_npz, vib_npz, platt, _ = upstream_features(WEIGHTS / "detector", WEIGHTS / "vibration", Path(deeppcb), Path(cwru), split,
                                                Path(cache), typer.echo)
    config = PairingConfig(couplings=tuple(float(c) for c in couplings.split(",")))
    # the production rule's threshold is the bundle's current one, not the one cached with the features
    threshold = float(detector_bundle.config["detector"]["conf"])
    from apps.industrial.settings import get_settings

    metrics, _ = run_benchmark(img_npz, vib_npz, config, log=typer.echo, image_threshold=threshold, platt=platt,
                               review_band=get_settings().review_band)
    metrics.pop("config", None)
    _table("paired benchmark (board-level)", metrics)
    _write_json(json_out, metrics)


@data.command("prepare")
def prepare(
    deeppcb: Annotated[str, typer.Option("--deeppcb", help="DeepPCB folder in its own layout.")],
    out: Annotated[str, typer.Option(help="Output folder for the ultralytics dataset.")] = "datasets/prepared/deeppcb",
    split: Annotated[str, typer.Option(help="List inside DIR/PCBData to convert.")] = "trainval.txt",
    grayscale: Annotated[bool, typer.Option(help="8-bit grayscale PNG instead of 1-bit (bilevel) PNG.")] = False,
    templates: Annotated[bool, typer.Option(help="Add defect-free background images (templates; repaired scans for template-diff).")] = True,
    input_mode: Annotated[str, typer.Option("--input", help="Detector input: gray (image only) or template-diff (image, template, |difference|).")] = "gray",
) -> None:
    """Convert DeepPCB to an ultralytics dataset (board-group validation split, compact PNG)."""
    from apps.industrial.data import prepare_ultralytics

    counts = prepare_ultralytics(Path(deeppcb), Path(out), split, bilevel=not grayscale, templates_as_background=templates,
                                 input_mode=input_mode)
    typer.echo(f"{out}: {counts}")


@data.command("crops")
def crops_command(
    deeppcb: Annotated[str, typer.Option("--deeppcb", help="DeepPCB folder in its own layout.")],
    out: Annotated[str, typer.Option(help="Output .npz.")] = "datasets/prepared/defect_crops.npz",
    split: Annotated[str, typer.Option(help="Board list (DeepPCB layout) to draw from.")] = str(SPLITS / "deeppcb_train.txt"),
    bundle: Annotated[str, typer.Option(help="Template detector bundle: its held-out calibration groups are left out.")] = str(WEIGHTS / "detector_template"),
    size: Annotated[int, typer.Option(help="Crop side in pixels.")] = 56,
    jitters: Annotated[int, typer.Option(help="Jittered copies of each annotated box.")] = 3,
    seed: Annotated[int, typer.Option(help="Jitter seed.")] = 0,
    all_groups: Annotated[bool, typer.Option("--all-groups", help="Keep the bundle's held-out groups too (for a classifier that goes with a detector trained on every group).")] = False,
) -> None:
    """Crops around every annotated defect of the training boards, for the defect classifier."""
    import json

    import numpy as np

    from apps.industrial.data import load_deeppcb
    from apps.industrial.reclassify import CropClassifierConfig, defect_crops

    held_out = set() if all_groups else set(_calibration_groups(bundle, None)[0])
    samples = [s for s in load_deeppcb(Path(deeppcb), split) if s.group not in held_out]
    groups = sorted({s.group for s in samples})
    config = CropClassifierConfig(size=size)
    x, y = defect_crops(samples, config, jitters=jitters, seed=seed)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, x=x, y=y, config=json.dumps(config.to_dict()), groups=np.array(groups))
    typer.echo(f"{out}: {len(y)} crops of {len(samples)} boards ({', '.join(groups)}; left out: {', '.join(sorted(held_out)) or 'none'})")


@data.command("quantize")
def quantize(
    deeppcb: Annotated[str, typer.Option("--deeppcb", help="DeepPCB folder in its own layout.")],
    bundle: Annotated[str, typer.Option(help="Detector bundle to add detector-int8.onnx to (named: the shipped ones are apps/industrial/weights/detector and detector_template).")],
    split: Annotated[str, typer.Option(help="Calibration list: TRAINING boards only (validation groups are refused).")] = str(SPLITS / "deeppcb_train.txt"),
    n: Annotated[int, typer.Option(help="Calibration images (half tested boards, half templates).")] = 96,
    method: Annotated[str, typer.Option(help="Activation range calibration: percentile (99.999th; what ships) or minmax.")] = "percentile",
    seed: Annotated[int, typer.Option(help="Seed of the calibration image draw.")] = 0,
) -> None:
    """Build the detector's static INT8 ONNX model (QDQ, per-channel weights) inside its bundle."""
    from core.offline import enforce_offline

    enforce_offline()
    from apps.industrial.detector import DetectorConfig, calibration_items, quantize_detector
    from core.bundle import load_bundle

    bundle_config = load_bundle(Path(bundle)).config
    input_mode = DetectorConfig(**bundle_config["detector"]).input
    # groups held out of training stay out of every calibration it is not meant for
    images = calibration_items(Path(deeppcb), split, n=n, seed=seed, input_mode=input_mode,
                               exclude_groups=bundle_config.get("held_out_groups", ()))
    meta = quantize_detector(Path(bundle), images, method=method, log=typer.echo)
    typer.echo(f"sha256 {meta['sha256']} recorded in {Path(bundle) / 'card.json'}; select with TRIPTYCH_INDUSTRIAL_DETECTOR_PRECISION=int8")


@data.command("threshold")
def threshold(
    deeppcb: Annotated[str, typer.Option("--deeppcb", help="DeepPCB folder in its own layout.")],
    bundle: Annotated[str, typer.Option(help="Detector bundle whose config.json receives the thresholds (named: no default rewrites the shipped weights).")],
    split: Annotated[str, typer.Option(help="TRAINING list (validation groups are refused).")] = str(SPLITS / "deeppcb_train.txt"),
    every: Annotated[int, typer.Option(help="Use every N-th board of the list.")] = 3,
    precision: Annotated[str | None, typer.Option(help="fp32 or int8 (default: the settings').")] = None,
    slack: Annotated[float, typer.Option(help="Allowed false-alarm / miss share on these boards.")] = 0.01,
    json_out: Annotated[str | None, typer.Option("--json", help="Write the selection's numbers here.")] = None,
    groups: Annotated[str | None, typer.Option("--groups", help="Only these board groups of the list (default: the bundle's held-out calibration groups, if it records any, every board).")] = None,
) -> None:
    """Choose the board decision thresholds (with / without template) on training boards; store them in the bundle.

    A bundle trained with board groups held out (`train --exclude-groups`, `bundle-detector --exclude-groups`)
    is calibrated on those groups, every board: boards it never saw."""
    from core.offline import enforce_offline

    enforce_offline()
    check_json_destination(json_out)
    import torch

    torch.set_num_threads(1)
    from apps.industrial.evaluate import select_thresholds
    from apps.industrial.fusion_train import set_detector_thresholds

    if precision is None:
        from apps.industrial.settings import get_settings

        precision = get_settings().detector_precision
    chosen, from_bundle = _calibration_groups(bundle, groups)
    if from_bundle:
        every = 1
        typer.echo(f"calibrating on the bundle's held-out groups {', '.join(chosen)} (every board)")
    m = select_thresholds(Path(bundle), Path(deeppcb), split, every=every, precision=precision, slack=slack, groups=chosen)
    set_detector_thresholds(Path(bundle), m["conf"], m.get("conf_no_template"))
    _table(f"decision thresholds from {split}{' ' + ','.join(chosen) if chosen else ''} ({precision})", m)
    _write_json(json_out, m)


@data.command("platt")
def platt(
    deeppcb: Annotated[str, typer.Option("--deeppcb", help="DeepPCB folder in its own layout.")],
    bundle: Annotated[str, typer.Option(help="Detector bundle whose config.json receives the Platt scaling (named: no default rewrites the shipped weights).")],
    precision: Annotated[str | None, typer.Option(help="fp32 or int8 (default: the settings').")] = None,
    split: Annotated[str | None, typer.Option(help="List holding the boards (default: the validation list, for its fusion-train group).")] = None,
    groups: Annotated[str | None, typer.Option("--groups", help="Board groups to fit on (default: the bundle's held-out calibration groups from the training list, else group13000).")] = None,
) -> None:
    """Calibrate a detector's board score (template-aware or image-only) for the Bayesian decision rule
    (fusion-train group, or the bundle's held-out calibration groups)."""
    from core.offline import enforce_offline

    enforce_offline()
    import torch

    torch.set_num_threads(1)
    from apps.industrial.fusion_train import fit_template_platt

    if precision is None:
        from apps.industrial.settings import get_settings

        precision = get_settings().detector_precision
    chosen, from_bundle = _calibration_groups(bundle, groups)
    if from_bundle:
        split = split or str(SPLITS / "deeppcb_train.txt")
    typer.echo(fit_template_platt(Path(bundle), Path(deeppcb), split=split, groups=chosen or ("group13000",), precision=precision))


def _calibration_groups(bundle: str, groups: str | None) -> tuple[tuple[str, ...], bool]:
    """The board groups a calibration command uses: ``--groups`` when given, else the bundle's
    held-out groups (``bundle-detector --exclude-groups``); and whether they came from the bundle."""
    from apps.industrial.data import parse_groups
    from core.bundle import load_bundle

    chosen = parse_groups(groups)
    if chosen:
        return chosen, False
    held_out = tuple(load_bundle(Path(bundle)).config.get("held_out_groups", ()))
    return held_out, bool(held_out)


@data.command("splits")
def splits(
    deeppcb: Annotated[str, typer.Option("--deeppcb", help="DeepPCB folder in its own layout.")],
    out: Annotated[str, typer.Option(help="Folder for deeppcb_train.txt / deeppcb_val.txt (the shipped lists: "
                                          "apps/industrial/splits in a checkout).")],
    calibration_groups: Annotated[str | None, typer.Option("--calibration-groups", help="Also write deeppcb_calib.txt (these training groups) and deeppcb_fit.txt (the rest).")] = None,
) -> None:
    """Write the board-group train/validation lists (DeepPCB's list format)."""
    from apps.industrial.data import (
        load_deeppcb,
        parse_groups,
        select_groups,
        split_by_group,
        write_split_list,
    )

    train_set, val_set = split_by_group(load_deeppcb(Path(deeppcb)))
    Path(out).mkdir(parents=True, exist_ok=True)
    write_split_list(train_set, Path(deeppcb), Path(out) / "deeppcb_train.txt")
    write_split_list(val_set, Path(deeppcb), Path(out) / "deeppcb_val.txt")
    typer.echo(f"{len(train_set)} train / {len(val_set)} validation boards")
    cal = parse_groups(calibration_groups)
    if cal:
        cal_set, fit_set = select_groups(train_set, include=cal), select_groups(train_set, exclude=cal)
        write_split_list(cal_set, Path(deeppcb), Path(out) / "deeppcb_calib.txt")
        write_split_list(fit_set, Path(deeppcb), Path(out) / "deeppcb_fit.txt")
        typer.echo(f"of the training boards: {len(fit_set)} fit / {len(cal_set)} calibration ({', '.join(cal)})")


@data.command("bundle-detector")
def bundle_detector(
    weights: Annotated[str, typer.Option(help="Folder with model.safetensors (+ metrics.json) from `train industrial`; or your own "
                                              "ultralytics checkpoint: a .pt file (runs/detect/NAME/weights/best.pt of `yolo train`) "
                                              "or a folder holding best.pt / last.pt. A .pt is a pickle and converting it unpickles "
                                              "it (restricted to ultralytics' and torch's model classes): acceptable only for your "
                                              "own local file, converted once, offline. Serving loads the safetensors bundle "
                                              "written here and never unpickles.")],
    out: Annotated[str, typer.Option(help="Bundle folder to write.")],
    arch: Annotated[str | None, typer.Option(help="yolo11n, yolo11s or yolov7-tiny; needed for model.safetensors. A checkpoint "
                                                  "carries its own model YAML (if given, it must agree).")] = None,
    conf: Annotated[float, typer.Option(help="Decision threshold stored in the bundle.")] = 0.25,
    input_mode: Annotated[str, typer.Option("--input", help="Input the weights were trained on: gray or template-diff.")] = "gray",
    exclude_groups: Annotated[str | None, typer.Option("--exclude-groups", help="Board groups the weights were trained without (train --exclude-groups): recorded as the bundle's calibration groups.")] = None,
    border: Annotated[int, typer.Option(help="Gray margin (px) around the image the network runs with: 16 = ultralytics' validation margin, "
                                             "which helped the shipped template-aware detector and not the image-only one (compare on held-out groups).")] = 0,
) -> None:
    """Package detector weights as a core bundle (config with the YAML, safetensors, card): this repository's trained
    weights, or an ultralytics checkpoint converted once. A checkpoint's classes must be DeepPCB's six by name (open,
    short, mousebite, spur, copper, pin-hole; any order, case, spaces, '-' and '_' ignored); any other set is refused."""
    from apps.industrial.checkpoint import bundle_from_checkpoint, find_detector_weights
    from apps.industrial.data import parse_groups
    from apps.industrial.fusion_train import make_detector_bundle

    if input_mode not in ("gray", "template-diff"):
        raise typer.BadParameter(f"--input {input_mode!r}: gray or template-diff")
    source = find_detector_weights(weights)
    held_out = parse_groups(exclude_groups)
    if source.is_file():
        bundle = bundle_from_checkpoint(source, Path(out), arch=arch, conf=conf, input_mode=input_mode,
                                        held_out_groups=held_out, border=border)
        converted = bundle.card.extra["source_checkpoint"]
        setting = "TEMPLATE_DETECTOR_DIR" if input_mode == "template-diff" else "DETECTOR_DIR"
        typer.echo(f"wrote {out} from {source} (sha256 {converted['sha256'][:12]}…, {bundle.config['detector']['imgsz']} px"
                   + (f", classes matched by name to {converted['class_names']}" if bundle.card.notes else "") + ")\n"
                   f"serve it: TRIPTYCH_INDUSTRIAL_{setting}={out} with TRIPTYCH_INDUSTRIAL_DETECTOR_PRECISION=fp32, or first "
                   f"`triptych data industrial quantize --bundle {out} --deeppcb DIR`; its board threshold is --conf {conf} until "
                   f"`triptych data industrial threshold --bundle {out} --deeppcb DIR` chooses one")
        return
    if arch is None:
        raise typer.BadParameter(f"--arch is needed for {source}/model.safetensors (yolo11n, yolo11s or yolov7-tiny)")
    make_detector_bundle(source, arch, Path(out), conf=conf, input_mode=input_mode, held_out_groups=held_out, border=border)
    typer.echo(f"wrote {out}")


@data.command("border")
def border(
    bundle: Annotated[str, typer.Option(help="Detector bundle whose config.json receives the margin.")],
    px: Annotated[int, typer.Option(help="Gray margin in pixels on every side (a multiple of 16; 0 = none).")] = 16,
) -> None:
    """Set the gray margin a detector bundle's network runs with; then rebuild its INT8 model, thresholds and Platt scaling."""
    from apps.industrial.fusion_train import set_detector_border
    from core.bundle import CONFIG, require_bundle_files

    require_bundle_files(bundle, (CONFIG,), what="--bundle")
    try:
        set_detector_border(Path(bundle), px)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    typer.echo(f"{bundle}: border {px} px; now run `data industrial quantize`, `threshold` and `platt` for it")


@data.command("card")
def card(
    bundle: Annotated[str, typer.Option(help="Detector bundle whose card.json (and MODEL_CARD.md, generated from it) to update.")],
    metrics: Annotated[list[str] | None, typer.Option("--metrics", help="PREFIX=FILE.json: a flat metrics JSON (an eval's --json) stored as PREFIX_<key>; repeatable.")] = None,
    notes_file: Annotated[str | None, typer.Option("--notes-file", help="Text put before the card's existing notes.")] = None,
    field: Annotated[list[str] | None, typer.Option("--field", help="NAME=FILE: replace a card text field (split, reproduce; limitations: one a line) with the file's text; repeatable.")] = None,
    training: Annotated[str | None, typer.Option("--training", help="The training run's metrics.json (ultralytics' validator numbers renamed ultralytics_val_*).")] = None,
    replace_metrics: Annotated[bool, typer.Option("--replace-metrics", help="Drop the card's metrics first (a new model's card).")] = False,
) -> None:
    """Record measured numbers and notes in a detector bundle's card (card.json -> MODEL_CARD.md)."""
    import json

    from apps.industrial.detector import update_detector_card
    from apps.industrial.fusion_train import training_metrics
    from core.bundle import CARD_JSON, require_bundle_files

    require_bundle_files(bundle, (CARD_JSON,), what="--bundle")
    card_path = Path(bundle) / "card.json"
    if replace_metrics:
        data = json.loads(card_path.read_text())
        data["metrics"] = {}
        card_path.write_text(json.dumps(data, indent=2) + "\n")
    values: dict[str, float] = training_metrics(Path(training)) if training else {}
    for item in metrics or []:
        prefix, _, path = item.partition("=")
        if not path:
            raise typer.BadParameter(f"--metrics takes PREFIX=FILE.json, not {item!r}")
        values.update({f"{prefix}_{k}": float(v) for k, v in json.loads(Path(path).read_text()).items()
                       if isinstance(v, (int, float))})
    for item in field or []:
        name, _, path = item.partition("=")
        if name not in ("split", "reproduce", "limitations") or not path:
            raise typer.BadParameter(f"--field takes split=FILE, reproduce=FILE or limitations=FILE, not {item!r}")
        data = json.loads(card_path.read_text())
        text = Path(path).read_text().strip()
        data[name] = [line for line in text.splitlines() if line.strip()] if name == "limitations" else text
        card_path.write_text(json.dumps(data, indent=2) + "\n")
    notes = None
    if notes_file:
        old = json.loads(card_path.read_text()).get("notes", "")
        notes = Path(notes_file).read_text().strip() + ("\n\n" + old if old else "")
    update_detector_card(Path(bundle), metrics=values or None, notes=notes)
    typer.echo(f"updated {card_path} and MODEL_CARD.md ({len(values)} metrics)")
