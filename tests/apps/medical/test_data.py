"""The medical loaders on generated files in their own layouts."""

from __future__ import annotations

import csv

from apps.medical.data import load_iu_reports, load_rendered, rendered_nodule_centres


def _add_bom(path):
    """What Excel's "CSV UTF-8" and Windows tools write: a byte-order mark before the header."""
    path.write_text("\ufeff" + path.read_text(encoding="utf-8"), encoding="utf-8")


def test_iu_reports_with_a_byte_order_mark_read_as_without(tmp_path):
    path = tmp_path / "indiana_reports.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"])
        writer.writerow(["7", "Nodule/lung", "Nodule", "x", "x", "x", "", "Right nodule."])
    _add_bom(path)
    (report,) = load_iu_reports(tmp_path)
    assert report.uid == "7" and report.label == 1


def test_rendered_studies_with_a_byte_order_mark_read_as_without(tmp_path):
    from apps.medical.toydata import write_toy_dataset

    root = write_toy_dataset(tmp_path / "rendered", n=2, shape=(8, 12, 12), seed=0)
    before = load_rendered(root)
    centres = rendered_nodule_centres(root)
    assert centres and all(study.report for study in before)
    for name in ("labels.csv", "nodules.csv", "reports/LIDC-IDRI-0001-s0.txt"):
        _add_bom(root / name)
    assert load_rendered(root) == before
    assert rendered_nodule_centres(root) == centres
