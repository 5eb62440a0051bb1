"""Clinical context (EMR) sampled conditionally on the label, and a report in the IU register.

How the clinical fields depend on the label. We draw a patient from a population prior (ever-smokers
with a pulmonary nodule, as in the screening cohorts the models come from), compute the log-odds of
malignancy that published risk models give for that patient, and keep the patient with probability
p(malignant | x) for a malignant study or 1 - p for a benign one (importance resampling). So
p(x | label) follows Bayes' rule under the published coefficients.

Coefficients (log odds ratios):
- Brock / PanCan nodule-malignancy model, full model with spiculation (McWilliams A. et al.,
  "Probability of cancer in pulmonary nodules detected on first screening CT", N Engl J Med
  2013;369:910-919): age +0.0287 per year (centred at 62), female sex +0.6011, family history of
  lung cancer +0.2961, emphysema +0.2953. (Its nodule terms - size, type, upper lobe, count,
  spiculation - belong to the image, not to the EMR.)
- PLCOm2012 lung-cancer risk model (Tammemagi M.C. et al., "Selection criteria for lung-cancer
  screening", N Engl J Med 2013;368:728-736): COPD +0.3553, personal history of cancer +0.4590,
  BMI -0.0274 per kg/m2 (centred at 27), current vs former smoker +0.2597, smoking intensity
  -1.822606 x (1/(cigarettes per day / 10) - 0.4021541613), smoking duration +0.0317 per year
  (centred at 27), years since quitting -0.0309 per year (centred at 10).
- Symptoms are not in either model. We use ASSUMED modest log odds ratios, of the order that
  primary-care case-control studies report (Hamilton W. et al., Thorax 2005;60:1059-1065):
  haemoptysis ln 2.0, weight loss ln 1.6, cough ln 1.2. These three are our assumption, not fitted.
The intercept is ours (it sets the prior malignant share near 40 %, close to the rendered label mix),
not the published one (which encodes screening prevalence).

The findings text describes what a reader would write about the scan (location, count, background
lung, incidental findings) and NEVER the malignancy rating, size-based risk words, calcification
("granuloma") or any recommendation that depends on the label.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

INTERCEPT = -0.45

# Brock (McWilliams 2013)
B_AGE, B_FEMALE, B_FAMILY, B_EMPHYSEMA = 0.0287, 0.6011, 0.2961, 0.2953
# PLCOm2012 (Tammemagi 2013)
B_COPD, B_PRIOR_CANCER, B_BMI, B_CURRENT = 0.3553, 0.4590, -0.0274, 0.2597
B_INTENSITY, INTENSITY_CENTRE = -1.822606, 0.4021541613
B_DURATION, B_QUIT = 0.0317321, -0.0308572
# assumed (see module docstring)
B_HAEMOPTYSIS, B_WEIGHT_LOSS, B_COUGH = float(np.log(2.0)), float(np.log(1.6)), float(np.log(1.2))

CLINICAL_FIELDS = (
    "age", "sex", "smoking_status", "cigarettes_per_day", "smoking_years", "years_since_quit", "pack_years",
    "bmi", "family_history", "emphysema", "copd", "prior_cancer", "cough", "haemoptysis", "weight_loss",
)


@dataclass
class Clinical:
    age: int
    sex: str  # "F" | "M"
    smoking_status: str  # "current" | "former"
    cigarettes_per_day: int
    smoking_years: int
    years_since_quit: int  # 0 for current smokers
    pack_years: float
    bmi: float
    family_history: int
    emphysema: int
    copd: int
    prior_cancer: int
    cough: int
    haemoptysis: int
    weight_loss: int

    def log_odds(self) -> float:
        return log_odds(self)

    def as_row(self) -> dict:
        return asdict(self)


def log_odds(c: Clinical) -> float:
    x = INTERCEPT
    x += B_AGE * (c.age - 62) + B_FEMALE * (c.sex == "F") + B_FAMILY * c.family_history + B_EMPHYSEMA * c.emphysema
    x += B_COPD * c.copd + B_PRIOR_CANCER * c.prior_cancer + B_BMI * (c.bmi - 27)
    x += B_CURRENT * (c.smoking_status == "current")
    x += B_INTENSITY * (1.0 / (c.cigarettes_per_day / 10.0) - INTENSITY_CENTRE)
    x += B_DURATION * (c.smoking_years - 27) + B_QUIT * (c.years_since_quit - 10) * (c.smoking_status == "former")
    x += B_HAEMOPTYSIS * c.haemoptysis + B_WEIGHT_LOSS * c.weight_loss + B_COUGH * c.cough
    return float(x)


def sample_prior(rng: np.random.Generator) -> Clinical:
    """One ever-smoker with a lung nodule, from a plausible screening/clinic population."""
    age = int(np.clip(round(rng.normal(63, 8.5)), 40, 88))
    sex = "F" if rng.random() < 0.46 else "M"
    current = rng.random() < 0.45
    cpd = int(np.clip(round(rng.lognormal(np.log(20), 0.45)), 3, 80))
    start = int(np.clip(round(rng.normal(17, 3)), 11, 30))
    if current:
        years, quit = age - start, 0
    else:
        quit = int(np.clip(round(rng.exponential(9)) + 1, 1, max(age - start - 2, 1)))
        years = max(age - start - quit, 2)
    copd = int(rng.random() < 0.25)
    emphysema = int(rng.random() < (0.55 if copd else 0.18))
    return Clinical(
        age=age, sex=sex, smoking_status="current" if current else "former", cigarettes_per_day=cpd,
        smoking_years=years, years_since_quit=quit, pack_years=round(cpd / 20 * years, 1),
        bmi=round(float(np.clip(rng.normal(27, 4.8), 16, 48)), 1), family_history=int(rng.random() < 0.15),
        emphysema=emphysema, copd=copd, prior_cancer=int(rng.random() < 0.12), cough=int(rng.random() < 0.3),
        haemoptysis=int(rng.random() < 0.05), weight_loss=int(rng.random() < 0.08),
    )


def sample_clinical(rng: np.random.Generator, label: int, n_candidates: int = 64) -> Clinical:
    """p(x | label) proportional to p(x) p(label | x) under the risk model, by resampling."""
    candidates = [sample_prior(rng) for _ in range(n_candidates)]
    p = 1 / (1 + np.exp(-np.array([log_odds(c) for c in candidates])))
    w = p if label == 1 else 1 - p
    return candidates[int(rng.choice(n_candidates, p=w / w.sum()))]


# ------------------------------------------------------------------------------------------ report

def lobe_of(side: int, t: float, y_frac: float) -> str:
    """Approximate lobe from side (-1 right, +1 left), height in the lung (0 base..1 apex) and
    antero-posterior position (0 front..1 back): the oblique fissure runs high at the back."""
    fissure = 0.35 + 0.35 * y_frac  # the upper lobe reaches lower at the front
    if side < 0:
        if t >= fissure + 0.1:
            return "right upper lobe"
        if t >= fissure - 0.15 and y_frac < 0.5:
            return "right middle lobe"
        return "right lower lobe"
    if t >= fissure:
        return "left upper lobe" if t > 0.45 or y_frac < 0.4 else "lingula"
    return "left lower lobe"


_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


def findings_text(rng: np.random.Generator, lobes: list[str], clinical: Clinical, contrast: bool) -> str:
    """A CT findings paragraph in the register of the IU reports, with no statement of the answer."""
    n = len(lobes)
    first = lobes[0]
    nodule_sentences = (
        [f"There is a pulmonary nodule in the {first}.",         f"Nodular opacity in the {first}.", f"A pulmonary nodule is present in the {first}."]
        if n == 1 else
        [f"There are {_WORDS.get(n, str(n))} pulmonary nodules, the index nodule in the {first}.",
         f"Multiple pulmonary nodules, including one in the {first}.",
         f"{_WORDS.get(n, str(n)).capitalize()} nodular opacities are present, for example in the {first}."]
    )
    parts = [str(rng.choice(nodule_sentences))]
    if clinical.emphysema:
        parts.append(str(rng.choice(["Centrilobular emphysematous changes.", "Emphysema, upper lung predominant.",
                                     "There are emphysematous changes in both lungs."])))
    else:
        parts.append(str(rng.choice(["The lungs are otherwise clear.", "No focal airspace consolidation.",
                                     "No airspace disease."])))
    parts.append(str(rng.choice(["No pleural effusion or pneumothorax.", "No pneumothorax or pleural effusion.",
                                 "There is no pleural effusion."])))
    parts.append(str(rng.choice(["Heart size is normal.", "The heart is normal in size.",
                                 "Cardiomediastinal silhouette is within normal limits."])))
    if clinical.age > 65 and rng.random() < 0.5:
        parts.append("Degenerative changes of the thoracic spine.")
    if rng.random() < 0.25:
        parts.append(str(rng.choice(["Mild atherosclerotic calcification of the aorta.",
                                     "No mediastinal or hilar lymphadenopathy by size criteria.",
                                     "Visualized upper abdomen is unremarkable."])))
    if contrast:
        parts.append("Contrast-enhanced study.")
    return " ".join(parts)


def history_text(c: Clinical) -> str:
    who = "woman" if c.sex == "F" else "man"
    smoke = (f"current smoker, {c.cigarettes_per_day} cigarettes per day for {c.smoking_years} years "
             f"({c.pack_years:g} pack-years)" if c.smoking_status == "current" else
             f"former smoker, quit {c.years_since_quit} years ago after {c.smoking_years} years at "
             f"{c.cigarettes_per_day} cigarettes per day ({c.pack_years:g} pack-years)")
    history = []
    if c.copd:
        history.append("COPD")
    if c.emphysema:
        history.append("emphysema")
    if c.prior_cancer:
        history.append("prior extrathoracic malignancy")
    symptoms = [s for s, on in (("chronic cough", c.cough), ("haemoptysis", c.haemoptysis),
                                ("unintentional weight loss", c.weight_loss)) if on]
    fam = "Family history of lung cancer." if c.family_history else "No family history of lung cancer."
    return (f"{c.age}-year-old {who}, {smoke}. BMI {c.bmi:g}. "
            f"History: {', '.join(history) if history else 'no significant pulmonary history'}. "
            f"Symptoms: {', '.join(symptoms) if symptoms else 'none reported'}. {fam}")


def report_text(rng: np.random.Generator, lobes: list[str], clinical: Clinical, contrast: bool) -> str:
    indication = str(rng.choice(["Pulmonary nodule evaluation.", "Lung nodule follow-up.",
                                 "Evaluation of pulmonary nodule.", "Chest CT for nodule characterisation."]))
    impression = str(rng.choice([f"Pulmonary nodule(s), {lobes[0]}. Correlate with prior imaging.",
                                 f"Nodule in the {lobes[0]} as described. Management per clinical guidelines.",
                                 f"{lobes[0].capitalize()} nodule. Comparison with prior studies recommended."]))
    return (f"CLINICAL HISTORY: {history_text(clinical)} INDICATION: {indication} "
            f"FINDINGS: {findings_text(rng, lobes, clinical, contrast)} IMPRESSION: {impression}")
