"""The operator's screens in Debian's chromium (Playwright) on a real running line: every screen at
1280x800, 1920x1080 and portrait 800x1280 without overflow or overlap (screenshots kept), axe-core with no
serious or critical violation, counts on screen equal to the database, the verdict tile's pace, a review
decision and an alarm acknowledgement that reach the store, and a blank lot answered in words."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from linewatch.auth.accounts import add_user
from linewatch.config import load_config
from tests.conftest import Line, count_rows, db_rows, wait_for

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
SIZES = {"1280x800": (1280, 800), "1920x1080": (1920, 1080), "portrait-800x1280": (800, 1280)}
SCREENS = ("run", "rejects", "review", "alarms", "control")
PARTS = 240
OPERATOR, PIN = "ann", "2580"
ARTIFACTS = Path(os.environ.get("LINEWATCH_TEST_ARTIFACTS", Path(__file__).parent.parent / "var" / "test-artifacts"))

# Every visible box: none overflows (content wider than its box, unless it scrolls or ellipsises on purpose),
# and no two of the blocks an operator reads or taps overlap unless one holds the other.
LAYOUT_JS = """() => {
  const visible = (e) => { const r = e.getBoundingClientRect(); const s = getComputedStyle(e);
    return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none'; };
  const name = (e) => e.id ? '#' + e.id
    : e.tagName.toLowerCase() + (e.className ? '.' + String(e.className).split(' ')[0] : '');
  const problems = [];
  if (document.documentElement.scrollWidth > window.innerWidth + 1) problems.push('the page scrolls sideways');
  for (const e of document.body.querySelectorAll('*')) {
    if (!visible(e)) continue;
    const s = getComputedStyle(e);
    if (s.display === 'inline' || ['auto', 'scroll'].includes(s.overflowX) || s.textOverflow === 'ellipsis') continue;
    if (e.clientWidth <= 1) continue;  // visually hidden text for screen readers (.sr)
    if (e.scrollWidth > e.clientWidth + 1) problems.push(`${name(e)} overflows (${e.scrollWidth} > ${e.clientWidth})`);
  }
  const blocks = [...document.querySelectorAll('button, input, select, a, img, .cnt, .tile, h2, h3, table, .state, '
    + '.conn, .badge, .msg, figcaption, .alarm-text, .period span')].filter(visible);
  for (let i = 0; i < blocks.length; i++) for (let j = i + 1; j < blocks.length; j++) {
    const a = blocks[i], b = blocks[j];
    if (a.contains(b) || b.contains(a)) continue;
    const p = a.getBoundingClientRect(), q = b.getBoundingClientRect();
    if (p.left < q.right - 1 && q.left < p.right - 1 && p.top < q.bottom - 1 && q.top < p.bottom - 1)
      problems.push(`${name(a)} overlaps ${name(b)}`);
  }
  return problems;
}"""


@pytest.fixture(scope="module")
def shift_line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    """A line that inspected PARTS parts and stopped acquiring: PASS, FAIL (model), REVIEW (the statistics rule
    with a tight band) and a FAIL-streak alarm, so every screen has something to show."""
    ln = Line(tmp_path_factory.mktemp("hmi"), {
        "cameras": [{"name": "cam0", "fps": 30, "max_frames": PARTS}],
        "failsafe": {"statistics": {"reference_mean": [84.7, 3.9], "max_z": 1.0},
                     "streak": {"consecutive_fails": 2}},
    }).start()
    add_user(ln.data_dir, OPERATOR, "operator", PIN, load_config(ln.config).security)
    try:
        yield ln
    finally:
        ln.kill_tree()


@contextmanager
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def _open(b: Browser, url: str, size: tuple[int, int] = (1280, 800), screen: str = "run",
          signed_in: bool = True) -> Page:
    """The HMI on `screen`, ready; signed in as the operator (through the page's own sign-in request)."""
    page = b.new_page(viewport={"width": size[0], "height": size[1]})
    page.goto(f"{url}/#{screen}")
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=20_000)
    if signed_in:
        status = page.evaluate(f"""fetch('/api/session', {{method: 'POST',
            headers: {{'Content-Type': 'application/json'}},
            body: JSON.stringify({{user: '{OPERATOR}', secret: '{PIN}'}})}}).then(r => r.status)""")
        assert status == 200
        page.evaluate("window.lwSignin.refresh()")
        page.wait_for_function(f"document.body.dataset.user === '{OPERATOR}'", timeout=10_000)
    return page


def test_the_verdict_tile_keeps_a_pace_an_operator_can_read(shift_line: Line) -> None:
    with browser() as b:
        page = _open(b, shift_line.url)
        page.evaluate("""() => { window.tileLog = []; const final = document.getElementById('last-final');
          new MutationObserver(() => window.tileLog.push([performance.now(), final.textContent]))
            .observe(final, {childList: true, characterData: true, subtree: true}); }""")
        page.wait_for_timeout(4000)
        log: list[list[Any]] = page.evaluate("window.tileLog")
    assert len(log) >= 3, "the tile should follow the stream"
    for (t0, final), (t1, nxt) in itertools.pairwise(log):
        assert t1 - t0 >= 200, "the tile changes at most about 4 times a second"
        if final in ("FAIL", "REVIEW") and nxt == "PASS":
            assert t1 - t0 >= 1000, "a reject stays on the tile at least a second unless a newer reject replaces it"


def test_every_screen_at_three_sizes_without_overflow_or_overlap(shift_line: Line) -> None:
    wait_for(lambda: count_rows(shift_line.data_dir) >= PARTS, 120, f"{PARTS} parts")
    out = ARTIFACTS / "hmi"
    out.mkdir(parents=True, exist_ok=True)
    problems: dict[str, list[str]] = {}
    with browser() as b:
        for size_name, size in SIZES.items():
            page = _open(b, shift_line.url, size)
            for screen in SCREENS:
                page.evaluate(f"location.hash = '#{screen}'")
                page.wait_for_timeout(700)
                if screen == "rejects":
                    page.locator(".thumb").first.click()
                    page.locator("#reject-detail table").first.wait_for(timeout=10_000)
                if screen == "review":
                    page.locator("#review-defect").click()
                    page.locator("#review-types button").first.wait_for(timeout=10_000)
                page.screenshot(path=str(out / f"{screen}-{size_name}.png"), full_page=True)
                found = page.evaluate(LAYOUT_JS)
                if found:
                    problems[f"{screen} at {size_name}"] = found
            page.close()
    assert not problems, problems


def test_every_screen_passes_axe_without_serious_violations(shift_line: Line) -> None:
    from axe_playwright_python.sync_playwright import Axe

    axe = Axe()
    found: dict[str, list[str]] = {}
    with browser() as b:
        page = _open(b, shift_line.url)
        for screen in SCREENS:
            page.evaluate(f"location.hash = '#{screen}'")
            page.wait_for_timeout(700)
            result = axe.run(page)
            bad = [f"{v['id']}: {v['help']} ({len(v['nodes'])})" for v in result.response["violations"]
                   if v.get("impact") in ("serious", "critical")]
            if bad:
                found[screen] = bad
    assert not found, found


def _screen_counts(page: Page) -> dict[str, int]:
    return dict(zip(("total", "PASS", "FAIL", "REVIEW"), page.evaluate(
        "['total', 'pass', 'fail', 'review'].map(k => Number(document.getElementById('count-' + k).textContent))"),
        strict=True))


def test_counts_on_screen_equal_the_database(shift_line: Line) -> None:
    wait_for(lambda: count_rows(shift_line.data_dir) >= PARTS, 120, f"{PARTS} parts")
    rows = db_rows(shift_line.data_dir, "SELECT final, count(*) AS n FROM inspections GROUP BY final")
    db = {r["final"]: r["n"] for r in rows}
    expect = {"total": sum(db.values()), **{f: db.get(f, 0) for f in ("PASS", "FAIL", "REVIEW")}}
    assert expect["total"] == PARTS and expect["REVIEW"] > 0 and expect["FAIL"] > 0
    with browser() as b:
        page = _open(b, shift_line.url)
        for period in ("shift", "all"):  # the line ran within this shift: both count every part
            page.select_option("#period-select", period)
            page.wait_for_function(f"Number(document.getElementById('count-total').textContent) === {PARTS}",
                                   timeout=15_000)
            assert _screen_counts(page) == expect, period
        label = page.locator("#period-label").text_content() or ""
        assert label.startswith("all time")


def test_a_review_decision_from_the_screen_is_stored(shift_line: Line) -> None:
    wait_for(lambda: count_rows(shift_line.data_dir) >= PARTS, 120, f"{PARTS} parts")
    waiting = db_rows(shift_line.data_dir, "SELECT min(id) AS id FROM inspections i WHERE final = 'REVIEW' AND NOT "
                                           "EXISTS (SELECT 1 FROM review_decisions r WHERE r.inspection_id = i.id)")
    first = waiting[0]["id"]
    with browser() as b:
        page = _open(b, shift_line.url, screen="review")
        page.locator("#review-good").wait_for(timeout=10_000)
        before = int(page.locator("#review-waiting").text_content() or 0)
        page.click("#review-good")
        wait_for(lambda: db_rows(shift_line.data_dir, "SELECT 1 FROM review_decisions WHERE inspection_id = ?",
                                 (first,)), 10, "the decision in the store")
        page.wait_for_function(f"Number(document.getElementById('review-waiting').textContent) === {before - 1}",
                               timeout=10_000)
    decision = db_rows(shift_line.data_dir, "SELECT decision, reviewer FROM review_decisions WHERE inspection_id = ?",
                       (first,))[0]
    assert decision["decision"] == "PASS" and decision["reviewer"] == OPERATOR  # the signed-in user


def test_an_alarm_acknowledged_from_the_screen_is_audited(shift_line: Line) -> None:
    wait_for(lambda: db_rows(shift_line.data_dir, "SELECT 1 FROM alarms WHERE acknowledged_by IS NULL"), 60,
             "a streak alarm")
    with browser() as b:
        page = _open(b, shift_line.url, screen="alarms")
        ack = page.locator("#alarm-list button.ack").first
        ack.wait_for(timeout=10_000)
        alarm_id = int(ack.get_attribute("data-id") or 0)
        ack.click()
        wait_for(lambda: db_rows(shift_line.data_dir, "SELECT acknowledged_by FROM alarms WHERE id = ? AND "
                                                      "acknowledged_by IS NOT NULL", (alarm_id,)), 10, "the ack")
        page.wait_for_function(f"!document.querySelector('#alarm-list button.ack[data-id=\"{alarm_id}\"]')",
                               timeout=10_000)
    audit = db_rows(shift_line.data_dir, "SELECT actor, detail FROM operator_actions WHERE action = 'ack_alarm'")
    assert [r["actor"] for r in audit if f'"alarm_id": {alarm_id}' in r["detail"]] == [OPERATOR]


def test_a_blank_lot_is_answered_in_words(shift_line: Line) -> None:
    with browser() as b:
        page = _open(b, shift_line.url, screen="control")
        page.fill("#lot-input", "   ")
        page.click("#lot-set")
        page.wait_for_function("document.getElementById('control-msg').textContent !== ''", timeout=5_000)
        msg = page.locator("#control-msg").text_content() or ""
        assert "Enter a lot id" in msg and "422" not in msg
        page.fill("#lot-input", "LOT\u0007")  # the server's lot rule, answered with its own words
        page.click("#lot-set")
        page.wait_for_function("document.getElementById('control-msg').textContent.startsWith('lot not set')",
                               timeout=10_000)
        msg = page.locator("#control-msg").text_content() or ""
        assert "control characters" in msg and "422" not in msg and "Unprocessable" not in msg


def test_a_fail_part_appears_in_rejects_with_its_heatmap(line, tmp_path: Path) -> None:
    from tests.test_adapters import anomalib_model

    folder = tmp_path / "model"
    folder.mkdir()
    ln = line(cameras=[{"name": "cam0", "fps": 20, "max_frames": 30}],
              model={"path": str(anomalib_model(folder))}).start()
    wait_for(lambda: count_rows(ln.data_dir) >= 30, 60, "30 parts")
    kept = db_rows(ln.data_dir, "SELECT max(id) AS id FROM inspections WHERE final = 'FAIL' AND image IS NOT NULL")
    newest = kept[0]["id"]
    assert newest is not None, "the darkness model fails the emulator's parts"
    with browser() as b:
        page = _open(b, ln.url, screen="rejects", signed_in=False)  # a read-only view
        thumb = page.locator(f".thumb[data-id='{newest}']")
        thumb.wait_for(timeout=10_000)
        thumb.click()
        shown = page.locator("#reject-detail figure img")
        shown.wait_for(timeout=10_000)
        page.wait_for_function("document.querySelector('#reject-detail figure img').naturalWidth > 0", timeout=10_000)
        assert (shown.get_attribute("src") or "").endswith(f"/api/inspections/{newest}/heatmap.png")
        text = page.locator("#reject-detail").text_content() or ""
        assert "Fail-safe decision log" in text and "FAIL" in text


def _since(data_dir: Path, action: str) -> int:
    """The id of the newest inspection when the latest `action` was committed (parts after it came after it)."""
    t = db_rows(data_dir, "SELECT max(t_ns) AS t FROM operator_actions WHERE action = ?", (action,))[0]["t"]
    return int(db_rows(data_dir, "SELECT coalesce(max(id), 0) AS id FROM inspections WHERE t_recorded_ns <= ?",
                       (t,))[0]["id"])


def test_pause_resume_and_a_recipe_change_from_the_control_screen(line) -> None:
    recipes = [{"name": "A", "job": 1}, {"name": "B", "job": 2, "failsafe": {"review_band": [0.3, 0.7]}}]
    ln = line(cameras=[{"name": "cam0", "fps": 20}], recipe="A", recipes=recipes).start()
    add_user(ln.data_dir, OPERATOR, "operator", PIN, load_config(ln.config).security)
    wait_for(lambda: count_rows(ln.data_dir) >= 20, 60, "the first parts")
    with browser() as b:
        page = _open(b, ln.url, screen="control")
        page.click("#pause-btn")
        page.wait_for_function("document.getElementById('control-msg').textContent.startsWith('inspection paused')",
                               timeout=15_000)
        paused_at = _since(ln.data_dir, "set_offline")
        wait_for(lambda: count_rows(ln.data_dir) >= paused_at + 20, 30, "parts while paused")
        page.wait_for_function("document.getElementById('line-state-text').textContent === 'paused'", timeout=15_000)
        page.click("#resume-btn")
        page.wait_for_function("document.getElementById('control-msg').textContent === 'inspecting again'",
                               timeout=15_000)
        resumed_at = _since(ln.data_dir, "set_offline")
        wait_for(lambda: count_rows(ln.data_dir) >= resumed_at + 20, 30, "parts after resuming")
        page.select_option("#recipe-select", "B")
        assert "review band 0.3-0.7" in (page.locator("#recipe-details").text_content() or "")  # shown first
        page.click("#recipe-set")
        page.wait_for_function("document.getElementById('control-msg').textContent.startsWith('recipe B')",
                               timeout=15_000)
        switched_at = _since(ln.data_dir, "set_recipe")
        wait_for(lambda: count_rows(ln.data_dir) >= switched_at + 20, 30, "parts after the switch")
    rows = db_rows(ln.data_dir, "SELECT id, seq, decided_by, reasons, recipe, ruleset_hash FROM inspections "
                                "ORDER BY id")
    # by seq, not commit order: at the pause a part still in the worker commits after the next, paused one
    assert sorted(r["seq"] for r in rows) == list(range(len(rows))), "every part of the stream has its row"
    during = [r for r in rows if paused_at + 5 < r["id"] <= resumed_at]  # a few in flight at the switch
    assert during and all((r["decided_by"], r["reasons"]) == ("not_inspected", '["paused"]') for r in during)
    after = [r for r in rows if r["id"] > switched_at + 5]
    assert after and all(r["recipe"] == "B" and r["decided_by"] != "not_inspected" for r in after)
    before = [r for r in rows if resumed_at + 5 < r["id"] <= switched_at]
    assert before and all(r["recipe"] == "A" and r["decided_by"] != "not_inspected" for r in before)  # resumed
    assert {r["ruleset_hash"] for r in before}.isdisjoint({r["ruleset_hash"] for r in after})  # B's own rules
    audit = db_rows(ln.data_dir, "SELECT actor, action FROM operator_actions WHERE action IN "
                                 "('set_offline', 'set_recipe') ORDER BY id")
    assert [(a["actor"], a["action"]) for a in audit] == [(OPERATOR, "set_offline"), (OPERATOR, "set_offline"),
                                                          (OPERATOR, "set_recipe")]
