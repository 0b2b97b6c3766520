"""End to end in a real headless browser: Debian's chromium driven by playwright (no browser download).

Types a shot, waits for the streamed video to play, queues a second shot while the first plays,
and saves results/demo/browser.png. Prints the time from pressing Enter to the first frame
played in the browser.
"""

import shutil
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (make system-deps installs it)"),
]
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")

from test_demo import model_spec, server  # noqa: E402,F401  (the localhost server fixture on a tiny random model)

RESULTS = Path(__file__).resolve().parents[1] / "results" / "demo"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip

VIDEO_STATE = """() => { const v = document.querySelector('#stream video');
  return v ? {time: v.currentTime, ready: v.readyState, width: v.videoWidth} : null }"""
THUMBS = "() => document.querySelectorAll('#storyboard img').length"


def wait_for(page, js, predicate, timeout=60.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = page.evaluate(js)
        if predicate(value):
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting on {js!r} (last value {value!r})")


@pytest.fixture
def page(server):  # noqa: F811
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(server.url)
            page.locator("#prompt textarea, #prompt input").first.wait_for(timeout=60_000)
            yield page
        finally:
            browser.close()


def screenshot(page, name):
    RESULTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(RESULTS / name), scale="css")


def test_the_model_card_its_words_and_the_unknown_word_hint(page):
    card = page.locator("#model-card").inner_text()
    assert "Model:" in card and "arXiv 2603.25746" in card
    box = page.locator("#prompt textarea, #prompt input").first
    for word in ("red", "triangle", "spins"):  # one click inserts a word
        page.locator(f'#chips button.chip[data-word="{word}"]').click()
    assert box.input_value() == "red triangle spins"
    HINT = "() => document.querySelector('#vocab-hint .md').innerText"
    wait_for(page, HINT, lambda t: t.strip() == "", timeout=20)  # every word known: no hint
    box.press("End")
    box.type(" with a golden retriever at sunset")  # typed: flagged before Enter
    hint = wait_for(page, HINT, lambda t: "retriever" in t, timeout=20)
    assert "retriever, sunset" in hint and "golden" not in hint and "with" in hint
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "model_card.png")


def test_type_a_shot_watch_it_stream_queue_the_next(server):  # noqa: F811
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(server.url)
            box = page.locator("#prompt textarea, #prompt input").first
            box.wait_for(timeout=60_000)
            box.fill('a red striped star <img src=x onerror="window.__pwned=1"> walks left in the snow')
            t_enter = time.perf_counter()
            box.press("Enter")
            wait_for(page, VIDEO_STATE, lambda v: v is not None and v["time"] > 0)
            first_frame = time.perf_counter() - t_enter
            stats = page.locator("#stats").inner_text()
            print(f"\nEnter to first frame playing in chromium: {first_frame:.2f} s (server stats: {stats})")
            t_played = page.evaluate(VIDEO_STATE)["time"]

            # the next shot, typed while the first one plays
            box.fill("close-up of the same character spinning on the beach")
            box.press("Enter")
            wait_for(page, THUMBS, lambda n: n >= 2, timeout=90)
            state = wait_for(page, VIDEO_STATE, lambda v: v["time"] > t_played)  # the video kept playing
            assert state["width"] == server.width  # frames of the model's size were decoded
            assert page.evaluate("() => window.__pwned") is None  # the prompt's HTML never ran
            assert "onerror" in page.locator("#storyboard").inner_text() or page.locator("#storyboard img").count() == 2
            RESULTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(RESULTS / "browser.png"), full_page=True)
        finally:
            browser.close()
