"""The classical nodule-candidate stage on tiny generated chest volumes, and the candidate model
path (training, evaluation and serving share ``candidates.extract``)."""

from __future__ import annotations

import numpy as np
import pytest


def _chest(seed: int = 0, shape=(40, 64, 64)) -> np.ndarray:
    """Body (soft tissue) with two lungs (-850 HU), a few thin vessels, scanner noise. Spacing 2.5/2/2 mm."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    zz, yy, xx = np.mgrid[:d, :h, :w].astype(np.float32)
    hu = np.full(shape, -1000.0, np.float32)
    body = ((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w / 2) / (0.47 * w)) ** 2 <= 1
    hu[body] = 40.0
    for cx in (0.3 * w, 0.7 * w):
        lung = (((yy - h / 2) / (0.32 * h)) ** 2 + ((xx - cx) / (0.14 * w)) ** 2 <= 1) & (zz > 2) & (zz < d - 3)
        hu[lung] = -850.0
        for _k in range(3):  # thin vessels along z: radius 1 voxel (2 mm)
            vy, vx = h / 2 + rng.uniform(-8, 8), cx + rng.uniform(-3, 3)
            hu[lung & ((yy - vy) ** 2 + (xx - vx) ** 2 <= 1.0)] = 30.0
    return hu + rng.normal(0, 15, shape).astype(np.float32)


def _plant(hu: np.ndarray, centre, radius_mm: float, spacing, value: float = 20.0) -> np.ndarray:
    zz, yy, xx = np.mgrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]].astype(np.float32)
    r = np.sqrt(((zz - centre[0]) * spacing[0]) ** 2 + ((yy - centre[1]) * spacing[1]) ** 2 + ((xx - centre[2]) * spacing[2]) ** 2)
    out = hu.copy()
    out[r <= radius_mm] = value
    return out


SPACING = (2.5, 2.0, 2.0)


@pytest.mark.parametrize("radius_mm,value", [(5.0, 20.0), (3.0, 20.0), (6.0, -600.0)])  # solid 10 mm, solid 6 mm, ground glass
def test_planted_sphere_is_found_with_its_size(radius_mm, value):
    from apps.medical.candidates import GEOMETRY_FEATURES, CandidateConfig, extract

    centre = (20, 30, 22)  # inside the right-hand lung of the phantom
    hu = _plant(_chest(1), centre, radius_mm, SPACING, value)
    c = extract(hu, SPACING, CandidateConfig(k=4, crop=16))
    assert c.mask.any()
    dist = np.linalg.norm((c.centres_vox - np.array(centre)) * np.array(SPACING), axis=1)
    dist[~c.mask] = np.inf
    i = int(np.argmin(dist))
    assert dist[i] <= 3.0, f"nearest candidate {dist[i]:.1f} mm away"
    r = c.geometry[i, GEOMETRY_FEATURES.index("radius_mm")]  # distance-transform radius: vessels do not inflate it
    assert 0.6 * radius_mm <= r <= 1.4 * radius_mm
    assert c.geometry[i, GEOMETRY_FEATURES.index("eq_diameter_mm")] >= 0.6 * 2 * radius_mm
    assert c.crops.shape == (4, 16, 16, 16) and 0.0 <= c.crops.min() and c.crops.max() <= 1.0
    # the crop is centred on the sphere: its centre is bright, its corner lung-dark
    assert c.crops[i, 8, 8, 8] > c.crops[i, 0, 0, 0] + 0.1  # ground glass is 250 HU above lung: +0.18


def test_vessels_respond_weaker_than_a_nodule_and_proposals_are_deterministic():
    from apps.medical.candidates import FEATURES, CandidateConfig, extract, propose

    hu = _chest(2)
    a = propose(hu, SPACING)
    b = propose(hu.copy(), SPACING)
    assert np.array_equal(a.centres_vox, b.centres_vox) and np.array_equal(a.features, b.features)
    assert a.features.shape[1] == len(FEATURES) and np.isfinite(a.features).all()
    # the dot filter separates a round 8 mm nodule from the phantom's tubes (vessels along z)
    centre = (20, 30, 22)
    p = propose(_plant(hu, centre, 4.0, SPACING), SPACING)
    dist = np.linalg.norm((p.centres_vox - np.array(centre)) * np.array(SPACING), axis=1)
    assert dist.min() <= 3.0
    dot = FEATURES.index("log_dot")
    assert p.features[dist <= 3.0, dot].max() > a.features[:, dot].max()
    empty = extract(np.full((12, 20, 20), -1000.0, np.float32), SPACING, CandidateConfig(k=4, crop=16))
    assert not empty.mask.any() and (empty.centres_vox == -1).all()


def test_ranker_decides_which_proposals_become_candidates():
    from apps.medical.candidates import GEOMETRY_FEATURES, CandidateConfig, extract, propose

    hu = _plant(_chest(3), (20, 30, 22), 4.0, SPACING)
    proposals = propose(hu, SPACING)
    assert len(proposals.features) > 2
    favourite = len(proposals.features) - 1  # a ranker that prefers the last proposal above all

    def ranker(features):
        scores = -np.arange(len(features), dtype=np.float32)
        scores[favourite] = 100.0
        return scores

    c = extract(hu, SPACING, CandidateConfig(k=2, crop=16), ranker=ranker, proposals=proposals)
    assert np.array_equal(c.centres_vox[0], proposals.centres_vox[favourite])
    assert np.array_equal(c.centres_vox[1], proposals.centres_vox[0])
    assert c.geometry[0, GEOMETRY_FEATURES.index("ranker_logit")] == 100.0


def test_candidate_encoder_and_model_handle_absent_candidates(tiny_bert_dir):
    import torch

    from apps.medical.model import MedicalModelConfig, build_model

    config = MedicalModelConfig.from_name("tiny_candidates")
    model = build_model(config, bert_path=str(tiny_bert_dir)).eval()
    k, s = config.candidate_stage["k"], config.candidate_stage["crop"]
    ct = {"crops": torch.rand(2, k, 1, s, s, s), "geometry": torch.rand(2, k, config.candidate_encoder.geometry_features),
          "mask": torch.tensor([[True] * k, [False] * k])}
    report = model.report_encoder.tokenize(["Former smoker.", "Never smoker."])
    with torch.no_grad():
        logits, weights = model(ct, report)
    assert logits.shape == (2,) and torch.isfinite(logits).all() and torch.isfinite(weights).all()


@pytest.mark.slow
def test_candidate_model_trains_evaluates_and_serves(tmp_path, toy_studies, tiny_bert_dir):
    """Same extract() in training (cached), evaluation and the service runner."""
    from apps.medical.data import load_rendered
    from apps.medical.evaluate import evaluate_ct
    from apps.medical.service import CandidateInput, MedicalRunner, StudyInput
    from apps.medical.train import FusionTrainConfig, train_fusion

    out = tmp_path / "bundle"
    _, metrics = train_fusion(toy_studies, out, FusionTrainConfig.from_name("tiny_candidates"), patients=(1, 800),
                              bert_path=str(tiny_bert_dir), cache=tmp_path / "cache", log=lambda m: None)
    assert "val_auc_ct_only" in metrics
    assert list((tmp_path / "cache").glob("proposals_*/*.npz"))
    assert 0.0 <= metrics["train_ranker_recall_all"] <= 1.0
    result = evaluate_ct(toy_studies, out, str(tiny_bert_dir), cache=tmp_path / "cache")
    assert {"auc", "auc_ct_only", "auc_text_only", "accuracy", "ece"} <= set(result)
    runner = MedicalRunner(out, tmp_path / "artefacts", bert_path=str(tiny_bert_dir), threads=1)
    study = load_rendered(toy_studies)[0]
    ct = runner.load_ct(study.volume_path)
    assert isinstance(ct, CandidateInput)
    answer = runner.predict_batch([StudyInput(ct, study.report), StudyInput(ct, None)])
    for item in answer:
        assert not isinstance(item, Exception), item
        assert 0.0 <= item["probability"] <= 1.0
    if ct.candidates.mask.any():
        assert answer[0]["location"] is not None and answer[0]["heatmaps"]


def test_closed_form_eigenvalues_match_lapack():
    from apps.medical.candidates import symmetric_eigvals3

    rng = np.random.default_rng(0)
    n = 5000
    keys = [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]
    h = {k: (rng.normal(size=n) * 300).astype(np.float32) for k in keys}
    for k in ((0, 1), (0, 2), (1, 2)):  # diagonal and scalar matrices: the degenerate cases of the cubic
        h[k][:20] = 0.0
    for k in ((0, 0), (1, 1), (2, 2)):
        h[k][:10] = -42.0
    m = np.empty((n, 3, 3))
    for (a, b), v in h.items():
        m[:, a, b] = m[:, b, a] = v
    np.testing.assert_allclose(symmetric_eigvals3(h), np.linalg.eigvalsh(m), atol=1e-2, rtol=1e-5)


def test_proposal_cache_tells_renders_of_one_study_apart(tmp_path, toy_studies):
    """Another render of the same study (same study id, another volume file) gets its own cached proposals."""
    import shutil

    from apps.medical.candidates import CandidateConfig
    from apps.medical.data import load_rendered
    from apps.medical.model import MedicalModelConfig
    from apps.medical.train import prepare_proposals

    stage = CandidateConfig(**MedicalModelConfig.from_name("tiny_candidates").candidate_stage)
    study = load_rendered(toy_studies)[0]
    other = tmp_path / "render1" / study.volume_path.name
    other.parent.mkdir()
    shutil.copy(study.volume_path, other)
    prepare_proposals([study.volume_path, other], [study.study_id] * 2, stage, tmp_path / "cache", log=lambda m: None)
    assert len(list((tmp_path / "cache").glob(f"proposals_*/{study.study_id}_*.npz"))) == 2


@pytest.mark.parametrize("layout", ["dicom", "nifti"])
def test_positions_are_the_patient_coordinates_a_viewer_shows(tmp_path, layout):
    """A voxel found in the model's layout maps back to its DICOM patient coordinates (LPS mm), from a
    DICOM series and from a NIfTI of the same scan: what a radiologist types into a PACS viewer."""
    from apps.medical.candidates import load_hu_placed, patient_position
    from apps.medical.render.writers import write_dicom_series, write_nifti

    volume = np.full((12, 32, 32), 40, np.int16)  # (slice, row, column)
    volume[6, 10, 5] = 900
    spacing, origin = (2.5, 1.5, 1.25), (-24.0, -30.0, -100.0)  # (dz, dy, dx); LPS origin (x, y, z)
    if layout == "dicom":
        path = write_dicom_series(tmp_path / "ct", volume, spacing, origin, patient_id="P1", study_key="k")
    else:
        path = write_nifti(tmp_path / "ct.nii.gz", volume, spacing, origin)
    hu, _, to_lps = load_hu_placed(path)
    peak = np.unravel_index(int(hu.argmax()), hu.shape)
    assert patient_position(to_lps, peak) == pytest.approx([-24.0 + 5 * 1.25, -30.0 + 10 * 1.5, -100.0 + 6 * 2.5], abs=0.051)  # rounded to 0.1 mm
