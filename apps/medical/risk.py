"""Clinical risk factors read from the EMR text: the inputs of the Brock/PanCan and PLCOm2012 models.

A frozen sentence encoder sees "former smoker, quit 3 years ago after 46 years at 34 cigarettes per
day" as one vector and a few hundred studies cannot teach a fusion model to read numbers out of it;
the risk models are linear in these numbers. So the report also yields this small, named feature
vector (centred and scaled like the published models), which the report encoder turns into one more
token. Anything not mentioned stays 0 (the population centre); negated mentions ("No family history
of lung cancer", "no significant pulmonary history", "Symptoms: none reported") count as absent.
"""

from __future__ import annotations

import re

import numpy as np

RISK_FACTORS = ("age", "female", "current_smoker", "former_smoker", "log_pack_years", "smoking_years",
                "years_since_quit", "cigarettes_per_day", "bmi", "family_history", "emphysema", "copd",
                "prior_cancer", "cough", "haemoptysis", "weight_loss")

_AGE = re.compile(r"\b(\d{2,3})[- ]year[- ]old\s+(man|woman|male|female|patient)?", re.IGNORECASE)
_PACK_YEARS = re.compile(r"(\d+(?:\.\d+)?)\s*pack[- ]years?", re.IGNORECASE)
_QUIT = re.compile(r"quit\s+(\d+)\s+years?\s+ago", re.IGNORECASE)
_YEARS = re.compile(r"(?:for|after)\s+(\d+)\s+years", re.IGNORECASE)
_CPD = re.compile(r"(\d+)\s+cigarettes?\s+per\s+day", re.IGNORECASE)
_BMI = re.compile(r"\bBMI\s*(?:of\s*)?(\d+(?:\.\d+)?)", re.IGNORECASE)
_CURRENT_SMOKER = re.compile(r"\bcurrent(?:ly)?\s+smok", re.IGNORECASE)
_FORMER_SMOKER = re.compile(r"\b(former|ex-?)\s*smoker\b", re.IGNORECASE)
_SEXES = ("man", "woman", "male", "female")
_NEGATED = re.compile(r"\b(no|denies|without|negative for)\b[^.;:]*$", re.IGNORECASE)

# (plausible, trained) ranges in the text's own units. A number outside the plausible range is a typo or
# a misread ("900 pack-years") and counts as not stated; a plausible number beyond what the training
# histories held is clipped to their range, because the models are linear in it and nothing was learnt
# about ages under 40 or 300 pack-years.
_RANGES = {
    "age": ((18, 110), (40, 88)),
    "log_pack_years": ((0, 250), (0.1, 200)),
    "smoking_years": ((0, 90), (2, 77)),
    "years_since_quit": ((0, 90), (1, 60)),
    "cigarettes_per_day": ((1, 150), (3, 80)),
    "bmi": ((10, 80), (16, 48)),
}


def _number(name: str, match: re.Match | None) -> float | None:
    """The match's first group within ``name``'s plausible range, clipped to its trained range; else None."""
    if match is None:
        return None
    value = float(match.group(1))
    (low, high), (trained_low, trained_high) = _RANGES[name]
    if not low <= value <= high:
        return None
    return min(max(value, trained_low), trained_high)


def _mentioned(text: str, pattern: str) -> float:
    """1 when ``pattern`` occurs in a sentence that does not negate it before the mention."""
    for m in re.finditer(pattern, text, re.IGNORECASE):
        start = max(text.rfind(".", 0, m.start()), text.rfind(":", 0, m.start())) + 1
        if not _NEGATED.search(text[start : m.start()]):
            return 1.0
    return 0.0


def extract_risk_factors(text: str | None) -> np.ndarray:
    """``RISK_FACTORS`` as float32, centred and scaled (age 62, 27 pack-years, BMI 27, ...)."""
    out = np.zeros(len(RISK_FACTORS), np.float32)
    if not text:
        return out
    values: dict[str, float] = {}
    age_match = _AGE.search(text)
    if (age := _number("age", age_match)) is not None:
        values["age"] = (age - 62.0) / 10.0
        values["female"] = 1.0 if (age_match.group(2) or "").lower() in ("woman", "female") else 0.0
    if _CURRENT_SMOKER.search(text):
        values["current_smoker"] = 1.0
    elif _FORMER_SMOKER.search(text):
        values["former_smoker"] = 1.0
    if (pack_years := _number("log_pack_years", _PACK_YEARS.search(text))) is not None:
        values["log_pack_years"] = float(np.log1p(pack_years)) - float(np.log1p(27.0))
    if (years := _number("smoking_years", _YEARS.search(text))) is not None:
        values["smoking_years"] = (years - 27.0) / 10.0
    if (quit := _number("years_since_quit", _QUIT.search(text))) is not None:
        values["years_since_quit"] = (quit - 10.0) / 10.0
    if (per_day := _number("cigarettes_per_day", _CPD.search(text))) is not None:
        values["cigarettes_per_day"] = (per_day - 20.0) / 10.0
    if (bmi := _number("bmi", _BMI.search(text))) is not None:
        values["bmi"] = (bmi - 27.0) / 5.0
    values["family_history"] = _mentioned(text, r"family history of (?:lung )?cancer")
    values["emphysema"] = _mentioned(text, r"emphysema")
    values["copd"] = _mentioned(text, r"\bCOPD\b|chronic obstructive")
    values["prior_cancer"] = _mentioned(text, r"(?:prior|previous|(?<!family )history of)\s+(?:\w+\s+){0,2}(?:cancer|malignancy)")
    values["cough"] = _mentioned(text, r"\bcough")
    values["haemoptysis"] = _mentioned(text, r"ha?emoptysis")
    values["weight_loss"] = _mentioned(text, r"weight loss")
    for name, value in values.items():
        out[RISK_FACTORS.index(name)] = value
    return out


# What every clinical history the report models learnt from states (the rendered EMR histories: PLCOm2012's and
# Brock's screening population, current and former smokers): a report alone that lacks one of these is read off
# a risk vector no training history had, and the first report-only models answered such reports 0.0003-0.90.
CORE_HISTORY = {
    "age_sex": "age and sex ('66-year-old woman')",
    "smoking_status": "smoking status ('current smoker' or 'former smoker')",
    "smoking_amount": "how much ('40 pack-years', or '20 cigarettes per day for 30 years')",
}


def history_gaps(text: str | None) -> list[str]:
    """The ``CORE_HISTORY`` facts that ``text`` does not state (as :func:`extract_risk_factors` reads it), in
    order; [] for a history like those the report models learnt from."""
    text = text or ""
    gaps = []
    age_match = _AGE.search(text)
    if _number("age", age_match) is None or (age_match.group(2) or "").lower() not in _SEXES:
        gaps.append("age_sex")
    if not (_CURRENT_SMOKER.search(text) or _FORMER_SMOKER.search(text)):
        gaps.append("smoking_status")
    if _number("log_pack_years", _PACK_YEARS.search(text)) is None and _number("cigarettes_per_day", _CPD.search(text)) is None:
        gaps.append("smoking_amount")
    return gaps


def risk_matrix(texts: list[str | None]) -> np.ndarray:
    return np.stack([extract_risk_factors(t) for t in texts]) if texts else np.zeros((0, len(RISK_FACTORS)), np.float32)
