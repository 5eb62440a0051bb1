"""Offline by construction: the environment every entry point sets before heavy imports.

Nothing in triptych may reach a model hub or URL at run time. Hugging Face and ultralytics both
honour environment variables; ultralytics additionally fetches ``Arial.ttf`` on first use unless a
font already sits in its config dir, so we give it a project-owned dir with a bundled font.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "YOLO_OFFLINE": "1",
    "YOLO_VERBOSE": "False",
    "TOKENIZERS_PARALLELISM": "false",
}


def state_dir() -> Path:
    """Where triptych keeps machine-local state (ultralytics config, caches)."""
    return Path(os.environ.get("TRIPTYCH_HOME", Path.home() / ".cache" / "triptych"))


def _find_dejavu_font() -> Path | None:
    try:
        import matplotlib  # ultralytics depends on it

        candidate = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return candidate if candidate.exists() else None
    except ImportError:
        return None


def prepare_ultralytics_dir() -> Path:
    """A YOLO_CONFIG_DIR holding ``Ultralytics/Arial.ttf`` so plotting never downloads a font."""
    config_dir = state_dir() / "ultralytics"
    font_path = config_dir / "Ultralytics" / "Arial.ttf"
    if not font_path.exists():
        font_path.parent.mkdir(parents=True, exist_ok=True)
        source = _find_dejavu_font()
        if source is not None:
            shutil.copyfile(source, font_path)
    return config_dir


def enforce_offline() -> None:
    """Set the offline environment (idempotent). Call before importing transformers/ultralytics."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    if "YOLO_CONFIG_DIR" not in os.environ:
        os.environ["YOLO_CONFIG_DIR"] = str(prepare_ultralytics_dir())
