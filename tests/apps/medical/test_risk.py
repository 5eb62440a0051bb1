"""Clinical risk factors read from EMR text (the Brock / PLCOm2012 inputs)."""

from __future__ import annotations

import numpy as np


def _named(text):
    from apps.medical.risk import RISK_FACTORS, extract_risk_factors

    return dict(zip(RISK_FACTORS, extract_risk_factors(text).tolist()))


def test_reads_numbers_sex_and_smoking_history():
    f = _named("CLINICAL HISTORY: 66-year-old woman, former smoker, quit 3 years ago after 46 years at 34 cigarettes "
               "per day (78.2 pack-years). BMI 32.2. History: COPD, prior extrathoracic malignancy. Symptoms: none reported. "
               "No family history of lung cancer.")
    assert round(f["age"] * 10 + 62) == 66 and f["female"] == 1.0
    assert f["former_smoker"] == 1.0 and f["current_smoker"] == 0.0
    assert np.isclose(f["log_pack_years"], np.log1p(78.2) - np.log1p(27.0), atol=1e-5)
    assert round(f["years_since_quit"] * 10 + 10) == 3 and round(f["smoking_years"] * 10 + 27) == 46
    assert np.isclose(f["bmi"] * 5 + 27, 32.2, atol=1e-4)
    assert f["copd"] == 1.0 and f["prior_cancer"] == 1.0
    # negated: "No family history", "Symptoms: none reported"
    assert f["family_history"] == 0.0 and f["cough"] == 0.0 and f["emphysema"] == 0.0


def test_family_history_is_not_a_prior_cancer_and_missing_text_is_the_centre():
    f = _named("71-year-old man, current smoker, 20 cigarettes per day for 40 years (40 pack-years). "
               "Symptoms: chronic cough, haemoptysis. Family history of lung cancer.")
    assert f["family_history"] == 1.0 and f["prior_cancer"] == 0.0
    assert f["current_smoker"] == 1.0 and f["cough"] == 1.0 and f["haemoptysis"] == 1.0 and f["female"] == 0.0
    assert not any(_named("").values()) and not any(_named(None).values())


def test_report_encoder_adds_one_risk_token(tiny_bert_dir):
    import torch

    from apps.medical.encoders import BertReportEncoder

    plain = BertReportEncoder(path=str(tiny_bert_dir), max_length=16, max_segments=8)
    risky = BertReportEncoder(path=str(tiny_bert_dir), max_length=16, max_segments=8, risk_factors=True)
    texts = ["66-year-old woman, former smoker. BMI 30.", "Never smoker."]
    a, b = plain(plain.tokenize(texts)), risky(risky.tokenize(texts))
    assert b.tokens.shape[1] == a.tokens.shape[1] + 1 and bool(b.mask[:, -1].all())
    batch = risky.tokenize(texts)
    batch.pop("risk")
    try:
        risky(batch)
    except ValueError as exc:
        assert "risk" in str(exc)
    else:
        raise AssertionError("a risk-factor encoder must refuse a batch without risk factors")
    assert torch.isfinite(b.tokens).all()


def test_absurd_numbers_count_as_not_stated_and_plausible_extremes_are_clipped_to_the_trained_range():
    absurd = _named("CLINICAL HISTORY: 250-year-old man, current smoker, 900 cigarettes per day for 120 years "
                    "(900 pack-years). BMI 400.")
    assert absurd["current_smoker"] == 1.0
    for name in ("age", "log_pack_years", "smoking_years", "cigarettes_per_day", "bmi"):
        assert absurd[name] == 0.0, name
    extreme = _named("CLINICAL HISTORY: 25-year-old man, current smoker, 120 cigarettes per day for 85 years "
                     "(240 pack-years). BMI 62.")
    assert round(extreme["age"] * 10 + 62) == 40 and np.isclose(extreme["bmi"] * 5 + 27, 48.0, atol=1e-4)
    assert round(extreme["cigarettes_per_day"] * 10 + 20) == 80 and round(extreme["smoking_years"] * 10 + 27) == 77
    assert np.isclose(extreme["log_pack_years"], np.log1p(200.0) - np.log1p(27.0), atol=1e-5)


def test_history_gaps_name_what_every_training_history_stated():
    from apps.medical.risk import history_gaps

    assert history_gaps("CLINICAL HISTORY: 84-year-old woman, former smoker, quit 25 years ago after 42 years at 20 "
                        "cigarettes per day (42 pack-years). BMI 23.1.") == []
    assert history_gaps("58 year old female current smoker, 30 pack years") == []
    assert history_gaps(None) == ["age_sex", "smoking_status", "smoking_amount"]
    assert history_gaps("67-year-old patient, former smoker, 40 pack-years.") == ["age_sex"]  # sex not stated
    assert history_gaps("Age 300-year-old man, ex-smoker, 20 cigarettes per day") == ["age_sex"]  # not plausible
    assert history_gaps("70-year-old man, never smoker.") == ["smoking_status", "smoking_amount"]
    assert history_gaps("66-year-old woman, former smoker.") == ["smoking_amount"]
