"""The LIDC renderer: chest CT volumes around real LIDC-IDRI nodules, with paired EMR text.

``render_study(scan, seed, config)`` renders one scan (``lidc_db.load_database().scans[...]``);
``render_dataset(patients, out, seed)`` writes a folder with ``labels.csv`` (see ``dataset.py`` and
datasets/medical/RENDERED.md). Heavy modules load on first use of these names.
"""

from __future__ import annotations

__all__ = ["RenderConfig", "load_database", "render_dataset", "render_study"]


def __getattr__(name: str):
    if name in ("RenderConfig", "render_study"):
        from apps.medical.render import study

        return getattr(study, name)
    if name == "render_dataset":
        from apps.medical.render.dataset import render_dataset

        return render_dataset
    if name == "load_database":
        from apps.medical.render.lidc_db import load_database

        return load_database
    raise AttributeError(name)
