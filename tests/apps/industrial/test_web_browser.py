"""The board-inspection page in a real headless Chromium against the app on a loopback port (like
the other pages' browser tests: needs ``playwright`` and a Chromium, skipped otherwise)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.apps.industrial.conftest import BLOB_BOXES, blob_board, board_png, encode, vibration_signal
from tests.apps.industrial.test_web import tiny_settings
from tests.core.serving.pages import BROWSER, open_page, wait_status

pytestmark = BROWSER

DONE = lambda t, c: "error" in c or t.startswith("Done")  # noqa: E731


def banner(text: str) -> tuple[str, int, dict[str, int]]:
    """"FAIL · 1 defect (2 refuted by template, 1 below size) · detector input: image" -> ("FAIL", 1, {...})."""
    m = re.match(r"(PASS|FAIL|REVIEW) · (\d+) defects? ?(?:\((.*?)\))?(?: · |$)", text)
    assert m, text
    listed_only = {why: int(n) for n, why in re.findall(r"(\d+) (refuted by template|below size)", m.group(3) or "")}
    return m.group(1), int(m.group(2)), listed_only


def pixel(page, x: int, y: int) -> tuple[int, int, int]:
    return tuple(page.locator("#board").evaluate(f"c => Array.from(c.getContext('2d').getImageData({x}, {y}, 1, 1).data)")[:3])


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
        assert "sample_rate" in wait_status(page, "#inspect-status", DONE, 60)
        problems.clear()  # the refused request (no sample rate for a CSV) is logged by the browser: expected

        page.fill("#sample-rate", "12000")
        page.fill("#board-id", "SN-0042")
        page.click("#inspect-button")
        status = wait_status(page, "#inspect-status", DONE, 120)
        assert status.startswith("Done"), status
        decision = page.text_content("#decision")
        decided, counted, listed_only = banner(decision)
        assert page.text_content("#machine")
        assert page.locator("#board").evaluate("c => c.width") == width  # the board drawn at its own size
        assert page.locator("#defects tbody tr").count() == counted + sum(listed_only.values())
        assert page.text_content("#record").startswith("board SN-0042 · result ")
        # the line's numbers, refreshed after the inspection: one stored board, its defects in the Pareto
        wait_status(page, "#summary-status", lambda t, c: t.startswith("1 inspection"), 30)
        assert page.text_content("#pass-rate") == ("100 %" if decided == "PASS" else "0 %")
        if counted:
            in_pareto = page.locator("#pareto tbody tr td:nth-child(2)").all_text_contents()
            assert sum(int(n) for n in in_pareto) <= counted + sum(listed_only.values())  # template-refuted ones left out
        with page.expect_download() as download:
            page.click("#export")
        assert download.value.suggested_filename == "inspections-last-24h.csv"
        lines = open(download.value.path()).read().splitlines()
        assert lines[0].startswith("created_at,id,board_id") and len(lines) == 2 and ",SN-0042," in lines[1]
        page.select_option("#period", "8")
        wait_status(page, "#summary-status", lambda t, c: t.startswith("1 inspection"), 30)
        assert not problems, problems


GREY = (158, 158, 158)  # app.js LISTED_ONLY
RED = (255, 82, 82)  # app.js COLOURS.open


@pytest.mark.timeout(240)
def test_the_banner_counts_only_the_defects_the_decision_rests_on_and_boxes_land_on_a_rotated_jpeg(
        tiny_bundles, tmp_path, blob_detector):
    """Two blocks found, one of 40 px (0.83 mm) and one of 10 px (0.21 mm), with a 0.5 mm acceptable size: the
    banner counts one defect and names the other; the canvas draws the small one dashed grey, the legend says why.
    The board is a JPEG stored on its side with the EXIF tag "rotate 90": Chromium draws it upright, and the
    service's boxes are in the upright board's pixels, so each box lands on its block."""
    from apps.industrial.api import create_app
    from core.serving.bench import LoopbackServer

    jpeg = tmp_path / "board.jpg"
    jpeg.write_bytes(encode(np.ascontiguousarray(np.rot90(blob_board(), 1)), "JPEG", orientation=6))  # turned a quarter left, tagged
    with LoopbackServer(create_app(tiny_settings(tiny_bundles, tmp_path, min_defect_mm=0.5))) as server, \
            open_page(server.url + "/ui/") as (page, problems):
        page.set_input_files("#image", str(jpeg))
        page.click("#inspect-button")
        assert wait_status(page, "#inspect-status", DONE, 120).startswith("Done")
        text = page.text_content("#decision")
        assert banner(text)[1:] == (1, {"below size": 1}), text
        assert " · 1 defect (1 below size) · " in text
        rows = page.locator("#defects tbody tr")
        muted = {rows.nth(i).get_attribute("class"): rows.nth(i).text_content() for i in range(rows.count())}
        assert rows.count() == 2 and set(muted) == {None, "listed-only"} and "acceptable size" in muted["listed-only"]
        assert page.locator("#board-legend").is_visible() and "dashed grey" in page.text_content("#board-legend")
        # drawn upright, the boxes on their blocks: the counted one solid in its class's colour, the other grey
        assert page.locator("#board").evaluate("c => [c.width, c.height]") == [200, 120]
        (x1, y1, x2, y2), (s1, t1, s2, t2) = (map(int, box) for box in BLOB_BOXES)
        assert {pixel(page, x1, (y1 + y2) // 2), pixel(page, x2, (y1 + y2) // 2), pixel(page, (x1 + x2) // 2, y2)} == {RED}
        edge = {pixel(page, x, t1) for x in range(s1, s2 + 1)} | {pixel(page, s1, y) for y in range(t1, t2 + 1)}
        assert GREY in edge and RED not in edge  # dashed: grey dashes between the board's own pixels
        assert not problems, problems


@pytest.mark.timeout(120)
def test_a_refused_api_key_is_shown_as_refused_and_a_missing_one_is_asked_for(tiny_bundles, tmp_path):
    """common.js showPeriod: without a key the section asks for one; a key sent and refused shows the API's
    message as an error (not "Enter the API key", which read as if none had been typed)."""
    from apps.industrial.api import create_app
    from core.serving.bench import LoopbackServer

    settings = tiny_settings(tiny_bundles, tmp_path).model_copy(update={"api_keys": {"line-key": "line"}})
    with LoopbackServer(create_app(settings)) as server, open_page(server.url + "/ui/") as (page, problems):
        loaded = lambda t, c: t not in ("", "Loading…")  # noqa: E731
        assert wait_status(page, "#summary-status", loaded, 30) == "Enter the API key to see the line's numbers."
        assert "error" not in page.locator("#summary-status").get_attribute("class")
        page.fill("#api-key", "not-a-key")
        page.dispatch_event("#api-key", "change")
        status = wait_status(page, "#summary-status", lambda t, c: loaded(t, c) and "Enter" not in t, 30)
        assert status == "the API key is not recognised (401 unauthorized)"
        assert "error" in page.locator("#summary-status").get_attribute("class") and page.locator("#summary-body").is_hidden()
        page.fill("#api-key", "line-key")
        page.dispatch_event("#api-key", "change")
        assert wait_status(page, "#summary-status", lambda t, c: t.startswith("No inspections"), 30)
        problems[:] = [p for p in problems if "401" not in p]  # the browser logs the refused requests: expected
        assert not problems, problems
