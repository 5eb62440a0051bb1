"""Files a stored result links to (heat maps, redacted recordings), written as durably as the result."""

from __future__ import annotations

import os
from pathlib import Path


def write_durably(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` (folders made) and sync the file and its folder to disk before
    returning: an artefact a stored result links to (a heat map, a redacted recording) must survive a
    power cut as the result row does (the database commits with synchronous=FULL)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    for folder in (path.parent, path.parent.parent):  # the file's entry, and its folder's (often new: one per result)
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    return path
