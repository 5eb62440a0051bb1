"""The package surface: every contract name resolves; settings import stays light."""

from __future__ import annotations

import subprocess
import sys

import core.serving


def test_every_exported_name_resolves():
    assert sorted(core.serving.__all__) == sorted(core.serving._EXPORTS)
    for name in core.serving.__all__:
        assert getattr(core.serving, name) is not None


def test_importing_settings_does_not_pull_the_web_stack():
    code = (
        "import sys; from core.serving import AppSettings; "
        "heavy = [m for m in ('fastapi', 'sqlalchemy', 'prometheus_client', 'torch') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == ""
