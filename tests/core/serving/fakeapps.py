"""create_app factories the gateway tests mount (as plugins would)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.core.serving.helpers import DoubleRunner, make_app


def _tmp() -> Path:
    return Path(os.environ["TRIPTYCH_TEST_GATEWAY_DIR"])


def create_alpha():
    page = _tmp() / "alpha_page"
    page.mkdir(parents=True, exist_ok=True)
    (page / "index.html").write_text("<!doctype html><title>alpha</title>")
    return make_app(_tmp() / "alpha", DoubleRunner(), page=page)


def create_beta():
    return make_app(_tmp() / "beta", DoubleRunner())


def create_broken():
    raise RuntimeError("this app's factory has a bug")
