"""The radiology page: served by the app, its script calls routes that exist, and it parses."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from apps.medical.api import create_app
from apps.medical.settings import MedicalSettings
from tests.core.serving.pages import assert_page_served, assert_script_matches, assert_scripts_parse

WEB = Path(__file__).resolve().parents[3] / "apps" / "medical" / "web"


@pytest.fixture()
def app(tiny_bundle, tiny_bert_dir, tmp_path):
    return create_app(MedicalSettings(bundle_dir=tiny_bundle[0], bert_path=str(tiny_bert_dir),
                                      database_url=f"sqlite:///{tmp_path}/t.db", artefact_dir=tmp_path / "art"))


def test_page_is_served_with_the_disclaimer(app):
    with TestClient(app) as client:
        page = assert_page_served(client, WEB)
        assert "Not a medical device" in page


def test_script_uses_routes_the_app_has_and_ids_the_page_has(app):
    assert_script_matches(app, WEB, {"v1/studies:analyze", "v1/studies", "v1/studies/{}", "v1/audit", "v1/me"})
    script = (WEB / "app.js").read_text()
    assert "fetchBlobUrl(url)" in script  # heat maps and downloads: the key goes along
    assert 'offerDownload($("capture"), r.secondary_capture' in script and 'offerDownload($("structured-report"), r.structured_report' in script
    # the analysis, the worklist, a stored result, the heat maps' checks, erasure, the audit trail: the key goes along
    calls = [line for line in script.splitlines() if "await fetch(" in line]
    assert len(calls) >= 6 and all("headers: headers()" in line or "headers: sent" in line for line in calls), calls
    # erasure: DELETE of the shown result, with the key
    assert '`${BASE}v1/studies/${encodeURIComponent(id)}`, { method: "DELETE", headers: headers() }' in script
    assert '`${BASE}v1/audit?${query}`, { headers: headers() }' in script and 'query.set("action", $("audit-action").value)' in script


def _roles(method: str, path: str) -> set[str]:
    from apps.medical.api import router

    route = next(r for r in router.routes if r.path == path and method in r.methods)
    return {d.call.__name__ for d in route.dependant.dependencies if d.call.__name__.startswith("require_role")}


def test_erasure_is_offered_to_whoever_may_read_the_audit_trail():
    """The page loads the trail and offers "Erase" when GET v1/me says admin (or keys are off): both routes
    must want exactly that role."""
    assert _roles("GET", "/v1/audit") == _roles("DELETE", "/v1/studies/{result_id}") \
        == {"require_role_admin"}
    script = (WEB / "app.js").read_text()
    assert 'const sentToMe = headers();' in script and '`${BASE}v1/me`, { headers: sentToMe }' in script
    assert 'mayErase = who !== null && (who.role === "admin" || !who.authenticated);' in script


def test_audit_trail_offers_the_actions_and_limits_the_api_accepts(app):
    from typing import get_args

    from apps.medical.api import AuditAction

    with TestClient(app) as client:
        page = assert_page_served(client, WEB)
    for element in ('id="audit"', 'id="audit-records"', 'id="audit-action"', 'id="audit-limit"', 'id="audit-refresh"',
                    'id="audit-status"', 'id="erase-box"', 'id="erase"', 'id="erase-confirm"', 'id="erase-yes"',
                    'id="erase-no"'):
        assert element in page
    options = re.findall(r'<option value="([^"]*)"', page.split('id="audit-action"', 1)[1].split("</select>", 1)[0])
    assert sorted(options) == sorted(["", *get_args(AuditAction)])  # "": every action
    limits = re.findall(r'<option value="([^"]*)"', page.split('id="audit-limit"', 1)[1].split("</select>", 1)[0])
    assert limits and all(1 <= int(n) <= 500 for n in limits)  # GET v1/audit's limit bounds
    assert 'id="erase-box" hidden' in page and 'id="erase-confirm" class="confirm" hidden' in page  # only once allowed


def test_recent_studies_offer_the_bands_the_api_accepts(app):
    from typing import get_args

    from apps.medical.api import Band

    with TestClient(app) as client:
        page = assert_page_served(client, WEB)
    for element in ('id="recent"', 'id="studies"', 'id="band-filter"', 'id="refresh"', 'id="recent-status"'):
        assert element in page
    options = re.findall(r'<option value="([^"]*)"', page.split('id="band-filter"', 1)[1].split("</select>", 1)[0])
    assert sorted(options) == sorted(["", *get_args(Band)])  # "": all bands


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_script_parses():
    assert_scripts_parse(WEB / "app.js")
