"""The board-inspection page in a real headless Chromium against the app on a loopback port (like
the other pages' browser tests: needs ``playwright`` and a Chromium, skipped otherwise)."""

from __future__ import annotations

import pytest

from tests.apps.industrial.conftest import board_png, vibration_signal
from tests.apps.industrial.test_web import tiny_settings
from tests.core.serving.pages import BROWSER, open_page, wait_status

pytestmark = BROWSER


@pytest.mark.timeout(240)
def test_page_inspects_a_board_with_vibration(tiny_bundles, tmp_path):
    from PIL import Image

    from apps.industrial.api import create_app
    from core.serving.bench import LoopbackServer

    png = tmp_path / "board.png"
    png.write_bytes(board_png(defect=True))
    width = Image.open(png).width
    csv = tmp_path / "vibration.csv"
    csv.write_text("accel_g\n" + "\n".join(f"{v:.6f}" for v in vibration_signal(seconds=0.4)))
    with LoopbackServer(create_app(tiny_settings(tiny_bundles, tmp_path))) as server, \
            open_page(server.url + "/ui/") as (page, problems):
        page.set_input_files("#image", str(png))
        page.set_input_files("#vibration", str(csv))
        page.click("#inspect-button")
        assert "sample_rate" in wait_status(page, "#inspect-status", lambda t, c: "error" in c or t.startswith("Done"), 60)
        problems.clear()  # the refused request (no sample rate for a CSV) is logged by the browser: expected

        page.fill("#sample-rate", "12000")
        page.fill("#board-id", "SN-0042")
        page.click("#inspect-button")
        status = wait_status(page, "#inspect-status", lambda t, c: "error" in c or t.startswith("Done"), 120)
        assert status.startswith("Done"), status
        decision = page.text_content("#decision")
        assert decision.split(" ")[0] in ("PASS", "FAIL", "REVIEW") and page.text_content("#machine")
        assert page.locator("#board").evaluate("c => c.width") == width  # the board drawn at its own size
        assert page.locator("#defects tbody tr").count() == int(decision.split(" · ")[1].split()[0])
        assert page.text_content("#record").startswith("board SN-0042 · result ")
        # the line's numbers, refreshed after the inspection: one stored board, its defects in the Pareto
        wait_status(page, "#summary-status", lambda t, c: t.startswith("1 inspection"), 30)
        decided = decision.split(" ")[0].lower()
        assert page.text_content("#pass-rate") == ("100 %" if decided == "pass" else "0 %")
        defects = int(decision.split(" · ")[1].split()[0])
        if defects:
            counted = page.locator("#pareto tbody tr td:nth-child(2)").all_text_contents()
            assert sum(int(n) for n in counted) <= defects  # template-refuted detections are left out
        with page.expect_download() as download:
            page.click("#export")
        assert download.value.suggested_filename == "inspections-last-24h.csv"
        lines = open(download.value.path()).read().splitlines()
        assert lines[0].startswith("created_at,id,board_id") and len(lines) == 2 and ",SN-0042," in lines[1]
        page.select_option("#period", "8")
        wait_status(page, "#summary-status", lambda t, c: t.startswith("1 inspection"), 30)
        assert not problems, problems
