"""The dense nodule detector: targets, decoding, coordinates back in the input volume, training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from apps.medical.detector import (
    DETECTOR_FEATURES,
    STRIDE,
    NoduleDetector,
    NoduleDetectorConfig,
    decode,
    detection_candidates,
    detector_loss,
    heat_targets,
)


def test_heat_targets_peak_at_the_nodule_cell_with_its_size_and_label():
    config = NoduleDetectorConfig()
    t = heat_targets((10, 12, 12), [(20.0, 24.0, 8.0, 12.0, 1.0), (4.0, 40.0, 40.0, 5.0, 0.0)], config)
    assert t["heat"][5, 6, 2] == 1.0 and t["heat"][1, 10, 10] == 1.0
    assert t["heat"].max() == 1.0 and 0.0 < t["heat"][5, 6, 3] < 1.0
    assert t["size"][5, 6, 2] == pytest.approx(np.log(12.0)) and t["malignant"][5, 6, 2] == 1.0
    assert t["malignant"][1, 10, 10] == 0.0 and t["size"][1, 10, 10] == pytest.approx(np.log(5.0))


def test_decode_returns_separated_peaks_in_grid_voxels():
    config = NoduleDetectorConfig(min_separation_mm=10.0)
    heat = torch.full((1, 8, 10, 10), -8.0)
    heat[0, 2, 3, 4] = 4.0
    heat[0, 2, 3, 5] = 3.5  # 8 mm away: the same nodule, suppressed
    heat[0, 6, 8, 1] = 2.0
    out = {"heat": heat, "size": torch.full_like(heat, np.log(9.0)), "malignancy": torch.zeros_like(heat)}
    det = decode(out, k=2, config=config)[0]
    assert len(det.heat_logit) == 2 and det.heat_logit[0] == pytest.approx(4.0)
    assert np.allclose(det.centres_vox[1], np.array([6, 8, 1]) * STRIDE, atol=0.5)
    assert abs(det.centres_vox[0][2] - 4 * STRIDE) < 0.5 * STRIDE  # refined towards its neighbour, within a cell
    assert np.allclose(det.diameter_mm, 9.0)


class _FixedHeat(NoduleDetector):
    """Puts the heat peak under a chosen voxel of the detector grid, whatever the input."""

    def __init__(self, peak_vox):
        super().__init__(NoduleDetectorConfig.from_name("tiny"))
        self.peak_vox = peak_vox

    def forward(self, x):
        cells = [-(-n // STRIDE) for n in x.shape[2:]]
        heat = torch.full([x.shape[0], *cells], -8.0)
        heat[(slice(None), *[int(round(v / STRIDE)) for v in self.peak_vox])] = 5.0
        return {"heat": heat, "size": torch.full_like(heat, np.log(8.0)), "malignancy": torch.zeros_like(heat)}


def test_candidates_map_back_to_the_input_voxels_when_resampled():
    from apps.medical.candidates import CandidateConfig

    hu = np.full((40, 64, 64), -850.0, np.float32)
    spacing = (1.25, 1.0, 1.0)  # twice the detector grid's resolution in every axis
    # a peak at grid voxel (8, 16, 24) is input voxel ~(16, 32, 48)
    cands = detection_candidates(hu, spacing, _FixedHeat((8, 16, 24)), CandidateConfig(k=3, crop=8))
    assert cands.mask.all()  # always k candidates: weak peaks are evidence too (their heat is a feature)
    assert cands.geometry[0, 0] == pytest.approx(5.0) and (cands.geometry[1:, 0] < 0).all()
    assert np.abs(cands.centres_vox[0] - np.array([16, 32, 48])).max() <= 1
    assert cands.geometry.shape == (3, len(DETECTOR_FEATURES)) and cands.crops.shape == (3, 8, 8, 8)
    assert cands.geometry[0, DETECTOR_FEATURES.index("diameter_mm")] == pytest.approx(8.0)


BLOB_TRAIN_STEPS = 150


def test_tiny_detector_learns_to_find_a_blob():
    """A few hundred CPU steps on generated scans: the top detection lands on the bright blob."""
    from apps.medical.detector_train import (
        DetectorStudy,
        DetectorTrainConfig,
        detect_studies,
        detection_metrics,
        train_detector,
    )

    rng = np.random.default_rng(0)
    config = DetectorTrainConfig.from_name("tiny", steps=BLOB_TRAIN_STEPS, val_every=BLOB_TRAIN_STEPS, patch=[16, 32, 32], batch_size=4)
    studies = []
    for i in range(16):
        vol = rng.normal(40, 10, (16, 32, 32)).astype(np.float32)
        c = rng.integers([4, 6, 6], [12, 26, 26])
        zz, yy, xx = np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij")
        vol[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= 4] = 230
        nodules = [(float(c[0]), float(c[1]), float(c[2]), 8.0, float(i % 2))]
        studies.append(DetectorStudy(f"s{i}", f"LIDC-IDRI-{i + 1:04d}", i % 2, vol.astype(np.uint8), nodules,
                                     heat_targets((4, 8, 8), nodules, config.detector)))
    torch.manual_seed(0)
    detector, info = train_detector(studies, config, log=lambda m: None, split=(0.0, 0))
    metrics = detection_metrics(studies, detect_studies(detector, studies, 1, "cpu"), 1, config.detector.spacing_mm)
    assert metrics["recall_largest"] >= 0.8
    assert info["metrics"]["steps_run"] == BLOB_TRAIN_STEPS


def test_channels_last_detector_finds_the_same_nodules_and_keeps_its_digest():
    """The layout the service and the evaluation run the detector in changes speed, not what it finds, nor which
    detector a single-input bundle recognises it as."""
    import copy

    from apps.medical.detector import (
        NoduleDetector,
        NoduleDetectorConfig,
        channels_last_for_inference,
        detect,
    )
    from apps.medical.model import weights_digest

    torch.manual_seed(0)
    plain = NoduleDetector(NoduleDetectorConfig.from_name("tiny")).eval()
    with torch.no_grad():  # a trained detector's statistics, not the identity of a fresh batch norm
        for m in plain.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    fast = channels_last_for_inference(copy.deepcopy(plain))
    assert fast.channels_last and not getattr(plain, "channels_last", False)
    assert weights_digest(fast.state_dict()) == weights_digest(plain.state_dict())
    hu = np.random.default_rng(3).uniform(-1000, 300, (24, 48, 48)).astype(np.float32)
    spacing = (2.8, 2.1, 2.1)  # resampled on the way in, as most scans are
    a, b = detect(hu, spacing, plain, k=4), detect(hu, spacing, fast, k=4)
    np.testing.assert_allclose(b.centres_vox, a.centres_vox, atol=1e-4)
    np.testing.assert_allclose(b.heat_logit, a.heat_logit, atol=1e-4)
    np.testing.assert_allclose(b.diameter_mm, a.diameter_mm, rtol=1e-4)
    np.testing.assert_allclose(b.malignancy_logit, a.malignancy_logit, atol=1e-4)


def test_loss_is_finite_without_any_nodule():
    out = {k: torch.zeros(2, 4, 4, 4, requires_grad=True) for k in ("heat", "size", "malignancy")}
    target = {"heat": torch.zeros(2, 4, 4, 4), "size": torch.zeros(2, 4, 4, 4), "malignant": torch.zeros(2, 4, 4, 4)}
    losses = detector_loss(out, target)
    assert torch.isfinite(losses["loss"]) and losses["size"] == 0


def test_detector_fusion_model_trains_from_a_pack_and_keeps_its_detector(tmp_path, toy_studies, tiny_bert_dir):
    """detector preset: detector bundle -> candidates -> pack -> fusion bundle holding the same detector."""
    from apps.medical.detector_train import (
        DetectorTrainConfig,
        load_detector_bundle,
        load_detector_studies,
        save_detector_bundle,
        train_detector,
    )
    from apps.medical.model import load_model
    from apps.medical.train import (
        FusionTrainConfig,
        build_training_model,
        load_arrays,
        train_from_pack,
        write_pack,
    )

    config = DetectorTrainConfig.from_name("tiny", steps=3, val_every=3)
    studies = load_detector_studies(toy_studies, config.detector, log=lambda m: None)
    det, info = train_detector(studies, config, log=lambda m: None)
    save_detector_bundle(det, tmp_path / "det", config, info["metrics"], ["LIDC-IDRI-0001"])
    assert torch.equal(load_detector_bundle(tmp_path / "det").stem[0].weight, det.stem[0].weight)
    with pytest.raises(ValueError, match="--detector"):
        build_training_model("tiny_detector", str(tiny_bert_dir))
    model = build_training_model("tiny_detector", str(tiny_bert_dir), tmp_path / "det")
    arrays = load_arrays(toy_studies, model, (1, 800), log=lambda m: None)
    assert arrays["volumes"]["geometry"].shape[1:] == (3, len(DETECTOR_FEATURES))
    assert arrays["volumes"]["cmask"].any()
    write_pack(arrays, model, tmp_path / "pack")
    train_from_pack(tmp_path / "pack", tmp_path / "bundle", FusionTrainConfig.from_name("tiny_detector"), log=lambda m: None)
    loaded, _ = load_model(tmp_path / "bundle", str(tiny_bert_dir))
    assert torch.equal(loaded.detector.stem[0].weight, det.stem[0].weight)
    # the fusion bundle's own detector can be given as --detector (to retrain on the shipped candidates)
    assert torch.equal(load_detector_bundle(tmp_path / "bundle").stem[0].weight, det.stem[0].weight)
    from core.bundle import ModelCard, save_bundle

    save_bundle(tmp_path / "volume_model", {"w": torch.zeros(1)}, {"model": {"ct_kind": "resnet3d"}},
                ModelCard(name="m", version="v", task="t"))
    with pytest.raises(ValueError, match="neither a nodule detector"):
        load_detector_bundle(tmp_path / "volume_model")
    from apps.medical.candidates import load_hu

    hu, spacing = load_hu(next((toy_studies / "volumes").glob("*.nii.gz")))
    a, b = loaded.extract_candidates(hu, spacing), model.extract_candidates(hu, spacing)
    assert np.array_equal(a.centres_vox, b.centres_vox) and np.allclose(a.geometry, b.geometry, atol=1e-5)


def test_detector_model_trains_evaluates_and_serves_with_heat_maps(tmp_path, toy_studies, tiny_bert_dir):
    """--train-detector bundle -> train_fusion (detector preset) -> evaluate_ct -> the service runner draws
    each candidate's occlusion share at its centre, sized by the detector's diameter."""
    from apps.medical.data import load_rendered
    from apps.medical.detector_train import (
        DetectorTrainConfig,
        load_detector_studies,
        save_detector_bundle,
        train_detector,
    )
    from apps.medical.evaluate import evaluate_ct
    from apps.medical.service import CandidateInput, MedicalRunner, StudyInput
    from apps.medical.train import FusionTrainConfig, train_fusion

    config = DetectorTrainConfig.from_name("tiny", steps=3, val_every=3)
    det, info = train_detector(load_detector_studies(toy_studies, config.detector, log=lambda m: None), config, log=lambda m: None)
    save_detector_bundle(det, tmp_path / "det", config, info["metrics"], ["LIDC-IDRI-0001"])
    out = tmp_path / "bundle"
    _, metrics = train_fusion(toy_studies, out, FusionTrainConfig.from_name("tiny_detector"), patients=(1, 800),
                              bert_path=str(tiny_bert_dir), log=lambda m: None, detector=tmp_path / "det")
    assert "val_auc_ct_only" in metrics
    result = evaluate_ct(toy_studies, out, str(tiny_bert_dir))
    assert {"auc", "auc_ct_only", "auc_text_only"} <= set(result)
    runner = MedicalRunner(out, tmp_path / "artefacts", bert_path=str(tiny_bert_dir), threads=1)
    study = load_rendered(toy_studies)[0]
    ct = runner.load_ct(study.volume_path)
    assert isinstance(ct, CandidateInput) and ct.candidates.mask.all()
    diameters = ct.candidates.geometry[:, DETECTOR_FEATURES.index("diameter_mm")]
    assert np.allclose(ct.candidates.radius_mm, np.clip(diameters / 2, 2.0, 20.0))
    answer = runner.predict_batch([StudyInput(ct, study.report), StudyInput(ct, None)])
    for item in answer:
        assert not isinstance(item, Exception), item
        assert 0.0 <= item["probability"] <= 1.0
    assert answer[0]["location"] is not None and answer[0]["heatmaps"]
    findings = answer[0]["findings"]
    assert 1 <= len(findings) <= 3 and findings[0]["influence"] == 1.0
    assert all(0.0 <= f["nodule_probability"] <= 1.0 and 0.0 <= f["malignancy_score"] <= 1.0 for f in findings)
    assert [f["influence"] for f in findings] == sorted((f["influence"] for f in findings), reverse=True)
    from apps.medical.candidates import patient_position

    for f in findings:  # each candidate where a viewer finds it
        assert f["position_mm"] == patient_position(ct.to_lps, f["voxel_zyx"])
    assert answer[0]["location"]["position_mm"] == findings[0]["position_mm"]
    from apps.medical.api import Location

    # the API's schema keeps the candidate's diameter (it dropped it silently before)
    assert Location(**answer[0]["location"]).candidate_diameter_mm == answer[0]["location"]["candidate_diameter_mm"] > 0
    assert answer[0]["heatmap_z_mm"][0] == findings[0]["position_mm"][2]  # the first slice is the peak's
    assert len(answer[0]["heatmap_z_mm"]) == len(answer[0]["heatmaps"])
    from apps.medical.secondary_capture import slice_positions

    placed = slice_positions(runner.artefact_dir / answer[0]["artefact_id"])
    assert [placed[name] for name in answer[0]["heatmaps"]] == answer[0]["heatmap_z_mm"]  # for the Secondary Capture
    assert set(answer[0]["modality_evidence"]) == {"ct", "report"}
    assert answer[1]["modality_evidence"]["report"] == 0.0  # no report, no evidence from it
    from apps.medical.api import AnalyzeResponse

    # the API schema accepts the service's answer, with what the API adds (the id, the inputs it was sent)
    AnalyzeResponse(id="x", secondary_capture=None, inputs={"ct": True, "report": True}, **answer[0])


def test_extra_renders_add_only_training_patients_and_training_continues_from_a_detector(toy_studies):
    """--extra-ct: other renders of validation patients never reach training; --detector with --train-detector:
    training starts from that detector's weights (and refuses another configuration)."""
    import dataclasses

    from apps.medical.data import patient_split
    from apps.medical.detector import NoduleDetector
    from apps.medical.detector_train import DetectorTrainConfig, load_detector_studies, train_detector

    config = DetectorTrainConfig.from_name("tiny", steps=2, val_every=2)
    studies = load_detector_studies(toy_studies, config.detector, log=lambda m: None)
    split = (0.5, 0)
    sides = {patient_split(s.patient_id, *split) for s in studies}
    assert sides == {"train", "val"}, "the toy set should have patients on both sides of this split"
    extra = [dataclasses.replace(s, study_id=s.study_id + "_render1") for s in studies]
    n_train_extra = sum(patient_split(s.patient_id, *split) == "train" for s in extra)
    init = NoduleDetector(config.detector)
    frozen = dataclasses.replace(config, steps=1, lr=0.0)  # one step that moves no weight
    _, info = train_detector(studies, frozen, log=lambda m: None, split=split, extra=extra, init=init)
    assert info["metrics"]["train_studies_extra_renders"] == n_train_extra < len(extra)
    assert info["metrics"]["train_studies"] == n_train_extra + sum(patient_split(s.patient_id, *split) == "train" for s in studies)
    continued, _ = train_detector(studies, frozen, log=lambda m: None, split=split, init=init)
    assert all(torch.equal(a, b) for a, b in zip(continued.parameters(), init.parameters()))
    fresh, _ = train_detector(studies, dataclasses.replace(frozen, seed=1), log=lambda m: None, split=split)
    assert not all(torch.equal(a, b) for a, b in zip(fresh.parameters(), init.parameters()))
    other = NoduleDetector(DetectorTrainConfig.from_name("small").detector)
    with pytest.raises(ValueError, match="another configuration"):
        train_detector(studies, config, log=lambda m: None, init=other)


def tiny_detector_pack(folder: Path, toy_studies, tiny_bert_dir, seed: int = 0) -> dict:
    """A tiny detector trained with ``seed`` (bundle ``folder/det{seed}``) and the pack of its candidates
    (``folder/pack{seed}``); returns the pack's arrays."""
    from apps.medical.detector_train import (
        DetectorTrainConfig,
        load_detector_studies,
        save_detector_bundle,
        train_detector,
    )
    from apps.medical.train import build_training_model, load_arrays, write_pack

    config = DetectorTrainConfig.from_name("tiny", steps=2, val_every=2, seed=seed)
    det, info = train_detector(load_detector_studies(toy_studies, config.detector, log=lambda m: None), config,
                               log=lambda m: None)
    save_detector_bundle(det, folder / f"det{seed}", config, info["metrics"], ["LIDC-IDRI-0001"])
    model = build_training_model("tiny_detector", str(tiny_bert_dir), folder / f"det{seed}")
    arrays = load_arrays(toy_studies, model, (1, 800), log=lambda m: None)
    write_pack(arrays, model, folder / f"pack{seed}")
    return arrays


def test_extra_packs_add_training_studies_and_must_come_from_the_same_model(tmp_path, toy_studies, tiny_bert_dir):
    """--extra-pack: other renders' packs add their training-side studies only; a pack written by another
    detector is refused."""
    import shutil

    from apps.medical.data import patient_split
    from apps.medical.train import FusionTrainConfig, train_from_pack

    arrays = tiny_detector_pack(tmp_path, toy_studies, tiny_bert_dir, seed=0)
    shutil.copytree(tmp_path / "pack0", tmp_path / "pack_render1")  # stands in for another render of the same patients
    tiny_detector_pack(tmp_path, toy_studies, tiny_bert_dir, seed=1)
    fusion = FusionTrainConfig.from_name("tiny_detector")
    alone = train_from_pack(tmp_path / "pack0", tmp_path / "b0", fusion, log=lambda m: None)["seed0"]
    more = train_from_pack(tmp_path / "pack0", tmp_path / "b1", fusion, log=lambda m: None,
                           extra_packs=(tmp_path / "pack_render1",))["seed0"]
    n_train = sum(patient_split(p, fusion.val_fraction, fusion.seed) == "train" for p in arrays["patient_ids"])
    assert 0 < n_train < len(arrays["patient_ids"])
    assert more["train_studies"] == alone["train_studies"] + n_train and more["val_studies"] == alone["val_studies"]
    with pytest.raises(ValueError, match="another model"):
        train_from_pack(tmp_path / "pack0", tmp_path / "b2", fusion, log=lambda m: None, extra_packs=(tmp_path / "pack1",))


def test_lung_volume_counts_air_inside_the_body_only():
    """A chest holds litres of air inside the body; the air around the patient is not lung, and an
    abdomen (body without air) holds none."""
    from apps.medical.detector import NoduleDetectorConfig, lung_volume_ml, prepare_volume

    config = NoduleDetectorConfig()
    spacing = tuple(config.spacing_mm)
    hu = np.full((40, 80, 80), -1000.0, np.float32)  # (z, y, x) outside air
    hu[:, 10:70, 10:70] = 40.0  # the body
    abdomen = hu.copy()
    hu[5:35, 20:60, 15:38] = -850.0  # two lungs
    hu[5:35, 20:60, 42:65] = -850.0
    expected = 2 * 30 * 40 * 23 * np.prod(spacing) / 1000.0
    x, _ = prepare_volume(hu, spacing, config)
    assert lung_volume_ml(x, config) == pytest.approx(expected, rel=0.1)  # read on every second voxel
    assert lung_volume_ml(prepare_volume(abdomen, spacing, config)[0], config) == 0.0


@pytest.mark.parametrize("spacing", [(2.8, 2.0781, 2.0781), (1.25, 0.7, 0.7), (3.0, 2.5, 1.6)])
def test_resampling_to_the_grid_is_linear_with_corners_aligned_as_scipy_zoom(spacing):
    """The detector's grid: torch's trilinear resampling reproduces scipy.ndimage.zoom(order=1, grid_mode=False),
    the function the detector was trained with, voxel for voxel; the factor maps grid indices back."""
    from scipy import ndimage

    from apps.medical.detector import NoduleDetectorConfig, prepare_volume

    config = NoduleDetectorConfig()
    hu = np.random.default_rng(0).uniform(-1100, 500, (23, 37, 41)).astype(np.float32)
    x, factor = prepare_volume(hu, spacing, config)
    windowed = np.clip((hu - config.hu_min) / (config.hu_max - config.hu_min), 0.0, 1.0)
    expected = ndimage.zoom(windowed, np.asarray(spacing) / np.asarray(config.spacing_mm), order=1, mode="nearest",
                            grid_mode=False)
    assert x.shape == expected.shape and x.dtype == np.float32
    np.testing.assert_allclose(x, expected, atol=3e-5)
    np.testing.assert_allclose(factor, (np.asarray(hu.shape) - 1) / (np.asarray(x.shape) - 1))
    same, ones = prepare_volume(hu, config.spacing_mm, config)  # on the grid already: untouched
    assert np.array_equal(same, windowed) and np.array_equal(ones, np.ones(3))


def test_a_scan_without_lungs_is_refused_as_such(tmp_path, monkeypatch):
    """A candidate model's CT input with less lung than min_lung_ml is a 422 naming the reason, not a
    probability (nor "could not read the CT")."""
    from apps.medical import service
    from apps.medical.candidates import Candidates
    from apps.medical.service import CandidateInput, CTInputError, MedicalRunner, volume_from_upload

    runner = MedicalRunner.__new__(MedicalRunner)
    runner.candidate_config, runner.volume_shape, runner.min_lung_ml = object(), [8, 8, 8], 200.0
    runner.model = type("M", (), {"extract_candidates": None})()
    empty = Candidates(np.zeros((1, 4, 4, 4), np.float32), np.zeros((1, 7), np.float32), np.zeros(1, bool),
                       -np.ones((1, 3), np.int64), 12.0)
    monkeypatch.setattr(service, "load_ct_input", lambda *a: CandidateInput(empty, np.zeros((8, 8, 8), np.float32)))
    with pytest.raises(CTInputError, match="no lungs in view: 12 ml") as refused:
        runner.load_ct(tmp_path / "ct.nii.gz")
    assert refused.value.code == "no_lungs" and refused.value.status_code == 422
    monkeypatch.setattr(service, "_ingest_module", lambda: None)  # the bytes go straight to the reader
    with pytest.raises(CTInputError, match="no lungs in view"):
        volume_from_upload(b"\x1f\x8b not read here", "nifti", runner.load_ct)
    empty.lung_ml = 3000.0
    assert isinstance(runner.load_ct(tmp_path / "ct.nii.gz"), CandidateInput)


def test_single_input_models_answer_studies_with_one_input_and_share_the_detector(tmp_path, toy_studies, tiny_bert_dir):
    """--modalities ct / report --share-detector: bundles without a detector copy, loaded beside the fusion model;
    the runner answers a study with one input by that input's model and says so."""
    import json

    from apps.medical.data import load_rendered
    from apps.medical.evaluate import evaluate_ct
    from apps.medical.model import load_model
    from apps.medical.service import MedicalRunner, StudyInput
    from apps.medical.train import FusionTrainConfig, train_from_pack

    tiny_detector_pack(tmp_path, toy_studies, tiny_bert_dir, seed=0)
    for name, modalities in (("fusion", "both"), ("ct_only", "ct"), ("report_only", "report")):
        train_from_pack(tmp_path / "pack0", tmp_path / name, FusionTrainConfig.from_name(
            "tiny_detector", modalities=modalities, share_detector=modalities != "both"), log=lambda m: None)
    from safetensors.torch import load_file

    assert not any(k.startswith("detector.") for k in load_file(tmp_path / "ct_only" / "model.safetensors"))
    assert any(k.startswith("detector.") for k in load_file(tmp_path / "fusion" / "model.safetensors"))
    with pytest.raises(ValueError, match="without its nodule detector"):
        load_model(tmp_path / "ct_only", str(tiny_bert_dir))

    runner = MedicalRunner(tmp_path / "fusion", tmp_path / "artefacts", bert_path=str(tiny_bert_dir), threads=1,
                           ct_only_dir=tmp_path / "ct_only", report_only_dir=tmp_path / "report_only")
    versions = {n: json.loads((tmp_path / n / "card.json").read_text())["version"] for n in ("fusion", "ct_only", "report_only")}
    study = load_rendered(toy_studies)[0]
    ct = runner.load_ct(study.volume_path)
    history = "70-year-old woman, former smoker, 40 pack-years. A pulmonary nodule is noted."  # read alone: a whole one
    both, ct_alone, report_alone = runner.predict_batch([StudyInput(ct, study.report), StudyInput(ct, None),
                                                          StudyInput(None, history)])
    assert [r["answered_by"] for r in (both, ct_alone, report_alone)] == ["fusion", "ct_only", "report_only"]
    assert ct_alone["model_version"] == versions["ct_only"] and ct_alone["heatmaps"] and ct_alone["findings"]
    # the dedicated model's own answer, not the fusion model's with the report absent
    dedicated, _ = load_model(tmp_path / "ct_only", str(tiny_bert_dir), detector_from=runner.model)
    batch = {"crops": torch.from_numpy(ct.candidates.crops)[None, :, None],
             "geometry": torch.from_numpy(ct.candidates.geometry)[None], "mask": torch.from_numpy(ct.candidates.mask)[None]}
    with torch.no_grad():
        expected = float(dedicated.calibrated(dedicated(batch, None)[0])[0])
    assert ct_alone["probability"] == pytest.approx(expected, abs=1e-4)
    assert runner.models["report_only"].model.report_encoder.bert is runner.model.report_encoder.bert  # one copy
    assert "ct_only=" in runner.version and "report_only=" in runner.sha256

    plain = MedicalRunner(tmp_path / "fusion", tmp_path / "artefacts", bert_path=str(tiny_bert_dir), threads=1)
    assert plain.predict_batch([StudyInput(ct, None)])[0]["answered_by"] == "fusion"
    assert plain.version == versions["fusion"]
    with pytest.raises(ValueError, match="not a ct-only model"):
        MedicalRunner(tmp_path / "fusion", tmp_path / "artefacts", bert_path=str(tiny_bert_dir), threads=1,
                      ct_only_dir=tmp_path / "report_only")
    # a detector trained again: the single-input model was trained on the other one's candidates
    tiny_detector_pack(tmp_path, toy_studies, tiny_bert_dir, seed=1)
    train_from_pack(tmp_path / "pack1", tmp_path / "fusion2", FusionTrainConfig.from_name("tiny_detector"), log=lambda m: None)
    with pytest.raises(ValueError, match="another nodule detector"):
        MedicalRunner(tmp_path / "fusion2", tmp_path / "artefacts", bert_path=str(tiny_bert_dir), threads=1,
                      ct_only_dir=tmp_path / "ct_only")

    routed = evaluate_ct(toy_studies, tmp_path / "fusion", str(tiny_bert_dir), ct_only_dir=tmp_path / "ct_only",
                         report_only_dir=tmp_path / "report_only")
    alone = evaluate_ct(toy_studies, tmp_path / "fusion", str(tiny_bert_dir))
    assert routed["auc"] == alone["auc"]
    assert routed["auc_ct_only_fusion"] == alone["auc_ct_only"] and routed["auc_text_only_fusion"] == alone["auc_text_only"]
    assert "auc_ct_only_fusion" not in alone
    assert routed["ece_text_only_fusion"] == alone["ece_text_only"] and 0 <= routed["ece_text_only"] <= 1
