"""The operator's screen in a real browser (Debian chromium driven by Playwright) on a running line."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from linewatch.auth.accounts import add_user
from linewatch.auth.db import audit_rows
from linewatch.config import SecurityConfig, load_config
from tests.conftest import count_rows, db_rows, wait_for

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@contextmanager
def hmi_page(url: str) -> Iterator[Page]:
    """The HMI at `url` in Chromium (1280x800), loaded and ready; the browser is closed afterwards."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url + "/")
            page.wait_for_function("document.body.dataset.ready === '1'", timeout=15_000)
            yield page
        finally:
            browser.close()


def test_hmi_shows_live_verdicts_counts_and_image(line, tmp_path: Path) -> None:
    ln = line(cameras=[{"name": "cam0", "fps": 30}], record={"live_view_hz": 10}).start()
    wait_for(lambda: count_rows(ln.data_dir) >= 10, 30, "the first verdicts")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(ln.url + "/")
            page.wait_for_function("document.body.dataset.ready === '1'", timeout=15_000)
            page.wait_for_function("document.getElementById('conn-state').textContent === 'live'", timeout=15_000)
            assert page.locator("#line-name").text_content() == "line1"
            assert page.locator("#model-name").text_content() == "reference"
            first = int(page.locator("#count-total").text_content() or 0)
            # Counters move with the SSE stream, without reloading the page.
            page.wait_for_function(f"Number(document.getElementById('count-total').textContent) >= {first + 20}",
                                   timeout=15_000)
            assert page.locator("#last-final").text_content() in ("PASS", "FAIL", "REVIEW")
            assert page.locator("#last-part").text_content().startswith("cam0-")
            assert page.locator("#recent > *").count() == 10
            page.wait_for_function("document.getElementById('live-image').naturalWidth === 256", timeout=15_000)
            # One JS turn reads all counters, so no event lands between them.
            total, *counts = page.evaluate(
                "['total', 'pass', 'fail', 'review']"
                ".map(k => Number(document.getElementById('count-' + k).textContent))"
            )
            assert sum(counts) == total > 0
            assert page.locator("#alarm-banner").is_hidden()
            page.screenshot(path=str(tmp_path / "hmi.png"))
            assert all(u.startswith(ln.url) for u in requests), "the HMI must work offline (no CDN)"
        finally:
            browser.close()
    ln.stop()


IDLE_S = 6  # the line's idle lock in the sign-in test: short, so the lock is seen within the test


def test_operator_signs_in_with_a_pin_sets_the_lot_triggers_and_is_locked_out_when_idle(line) -> None:
    ln = line(cameras=[{"name": "cam0", "trigger": "software"}], security={"idle_lock_s": IDLE_S}).start()
    add_user(ln.data_dir, "ann", "operator", "2580", ln_security(ln))
    with hmi_page(ln.url) as page:
        page.click("#tab-control")
        page.wait_for_function("document.getElementById('lot-input').disabled", timeout=15_000)  # nobody signed in
        page.click("#signin-btn")
        page.fill("#signin-user", "ann")
        for digit in "2580":
            page.click(f"#signin-pad button[data-key='{digit}']")
        page.click("#signin-ok")
        page.wait_for_function("document.body.dataset.user === 'ann'", timeout=15_000)
        assert page.locator("#signed-user").text_content() == "ann (operator)"
        assert page.locator("#trigger-btn").is_visible() and page.locator("#lot-input").is_enabled()
        page.fill("#lot-input", "LOT-42")
        page.click("#lot-set")
        page.wait_for_function("document.getElementById('lot').textContent === 'LOT-42'", timeout=15_000)
        page.click("#trigger-btn")
        page.wait_for_function("document.getElementById('control-msg').textContent.startsWith('triggered cam0-')",
                               timeout=15_000)
        part = page.locator("#control-msg").text_content().removeprefix("triggered ")
        rows = wait_for(lambda: db_rows(ln.data_dir, "SELECT part_id, lot, decided_by FROM inspections "
                                                     "WHERE part_id = ?", (part,)), 15, "the triggered part")
        assert rows[0]["lot"] == "LOT-42" and rows[0]["decided_by"] != "not_inspected"
        page.fill("#lot-input", " ")
        page.click("#lot-set")  # the screen answers a blank lot itself, in words
        assert page.locator("#control-msg").text_content() == "Enter a lot id first."
        page.fill("#lot-input", "LOT\u0007")
        page.click("#lot-set")  # the server refuses a control character (422, audited), in its own words
        page.wait_for_function("document.getElementById('control-msg').textContent.startsWith('lot not set')",
                               timeout=15_000)
        assert page.locator("#lot").text_content() == "LOT-42"
        # nobody touches the screen: the controls lock and the server has ended the session
        page.wait_for_function("document.getElementById('lot-input').disabled", timeout=(IDLE_S + 10) * 1000)
        assert page.locator("#trigger-btn").is_disabled() and page.evaluate("document.body.dataset.user") == ""
        status = page.evaluate("fetch('/api/lot', {method: 'PUT', headers: {'Content-Type': 'application/json'}, "
                               "body: JSON.stringify({lot: 'LOT-43'})}).then(r => r.status)")
        assert status == 401
    actions = db_rows(ln.data_dir, "SELECT action, actor FROM operator_actions")
    assert [(a["action"], a["actor"]) for a in actions] == [("set_lot", "ann")]
    rows = list(reversed(audit_rows(ln.data_dir)))
    assert [r["action"] for r in rows[:2]] == ["user_add", "line_start"]  # the first admin, then what started
    assert rows[1]["detail"]["model"] == "reference" and len(rows[1]["detail"]["config_sha256"]) == 64
    audit = [(a["actor"], a["action"], a["outcome"]) for a in rows]
    assert audit[-6:-2] == [("ann", "sign_in", "ok"), ("ann", "PUT /api/lot", "ok"),
                            ("ann", "POST /api/cameras/{camera}/trigger", "ok"), ("ann", "PUT /api/lot", "refused 422")]
    assert audit[-2][:2] in (("ann", "sign_out"), ("ann", "session_end"))  # the screen's idle timer or the server's
    assert audit[-1] == ("anonymous", "PUT /api/lot", "refused 401")
    ln.stop()


def ln_security(ln) -> SecurityConfig:
    return load_config(ln.config).security


def test_a_detection_models_boxes_are_listed_on_screen_and_in_the_pdf(line, tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    from tests.test_adapters import yolo_det_model

    folder = tmp_path / "model"
    folder.mkdir()
    ln = line(cameras=[{"name": "cam0", "fps": 20, "max_frames": 60}], model={"path": str(yolo_det_model(folder))})
    ln.start()
    wait_for(lambda: count_rows(ln.data_dir) >= 60, 60, "60 rows")
    with hmi_page(ln.url) as page:
        found = page.locator("#last-reasons li.detection")
        found.first.wait_for(timeout=15_000)  # the latest part's boxes: class and score
        assert all(t.split()[0] in ("scratch", "label") for t in found.all_text_contents())
    ln.stop()
    pdf = tmp_path / "r.pdf"
    subprocess.run([sys.executable, "-m", "linewatch", "report", "--data-dir", str(ln.data_dir), "--format", "pdf",
                    "--from", "2000-01-01", "--to", "2100-01-01", "--out", str(pdf)], check=True, timeout=120)
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    kept = db_rows(ln.data_dir, "SELECT detections FROM inspections WHERE final != 'PASS' AND image IS NOT NULL")
    assert kept and re.search(r"(scratch|label) 0\.\d\d", text)  # the gallery lists each part's boxes
