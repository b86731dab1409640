"""The labelling page in a real headless browser (Debian's chromium driven by Playwright).

Needs ``apt-get install -y chromium`` (the binary at /usr/bin/chromium) and ``pip install
playwright`` (the Python package only: ``playwright install`` is *not* needed, the system
chromium is used). If either is missing the test fails and says what to install.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.rlhf.data import FeedbackWriter, read_feedback
from agents.rlhf.generate import Generation, build_items
from agents.rlhf.label_server import LabelServer, LabelSession

CHROMIUM = os.environ.get("TEXTGEN_RL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_HINT = "install them with: apt-get install -y chromium && pip install playwright (no `playwright install` needed)"

GENERATIONS = [
    Generation(0, "The food was", (" delicious.", " cold.")),
    Generation(1, "My neighbour", (" waved.", " shouted.")),
    Generation(2, "Today <b>bold</b>", (" sun.", " <i>rain</i>.")),
    Generation(3, "Tomorrow", (" maybe.", " never.")),
]
RANK_GENERATIONS = [Generation(0, "Rank these", (" first", " second", " third")), Generation(1, "And these", (" x", " y", " z"))]


def _require_browser():
    missing = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
        missing.append("the Python package 'playwright'")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and not shutil.which(CHROMIUM):
        missing.append(f"chromium at {CHROMIUM}")
    if missing:
        pytest.fail(f"browser test needs {' and '.join(missing)}; {INSTALL_HINT}", pytrace=False)
    return sync_playwright


@pytest.fixture(params=["compare"])
def page_and_file(request, tmp_path: Path) -> Iterator[tuple[object, str, Path]]:
    """A headless page, the server URL and the feedback file, for the mode in ``request.param``."""
    sync_playwright = _require_browser()
    mode = request.param
    out = tmp_path / "fb.jsonl"
    writer = FeedbackWriter(out)
    generations = RANK_GENERATIONS if mode == "rank" else GENERATIONS
    server = LabelServer(LabelSession(build_items(generations, mode), writer, mode=mode), port=0)
    server.start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page()
                page.set_default_timeout(15_000)
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                yield page, server.url, out
                assert errors == [], errors
            finally:
                browser.close()
    finally:
        server.stop()
        writer.close()


def wait_for_item(page, item_id: str, done: int) -> None:
    page.wait_for_function(
        "([id, done]) => document.body.dataset.itemId === id && document.body.dataset.done === String(done)"
        " && document.body.dataset.busy !== '1'",
        arg=[item_id, done],
    )


def test_label_page_click_keyboard_undo_reload(page_and_file) -> None:
    page, url, out = page_and_file
    page.goto(url)
    wait_for_item(page, "compare-0-0-1", 0)
    assert page.get_by_test_id("progress").text_content() == "0 / 4 done"
    assert page.get_by_test_id("prompt").text_content() == "The food was"
    cards = page.locator("#completions .card")
    assert cards.count() == 2 and cards.nth(1).locator("pre").text_content() == " cold."
    assert not page.locator("#rating").is_visible() and not page.get_by_test_id("clear").is_visible()
    assert not page.get_by_test_id("done").is_visible()

    # 1) click the second completion
    cards.nth(1).click()
    wait_for_item(page, "compare-1-0-1", 1)
    assert page.get_by_test_id("progress").text_content() == "1 / 4 done"
    # 2) keyboard: "1" picks the first completion
    page.keyboard.press("1")
    wait_for_item(page, "compare-2-0-1", 2)
    # model text is shown as text, never interpreted as HTML
    assert page.get_by_test_id("prompt").text_content() == "Today <b>bold</b>"
    assert page.locator("#prompt b").count() == 0 and page.locator("#completions i").count() == 0
    # 3) keyboard: "2" picks the second completion
    page.keyboard.press("2")
    wait_for_item(page, "compare-3-0-1", 3)
    # undo the third answer with the "u" key: its item comes back
    page.keyboard.press("u")
    wait_for_item(page, "compare-2-0-1", 2)
    assert "undid compare-2-0-1" in page.get_by_test_id("message").text_content()

    # reload: the server state survives, the page shows the same item and progress
    page.reload()
    wait_for_item(page, "compare-2-0-1", 2)
    assert page.get_by_test_id("progress").text_content() == "2 / 4 done"

    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r.get("id") or r.get("undo") for r in records] == ["compare-0-0-1", "compare-1-0-1", "compare-2-0-1", "compare-2-0-1"]
    assert "undo" in records[-1]
    data = read_feedback(out)
    assert [(p.id, p.chosen, p.rejected) for p in data.preferences] == [
        ("compare-0-0-1", " cold.", " delicious."),
        ("compare-1-0-1", " waved.", " shouted."),
    ]

    # skip button, then finish with the arrow key: the page says it is done
    page.get_by_test_id("skip").click()
    wait_for_item(page, "compare-3-0-1", 3)
    page.keyboard.press("ArrowRight")
    page.get_by_test_id("done").wait_for(state="visible")
    assert "All 4 items are done (3 answered, 1 skipped)" in page.locator("#done-text").text_content()
    data = read_feedback(out)
    assert data.skipped == ["compare-2-0-1"]
    assert [p.id for p in data.preferences] == ["compare-0-0-1", "compare-1-0-1", "compare-3-0-1"]
    assert data.preferences[-1].chosen == " never."


@pytest.mark.parametrize("page_and_file", ["rate"], indirect=True)
def test_rate_page_buttons_and_keys(page_and_file) -> None:
    page, url, out = page_and_file
    page.goto(url)
    wait_for_item(page, "rate-0-0", 0)
    assert page.locator("#rating").is_visible()
    page.get_by_test_id("score-4").click()
    wait_for_item(page, "rate-0-1", 1)
    page.keyboard.press("2")
    wait_for_item(page, "rate-1-0", 2)
    page.keyboard.press("9")  # outside the 1-5 scale: ignored
    page.keyboard.press("s")
    wait_for_item(page, "rate-1-1", 3)
    data = read_feedback(out)
    assert [(r.completion, r.score) for r in data.ratings] == [(" delicious.", 4), (" cold.", 2)]
    assert data.skipped == ["rate-1-0"]


@pytest.mark.parametrize("page_and_file", ["rank"], indirect=True)
def test_rank_page_click_order_and_clear(page_and_file) -> None:
    page, url, out = page_and_file
    page.goto(url)
    wait_for_item(page, "rank-0", 0)
    assert page.get_by_test_id("clear").is_visible() and not page.locator("#rating").is_visible()
    cards = page.locator("#completions .card")
    # keys: 3 then 2 (third best-first, then second); the remaining one is implied last
    page.keyboard.press("3")
    assert cards.nth(2).locator(".rank").text_content() == "#1"
    page.keyboard.press("2")
    wait_for_item(page, "rank-1", 1)
    # clicks, with a change of mind: click, clear, then click two
    cards.nth(0).click()
    page.get_by_test_id("clear").click()
    assert page.locator("#completions .rank").count() == 0
    cards.nth(1).click()
    cards.nth(0).click()
    page.get_by_test_id("done").wait_for(state="visible")
    rankings = read_feedback(out).rankings
    assert [r.completions for r in rankings] == [(" third", " second", " first"), (" y", " x", " z")]
