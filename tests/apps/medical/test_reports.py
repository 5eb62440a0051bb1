import csv

import numpy as np
import pytest

from apps.medical.reports import ReportClassifier, report_label, uid_split

POS = ["There is a {s} nodule in the {l}.", "A {s} mass is seen in the {l}.", "{s} nodular opacity in the {l}, suspicious."]
NEG = ["No nodules or masses in the {l}.", "The {l} is clear without nodule or mass.", "Negative for mass. {l} normal."]


def _corpus(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        template = (POS if label else NEG)[rng.integers(3)]
        texts.append(template.format(s=rng.choice(["small", "large", "1 cm"]), l=rng.choice(["right upper lobe", "left base", "lingula"])))
        labels.append(label)
    return texts, labels


def test_label_rule_reads_mesh_any_case():
    assert report_label("Nodule/lung/upper lobe") == 1
    assert report_label("Opacity;MASS/thorax") == 1
    assert report_label("neoplasms/lung") == 1
    assert report_label("normal") == 0 and report_label("") == 0


def test_uid_split_is_deterministic_and_roughly_sized():
    splits = [uid_split(str(i)) for i in range(2000)]
    assert splits == [uid_split(str(i)) for i in range(2000)]
    assert 0.15 < splits.count("val") / 2000 < 0.25


def test_negation_decides_between_same_words(tmp_path):
    texts, labels = _corpus(80)
    model = ReportClassifier().fit(texts, labels)
    p = model.predict_proba(["No nodule or mass in the left base.", "There is a large nodule in the left base."])
    assert p[0] < 0.5 < p[1]
    path = tmp_path / "clf.json"
    model.save(path)
    again = ReportClassifier.load(path)
    assert np.allclose(again.predict_proba(texts), model.predict_proba(texts))
    assert again.threshold == model.threshold


def test_refuses_single_class_and_foreign_files(tmp_path):
    with pytest.raises(ValueError):
        ReportClassifier().fit(["a", "b"], [0, 0])
    (tmp_path / "x.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError):
        ReportClassifier.load(tmp_path / "x.json")


@pytest.mark.data
@pytest.mark.slow
def test_iu_reports_held_out_auc(shared_data):
    """Real IU reports: fit on the uid-train part, score the uid-held-out part."""
    from sklearn.metrics import roc_auc_score

    from apps.medical.data import load_iu_reports

    reports = load_iu_reports(shared_data / "iu_xray_reports")
    train = [r for r in reports if uid_split(r.uid) == "train"]
    val = [r for r in reports if uid_split(r.uid) == "val"]
    model = ReportClassifier().fit([r.text for r in train], [r.label for r in train], tune_threshold=False)
    auc = roc_auc_score([r.label for r in val], model.predict_proba([r.text for r in val]))
    assert auc >= 0.98


def test_loader_reads_the_iu_layout(tmp_path):
    from apps.medical.data import load_iu_reports

    path = tmp_path / "indiana_reports.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"])
        writer.writerow(["1", "normal", "normal", "x", "x", "x", "Lungs clear.", "Normal."])
        writer.writerow(["2", "Nodule/lung", "Nodule", "x", "x", "x", "", "Right nodule."])
    reports = load_iu_reports(tmp_path)
    assert [r.label for r in reports] == [0, 1]
    assert "Right nodule." in reports[1].text and "Nodule/lung" not in reports[1].text
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError):
        load_iu_reports(tmp_path / "bad.csv")


def test_eval_reports_reads_the_classifier_the_settings_name(tmp_path, monkeypatch):
    """``triptych eval medical --reports FILE`` with no --classifier scores the one ``report_classifier_path`` names."""
    import json

    import typer
    from typer.testing import CliRunner

    from apps.medical.cli import evaluate
    from apps.medical.settings import get_settings

    texts, labels = _corpus(60)
    clf = tmp_path / "clf.json"
    ReportClassifier().fit(texts, labels).save(clf)
    iu = tmp_path / "indiana_reports.csv"
    with iu.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"])
        for i, (text, label) in enumerate(zip(texts, labels)):
            w.writerow([i, "Nodule/lung" if label else "normal", "", "", "", "", text, ""])
    monkeypatch.setenv("TRIPTYCH_MEDICAL_REPORT_CLASSIFIER_PATH", str(clf))
    get_settings.cache_clear()
    try:
        app = typer.Typer()
        app.command()(evaluate)
        out = tmp_path / "m.json"
        r = CliRunner().invoke(app, ["--reports", str(iu), "--json", str(out)])
        assert r.exit_code == 0, r.output
        assert json.loads(out.read_text())["auc"] == 1.0
        monkeypatch.setenv("TRIPTYCH_MEDICAL_REPORT_CLASSIFIER_PATH", str(tmp_path / "missing.json"))
        get_settings.cache_clear()
        assert CliRunner().invoke(app, ["--reports", str(iu)]).exit_code != 0  # it was read: it is missing
    finally:
        get_settings.cache_clear()


def test_eval_reports_one_class_writes_auc_as_null_and_empty_is_refused(tmp_path):
    """One class only: AUC is undefined, written as JSON null (never NaN); no reports at all is an input error."""
    import json

    import typer
    from typer.testing import CliRunner

    from apps.medical.cli import evaluate

    texts, labels = _corpus(60)
    clf = tmp_path / "clf.json"
    ReportClassifier().fit(texts, labels).save(clf)
    header = ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"]
    iu = tmp_path / "indiana_reports.csv"
    with iu.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerow([1, "normal", "", "", "", "", "No acute disease.", ""])
    app = typer.Typer()
    app.command()(evaluate)
    out = tmp_path / "m.json"
    r = CliRunner().invoke(app, ["--reports", str(iu), "--json", str(out), "--classifier", str(clf)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))["auc"] is None
    iu.write_text(",".join(header) + "\n")
    r = CliRunner().invoke(app, ["--reports", str(iu), "--classifier", str(clf)])
    assert isinstance(r.exception, ValueError) and "no reports" in str(r.exception)


@pytest.mark.parametrize("spec", ["banana", "1:x", "LIDC-IDRI-0005:LIDC-IDRI-0001"])
def test_parse_patient_range_says_what_it_expects(spec):
    from apps.medical.data import parse_patient_range

    with pytest.raises(ValueError, match="LIDC-IDRI-0001:LIDC-IDRI-0800"):
        parse_patient_range(spec)
    assert parse_patient_range("LIDC-IDRI-0001:LIDC-IDRI-0800") == parse_patient_range("1:800") == (1, 800)
