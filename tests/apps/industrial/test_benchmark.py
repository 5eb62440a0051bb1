"""The paired benchmark's generative assumption and its decision rules, on synthetic upstream outputs."""

from __future__ import annotations

import numpy as np
import pytest

from apps.industrial.benchmark import BayesianCombiner, PairingConfig, run_benchmark, sample_events


def fake_upstream(tmp_path, image_noise: float = 0.3, seed: int = 0):
    rng = np.random.default_rng(seed)
    n_img = 80
    defective = np.tile([1, 0], n_img // 2)
    groups = np.where(np.arange(n_img) < n_img // 2, "group13000", "group50600")
    # image evidence: a noisy but informative max confidence
    score = np.clip(0.5 + (defective - 0.5) * 0.8 + image_noise * rng.standard_normal(n_img), 0.01, 0.99)
    images = {
        "max_conf": score, "n_defects": (score > 0.5).astype(int), "tokens": rng.standard_normal((n_img, 16, 8)).astype(np.float16),
        "defective": defective, "group": groups, "dominant": np.where(defective == 1, rng.integers(0, 6, n_img), -1), "threshold": 0.5,
    }
    n_vib = 200
    state = np.repeat(np.arange(4), n_vib // 4)
    probs = np.full((n_vib, 4), 0.02)
    probs[np.arange(n_vib), state] = 0.94  # a confident, correct vibration classifier
    vib = {"probs": probs, "tokens": rng.standard_normal((n_vib, 64, 16)).astype(np.float16), "state": state,
           "half": np.tile(np.repeat([0, 1], n_vib // 8), 4)}
    np.savez(tmp_path / "img.npz", **images)
    np.savez(tmp_path / "vib.npz", **vib)
    return images, vib


def test_coupling_zero_makes_boards_independent_of_the_machine(tmp_path):
    images, vib = fake_upstream(tmp_path)
    cfg = PairingConfig()
    for coupling, expect in ((0.0, [0.2, 0.2, 0.2, 0.2]), (1.0, [0.2, 0.6, 0.9, 0.75])):
        ev = sample_events(images, vib, cfg, coupling, 0, 8000, np.random.default_rng(1))
        rates = [ev["label"][ev["state"] == k].mean() for k in range(4)]
        assert np.allclose(rates, expect, atol=0.05)
        # the vibration window always comes from the sampled state, images from the right side's groups
        assert (vib["state"][ev["window"]] == ev["state"]).all() and (vib["half"][ev["window"]] == 0).all()
        assert (images["group"][ev["image"]] == "group13000").all()
        assert (images["defective"][ev["image"]] == ev["label"]).all()


def test_bayes_uses_vibration_only_when_it_informs(tmp_path):
    images, vib = fake_upstream(tmp_path)
    cfg = PairingConfig()
    rng = np.random.default_rng(2)
    flat = BayesianCombiner.fit(images, vib, sample_events(images, vib, cfg, 0.0, 0, 6000, rng))
    assert np.ptp(flat.defect_rate_by_state) < 0.08  # coupling 0: P(d | state) flat
    coupled = BayesianCombiner.fit(images, vib, sample_events(images, vib, cfg, 1.0, 0, 6000, rng))
    assert coupled.defect_rate_by_state[2] > 0.8 and coupled.defect_rate_by_state[0] < 0.3
    assert coupled.platt_a > 0  # higher detector confidence -> more likely defective


@pytest.mark.slow
def test_run_benchmark_reports_every_method(tmp_path):
    fake_upstream(tmp_path, image_noise=0.6)  # a weak image: the machine state has room to help
    cfg = PairingConfig(couplings=(0.0, 1.0), train_events=1000, test_events=2000, epochs=1)
    metrics, models = run_benchmark(tmp_path / "img.npz", tmp_path / "vib.npz", cfg, log=lambda *_: None)
    for c in ("c0", "c1"):
        for method in ("image_only", "vibration_only", "bayes", "learned"):
            for key in ("false_alarm_rate", "miss_rate", "error_rate"):
                assert 0.0 <= metrics[f"{c}/{method}/{key}"] <= 1.0
    # at full coupling the machine state predicts the board; the Bayesian combination must beat the image alone
    assert metrics["c1/bayes/error_rate"] < metrics["c1/image_only/error_rate"] - 0.02
    assert metrics["c1/vibration_only/error_rate"] < 0.35
    # no coupling: the machine state tells nothing and the fused decision stays the image's (up to counting noise)
    assert abs(metrics["c0/bayes/error_rate"] - metrics["c0/image_only/error_rate"]) < 0.03
    assert set(models) == {0.0, 1.0}


def test_bayes_takes_the_detectors_own_platt(tmp_path):
    """With the detector bundle's Platt (balanced fit) the benchmark's Bayes rule is the service's: a, b + logit(prior)."""
    images, vib = fake_upstream(tmp_path)
    ev = sample_events(images, vib, PairingConfig(), 0.5, 0, 3000, np.random.default_rng(3))
    platt = {"a": 3.0, "b": -2.5}
    own = BayesianCombiner.fit(images, vib, ev, platt)
    fitted = BayesianCombiner.fit(images, vib, ev)
    prior = ev["label"].mean()
    assert own.platt_a == 3.0 and own.platt_b == pytest.approx(-2.5 + np.log(prior / (1 - prior)))
    assert own.defect_rate_by_state == fitted.defect_rate_by_state and own.train_prior == fitted.train_prior
    conf = np.array([0.2, 0.7])
    assert own.image_llr(conf) == pytest.approx(3.0 * np.log(conf / (1 - conf)) - 2.5)
    # run_benchmark: an explicit Platt, or the one cached with the image features, decides the Bayes columns.
    # Its slope weighs the image against the machine state; a flat one leaves the decision to the vibration.
    cfg = PairingConfig(couplings=(1.0,), train_events=500, test_events=500)
    flat = {"a": 1e-3, "b": 0.0}
    explicit, _ = run_benchmark(tmp_path / "img.npz", tmp_path / "vib.npz", cfg, log=lambda *_: None, learned=False, platt=flat)
    np.savez(tmp_path / "img_platt.npz", **images, platt_a=1e-3, platt_b=0.0)
    cached, _ = run_benchmark(tmp_path / "img_platt.npz", tmp_path / "vib.npz", cfg, log=lambda *_: None, learned=False)
    plain, _ = run_benchmark(tmp_path / "img.npz", tmp_path / "vib.npz", cfg, log=lambda *_: None, learned=False)
    for run in (explicit, cached):
        assert run["c1/bayes/error_rate"] == run["c1/vibration_only/error_rate"]
    assert plain["c1/bayes/error_rate"] < plain["c1/vibration_only/error_rate"]


def test_bayes_decides_at_the_image_rules_operating_point():
    """The posterior is cut where the image threshold cuts: with a machine state that tells nothing the fused
    decision IS the image decision (at any Platt scaling); a fault state moves only boards near that cut."""
    conf = np.linspace(0.01, 0.99, 99)
    states = np.eye(4)[np.arange(99) % 4]
    for a, b in ((4.8, -4.2), (1.0, 0.0), (2.5, 3.0)):
        flat = BayesianCombiner(a, b, train_prior=0.2, defect_rate_by_state=[0.2] * 4)
        for threshold in (0.255, 0.5050, 0.7375):
            fused = flat.log_odds(conf, states) >= flat.decision_logit(threshold)
            np.testing.assert_array_equal(fused, conf >= threshold)
    coupled = BayesianCombiner(4.8, -4.2, train_prior=0.2, defect_rate_by_state=[0.2, 0.6, 0.9, 0.75])
    cut = coupled.decision_logit(0.7375)
    normal, inner_race = np.tile([1.0, 0, 0, 0], (99, 1)), np.tile([0, 0, 1.0, 0], (99, 1))
    np.testing.assert_array_equal(coupled.log_odds(conf, normal) >= cut, conf >= 0.7375)  # P(d | normal) = prior
    flagged = coupled.log_odds(conf, inner_race) >= cut
    assert flagged[conf >= 0.7375].all() and flagged[(conf > 0.5) & (conf < 0.7375)].any() and not flagged[conf < 0.2].any()


def test_review_decisions_carry_the_band_to_the_cut():
    from apps.industrial.benchmark import FAIL, PASS, REVIEW, review_decisions

    band = float(np.log(0.65 / 0.35))  # review band 0.15 in log-odds
    z = np.array([-np.inf, 1.0 - band - 1e-9, 1.0 - band, 0.99, 1.0, 1.0 + band - 1e-9, 1.0 + band, np.inf, np.nan])
    assert review_decisions(z, 1.0, 0.15).tolist() == [PASS, PASS, PASS, REVIEW, REVIEW, REVIEW, FAIL, FAIL, REVIEW]
    assert review_decisions(np.array([0.999, 1.0]), 1.0, 0.0).tolist() == [PASS, FAIL]  # no band: the cut alone


def test_service_columns_count_review_as_not_passed(tmp_path):
    fake_upstream(tmp_path, image_noise=0.6)
    cfg = PairingConfig(couplings=(0.0, 1.0), train_events=500, test_events=1500)
    banded, _ = run_benchmark(tmp_path / "img.npz", tmp_path / "vib.npz", cfg, log=lambda *_: None, learned=False, review_band=0.15)
    none, _ = run_benchmark(tmp_path / "img.npz", tmp_path / "vib.npz", cfg, log=lambda *_: None, learned=False, review_band=0.0)
    for c in ("c0", "c1"):
        # without a band the service's Bayes verdicts are the two-way Bayes rule's
        for key in ("false_alarm_rate", "miss_rate", "error_rate"):
            assert none[f"{c}/service_bayes/{key}"] == banded[f"{c}/bayes/{key}"]
        assert none[f"{c}/service_bayes/review_rate"] == 0.0
        # a band sends boards near the cut to a person: fewer passed defective boards, more clean ones held
        assert 0.0 < banded[f"{c}/service_bayes/review_rate"] < 0.5
        assert banded[f"{c}/service_bayes/miss_rate"] < banded[f"{c}/bayes/miss_rate"]
        assert banded[f"{c}/service_bayes/false_alarm_rate"] > banded[f"{c}/bayes/false_alarm_rate"]
    assert "c0/service_image/review_rate" in banded and "c0/service_bayes/false_alarm_rate" not in run_benchmark(
        tmp_path / "img.npz", tmp_path / "vib.npz", cfg, log=lambda *_: None, learned=False)[0]
