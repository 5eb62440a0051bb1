"""The board-inspection page: served by the app, its script calls routes that exist, and it parses."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from apps.industrial.api import create_app
from apps.industrial.settings import IndustrialSettings
from tests.core.serving.pages import assert_page_served, assert_script_matches, assert_scripts_parse

WEB = Path(__file__).resolve().parents[3] / "apps" / "industrial" / "web"


def tiny_settings(tiny_bundles, tmp_path, **overrides) -> IndustrialSettings:
    return IndustrialSettings(
        detector_dir=tiny_bundles / "detector", vibration_dir=tiny_bundles / "vibration", fusion_dir=tiny_bundles / "fusion",
        template_detector_dir=tiny_bundles / "detector_template", database_url=f"sqlite:///{tmp_path}/t.db",
        artefact_dir=tmp_path / "art", torch_threads=1, detector_backend="torch", detector_precision="fp32", **overrides)


@pytest.fixture()
def app(tiny_bundles, tmp_path):
    return create_app(tiny_settings(tiny_bundles, tmp_path))


def test_page_is_served(app):
    with TestClient(app) as client:
        assert "Inspect a board" in assert_page_served(client, WEB)


def test_script_uses_routes_the_app_has_and_ids_the_page_has(app):
    assert_script_matches(app, WEB, {"v1/inspect", "v1/inspections:summary", "v1/inspections.csv"})


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_script_parses():
    assert_scripts_parse(WEB / "app.js")
