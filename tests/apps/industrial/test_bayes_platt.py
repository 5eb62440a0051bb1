"""The Bayesian rule's image side comes from the detector bundle's own Platt scaling; a fusion bundle fitted on
another detector loses its learned model but, with that Platt, not the Bayesian rule."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

PLATT = {"a": 4.5, "b": -6.0, "fitted_on": "held-out test groups"}


def _bundles(tiny_bundles, tmp_path, platt: dict | None, fitted_on: str | None):
    """Copies of the tiny detector and fusion bundles: the detector with or without a `platt`, the fusion bundle
    recording `fitted_on` as its detector (None = the copied detector's own sha256). Only config.json changes, so
    the weights still verify."""
    det, fus = tmp_path / "detector", tmp_path / "fusion"
    shutil.copytree(tiny_bundles / "detector", det)
    shutil.copytree(tiny_bundles / "fusion", fus)
    cfg = json.loads((det / "config.json").read_text())
    cfg.pop("platt", None)
    if platt:
        cfg["platt"] = platt
    (det / "config.json").write_text(json.dumps(cfg))
    sha = json.loads((det / "card.json").read_text())["sha256"]
    fcfg = json.loads((fus / "config.json").read_text())
    fcfg["detector_sha256"] = sha if fitted_on is None else fitted_on
    (fus / "config.json").write_text(json.dumps(fcfg))
    return det, fus


def _runner(tiny_bundles, tmp_path, platt, fitted_on, rule="bayes"):
    from apps.industrial.service import load_runner
    from apps.industrial.settings import IndustrialSettings

    det, fus = _bundles(tiny_bundles, tmp_path, platt, fitted_on)
    settings = IndustrialSettings(detector_dir=det, vibration_dir=tiny_bundles / "vibration", fusion_dir=fus, template_detector_dir=None,
                                  database_url=f"sqlite:///{tmp_path}/t.db", artefact_dir=tmp_path / "art", torch_threads=1,
                                  detector_backend="torch", detector_precision="fp32", decision_rule=rule)
    return load_runner(settings)


def _logit(p):
    return float(np.log(p / (1 - p)))


def _item(defect=True):
    from apps.industrial.service import InspectionItem, decode_image, vibration_windows
    from tests.apps.industrial.conftest import board_png, vibration_signal

    return InspectionItem(decode_image(board_png(defect=defect)), windows=vibration_windows(vibration_signal(seconds=0.4), 12_000))


def test_image_side_uses_the_detectors_own_platt(tiny_bundles, tmp_path):
    runner = _runner(tiny_bundles, tmp_path, PLATT, None)
    fusion_bayes = json.loads((tiny_bundles / "fusion" / "config.json").read_text())["bayes"]
    prior = fusion_bayes["train_prior"]
    assert runner.decision_rule == "bayes" and runner.fusion is not None
    # balanced fit: the intercept moves by the train prior's logit, so image_llr = a * logit(conf) + b
    assert runner.bayes.platt_a == pytest.approx(PLATT["a"])
    assert runner.bayes.platt_b == pytest.approx(PLATT["b"] + _logit(prior))
    assert runner.bayes.defect_rate_by_state == pytest.approx(fusion_bayes["defect_rate_by_state"])
    conf = np.array([0.3, 0.9])
    assert runner.bayes.image_llr(conf) == pytest.approx(PLATT["a"] * np.log(conf / (1 - conf)) + PLATT["b"])
    # and the board's probability is computed with it: logit P(d | vibration) + a * logit(max conf) + b
    out = runner.predict_batch([_item()])[0]
    conf = max([d["confidence"] for d in out["defects"]] + [1e-4])
    probs = np.array([out["machine_state"]["probabilities"][c] for c in ("normal", "ball", "inner_race", "outer_race")])
    p_vib = float(probs @ np.array(fusion_bayes["defect_rate_by_state"]))
    z = _logit(p_vib) + PLATT["a"] * _logit(min(max(conf, 1e-4), 1 - 1e-4)) + PLATT["b"]
    assert out["defect_probability"] == pytest.approx(1 / (1 + np.exp(-z)), abs=2e-3)


def test_without_platt_the_fusion_calibration_is_kept(tiny_bundles, tmp_path):
    runner = _runner(tiny_bundles, tmp_path, None, None)
    fusion_bayes = json.loads((tiny_bundles / "fusion" / "config.json").read_text())["bayes"]
    assert runner.decision_rule == "bayes"
    assert (runner.bayes.platt_a, runner.bayes.platt_b) == (fusion_bayes["platt_a"], fusion_bayes["platt_b"])


def test_detector_mismatch_keeps_bayes_with_platt_and_drops_learned(tiny_bundles, tmp_path, caplog):
    other = "f" * 64
    runner = _runner(tiny_bundles, tmp_path / "a", PLATT, other)
    assert runner.decision_rule == "bayes" and runner.fusion is None
    assert runner.bayes.platt_a == pytest.approx(PLATT["a"])
    out = runner.predict_batch([_item()])[0]
    assert out["defect_probability"] is not None and out["decision"] in ("pass", "fail", "review")
    # the learned model read the other detector's tokens: off, and the rule falls back to the image rule
    learned = _runner(tiny_bundles, tmp_path / "b", PLATT, other, rule="learned")
    assert learned.fusion is None and learned.decision_rule == "image"


def test_detector_mismatch_without_platt_decides_with_the_image_rule(tiny_bundles, tmp_path):
    runner = _runner(tiny_bundles, tmp_path, None, "f" * 64)
    assert runner.decision_rule == "image" and runner.bayes is None and runner.fusion is None
    out = runner.predict_batch([_item()])[0]
    assert out["decision"] in ("pass", "fail") and out["modality_weights"]["vibration"] == 0.0


def test_vibration_classifier_mismatch_decides_with_the_image_rule(tiny_bundles, tmp_path):
    from apps.industrial.service import load_runner
    from apps.industrial.settings import IndustrialSettings

    det, fus = _bundles(tiny_bundles, tmp_path, PLATT, None)
    fcfg = json.loads((fus / "config.json").read_text())
    vib_sha = json.loads((tiny_bundles / "vibration" / "card.json").read_text())["sha256"]

    def runner(fitted_on):
        fcfg["vibration_sha256"] = fitted_on
        (fus / "config.json").write_text(json.dumps(fcfg))
        return load_runner(IndustrialSettings(
            detector_dir=det, vibration_dir=tiny_bundles / "vibration", fusion_dir=fus, template_detector_dir=None,
            database_url=f"sqlite:///{tmp_path}/t.db", artefact_dir=tmp_path / "art", torch_threads=1,
            detector_backend="torch", detector_precision="fp32"))

    assert runner(vib_sha).decision_rule == "bayes"
    other = runner("e" * 64)
    assert other.decision_rule == "image" and other.bayes is None and other.fusion is None


def test_bayes_decision_cuts_where_the_image_threshold_cuts():
    """With a machine state that tells nothing, the Bayesian rule fails, passes and reviews boards around the image
    threshold (not around probability 0.5); a fault state can fail a board the image alone would only review."""
    from apps.industrial.benchmark import BayesianCombiner
    from apps.industrial.detector import Detection, DetectorConfig
    from apps.industrial.service import DecisionPolicy, InspectionItem, InspectionRunner

    runner = InspectionRunner.__new__(InspectionRunner)
    runner.det_config, runner.fusion, runner.decision_rule = DetectorConfig(), None, "bayes"
    runner.template_detector = runner.template_config = runner.bayes_template = None
    runner.policy = DecisionPolicy(0.6, report_threshold=0.25, review_band=0.15)
    image = np.zeros((64, 64), np.uint8)
    normal, inner_race = np.array([1.0, 0, 0, 0]), np.array([0, 0, 1.0, 0])

    def decide(conf, state, rates):
        runner.bayes = BayesianCombiner(4.8, -4.2, train_prior=0.2, defect_rate_by_state=rates)
        box = Detection(0, conf, (10.0, 10.0, 20.0, 20.0))
        return runner._decide(InspectionItem(image), [box], None, state, None, 1.0, 1.0)

    flat = [0.2] * 4
    # P(defective | 0.6) is only ~0.1 at this calibration: a cut at 0.5 would pass the image rule's own threshold
    assert decide(0.6, normal, flat)["defect_probability"] < 0.2
    assert [decide(c, s, flat)["decision"] for c in (0.3, 0.6, 0.7, 0.9) for s in (normal, inner_race)] == \
        ["pass", "pass", "review", "review", "fail", "fail", "fail", "fail"]
    coupled = [0.2, 0.6, 0.9, 0.75]
    assert decide(0.6, normal, coupled)["decision"] == "review" and decide(0.6, inner_race, coupled)["decision"] == "fail"
    assert decide(0.5, normal, coupled)["decision"] == "pass" and decide(0.5, inner_race, coupled)["decision"] == "fail"
    assert decide(0.3, inner_race, coupled)["decision"] == "pass"  # a clean-looking board outweighs the fault


def test_loading_runs_every_path_once_so_the_first_board_pays_no_one_off_costs(tiny_bundles, tmp_path, monkeypatch):
    from apps.industrial.reclassify import DefectReclassifier
    from apps.industrial.service import InspectionRunner, load_runner
    from apps.industrial.settings import IndustrialSettings

    seen, warmed = [], []
    predict = InspectionRunner.predict_batch
    monkeypatch.setattr(InspectionRunner, "predict_batch", lambda self, items: seen.extend(items) or predict(self, items))
    monkeypatch.setattr(DefectReclassifier, "warm_up", lambda self: warmed.append(self))
    load_runner(IndustrialSettings(
        detector_dir=tiny_bundles / "detector", template_detector_dir=tiny_bundles / "detector_template",
        defect_classifier_dir=tiny_bundles / "defect_classifier", vibration_dir=tiny_bundles / "vibration",
        fusion_dir=tiny_bundles / "fusion", database_url=f"sqlite:///{tmp_path}/t.db", artefact_dir=tmp_path / "art",
        torch_threads=1, detector_backend="torch", detector_precision="fp32"))
    assert any(item.image is not None and item.template is None for item in seen)  # the image-only detector
    assert any(item.template is not None and item.windows is not None for item in seen)  # template detector, vibration
    assert len(warmed) == 1  # the crop classifier, which a blank board gives no box to


def _events(rates, n=2000, seed=0):
    rng = np.random.default_rng(seed)
    state = rng.choice(4, n, p=[0.7, 0.1, 0.1, 0.1])
    return (rng.random(n) < np.asarray(rates)[state]).astype(int), state


def test_a_machine_state_that_predicts_nothing_moves_no_board():
    from apps.industrial.benchmark import defect_rates_by_state

    for seed in range(5):  # the per-state shares differ by noise alone: every state gets the pooled share
        label, state = _events([0.2] * 4, seed=seed)
        assert defect_rates_by_state(label, state, 4) == [pytest.approx(label.mean())] * 4
    assert defect_rates_by_state(np.ones(50), np.arange(50) % 4, 4) == [1.0] * 4
    assert defect_rates_by_state(np.array([0, 1, 1]), np.zeros(3, int), 4) == [pytest.approx(2 / 3)] * 4


def test_a_predictive_machine_state_keeps_its_shares_shrunk_toward_the_pool():
    from apps.industrial.benchmark import defect_rates_by_state

    label, state = _events([0.2, 0.6, 0.9, 0.75])
    rates = np.array(defect_rates_by_state(label, state, 4))
    raw = np.array([label[state == k].mean() for k in range(4)])
    pooled = label.mean()
    assert np.argsort(rates).tolist() == [0, 1, 3, 2]
    np.testing.assert_allclose(rates, raw, atol=0.02)  # hundreds of events per state: little to borrow
    assert np.all(np.abs(rates - pooled) <= np.abs(raw - pooled) + 1e-12)
    # a state predicted only five times is pulled toward the pool (Laplace's rule pulled it toward 0.5)
    few = state.copy()
    few[np.flatnonzero(state == 3)[5:]] = 2
    few_raw = label[few == 3].mean()
    assert abs(defect_rates_by_state(label, few, 4)[3] - pooled) < abs(few_raw - pooled)
