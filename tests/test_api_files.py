"""Files the web app serves whole and offline: the live image while record replaces it, and the API
reference page in Chromium with no network beyond the appliance."""

from __future__ import annotations

import shutil
import threading
import urllib.request
from pathlib import Path

import numpy as np
from playwright.sync_api import sync_playwright

from linewatch.store.images import save_live
from tests.api_harness import served_api

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def test_live_image_is_whole_while_record_replaces_it(tmp_path: Path) -> None:
    with served_api(tmp_path) as (url, _):
        stop = threading.Event()
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 255, (h, h), np.uint8) for h in (64, 256, 128, 512)]  # sizes that differ a lot

        def replace() -> None:
            i = 0
            while not stop.is_set():
                save_live(tmp_path, "cam0", frames[i % len(frames)])
                i += 1

        writer = threading.Thread(target=replace)
        writer.start()
        try:
            for _ in range(300):
                with urllib.request.urlopen(url + "/api/cameras/cam0/live.jpg", timeout=10) as r:
                    body = r.read()
                    assert r.status == 200 and int(r.headers["content-length"]) == len(body)
                assert body[:2] == b"\xff\xd8" and body[-2:] == b"\xff\xd9"  # one whole JPEG
        finally:
            stop.set()
            writer.join()


def test_api_reference_page_works_offline(tmp_path: Path) -> None:
    with served_api(tmp_path) as (url, _), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            outside: list[str] = []
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url)
                       else (outside.append(route.request.url), route.abort()))
            page.goto(url + "/api/docs")
            page.wait_for_selector(".swagger-ui .opblock", timeout=15_000)  # operations rendered from the schema
            assert page.locator(".opblock").count() > 10
            assert page.locator(".swagger-ui .title").first.text_content().startswith("linewatch")
            assert outside == [], "the API reference must not need the internet"
        finally:
            browser.close()
