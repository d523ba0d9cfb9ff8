"""The operator's screen in a real browser (Debian chromium driven by Playwright) on a running line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import count_rows, wait_for

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


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
            assert page.locator("#recent > *").count() == 20
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
