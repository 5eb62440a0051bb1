"""Artefacts a stored result links to are on disk, file and folders synced, before the call returns."""

from __future__ import annotations

import os

from core.serving import write_durably


def test_write_durably_syncs_the_file_and_the_folders_that_name_it(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = write_durably(tmp_path / "artefacts" / "0123" / "slice_7.png", b"\x89PNG...")
    assert path.read_bytes() == b"\x89PNG..."
    assert synced == [str(path), str(path.parent), str(path.parent.parent)]
