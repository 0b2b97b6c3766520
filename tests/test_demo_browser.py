"""End to end in a real headless browser: Debian's chromium driven by playwright (no browser download).

Types a shot, waits for the streamed video to play, queues a second shot while the first plays,
and saves results/demo/browser.png. Prints the time from pressing Enter to the first frame
played in the browser. Then each state of issue 31's page, with a screenshot of each in
results/demo/: the model card, typing during submit, stop with a queue, new story mid-stream,
prompts typed in quick succession, the shot playing beside the shot generating, and "buffering"
when generation is slower than real time.
"""

import contextlib
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


@contextlib.contextmanager
def open_page(server, width=1100, height=900):  # noqa: F811
    """The app in a fresh headless Chromium, once its prompt box is there."""
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(server.url)
            page.locator("#prompt textarea, #prompt input").first.wait_for(timeout=60_000)
            yield page
        finally:
            browser.close()


@pytest.fixture
def page(server):  # noqa: F811
    with open_page(server) as page:
        yield page


def screenshot(page, name, full_page=False):
    """results/demo/<name>, kept small for the repository: a 64-colour palette PNG."""
    from io import BytesIO

    from PIL import Image

    RESULTS.mkdir(parents=True, exist_ok=True)
    png = page.screenshot(scale="css", full_page=full_page)
    Image.open(BytesIO(png)).convert("RGB").quantize(colors=64).save(RESULTS / name, optimize=True)


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
    hint = wait_for(page, HINT, lambda t: "sunset" in t, timeout=20)  # (the hint of the whole text, typed to its end)
    assert "retriever, sunset" in hint and "golden" not in hint and "with" in hint
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "model_card.png")


def test_type_a_shot_watch_it_stream_queue_the_next(server):  # noqa: F811
    with open_page(server, 1280, 860) as page:
        box = page.locator("#prompt textarea, #prompt input").first
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
        screenshot(page, "browser.png", full_page=True)


BOX = "#prompt textarea, #prompt input"


@contextlib.contextmanager
def slot_taken(server):  # noqa: F811
    """Another user generates: this page's shots wait in line (deterministically, however fast the model)."""
    blocker, deadline = object(), time.monotonic() + 60
    while server.app.slots.join(blocker) != 0:  # an earlier test's run is still finishing
        server.app.slots.leave(blocker)
        assert time.monotonic() < deadline, "the generation slot never came free"
        time.sleep(0.1)
    try:
        yield
    finally:
        server.app.slots.leave(blocker)


STATUS = "() => document.querySelector('#status').innerText"


def test_typing_right_after_enter_is_kept_and_prompts_show_as_text(page, server):  # noqa: F811
    box = page.locator(BOX).first
    with slot_taken(server):  # this shot waits in line, its prompt listed in the status
        box.fill("**bold** red star ![x](http://127.0.0.1:9/x.png) walks left")
        box.press("Enter")
        box.type("close-up of it spinning", delay=40)  # typed while the server answers
        wait_for(page, STATUS, lambda t: "Up next" in t, timeout=30)
        time.sleep(0.5)  # (any late answer from the server would have landed by now)
        assert box.input_value() == "close-up of it spinning"
        status = page.locator("#status").inner_text()
        assert "**bold** red star ![x](http://127.0.0.1:9/x.png) walks left" in status  # plain text: no bold, no image
        assert page.locator("#status img, #status strong").count() == 0
        screenshot(page, "typing.png")


def test_a_key_typed_in_the_instant_after_enter_stays_in_the_box(page, server):  # noqa: F811
    box = page.locator(BOX).first
    with slot_taken(server):
        box.fill("a red star walks left")
        # Enter, then a key in the same instant: before gradio reads the box (a tick after Enter)
        page.evaluate(f"""() => {{ const box = document.querySelector('{BOX}');
            box.dispatchEvent(new KeyboardEvent('keypress', {{key: 'Enter', bubbles: true, cancelable: true}}));
            box.value += 'c'; box.dispatchEvent(new Event('input', {{bubbles: true}})); }}""")
        wait_for(page, STATUS, lambda t: "Up next" in t, timeout=30)
        time.sleep(0.5)  # (any late answer from the server would have landed by now)
        assert box.input_value() == "c"
        assert ["a red star walks left"] in [e.story.session.queued for e in server.app.stories._entries.values()]


def test_stop_with_a_queue_hands_the_prompts_back(page, server):  # noqa: F811
    box = page.locator(BOX).first
    with slot_taken(server):  # the story waits in line with three prompts queued
        prompts = ["a red star walks left", "close-up of it spinning", "it jumps in the city"]
        for text in prompts:
            box.fill(text)
            box.press("Enter")
            wait_for(page, STATUS, lambda t, text=text: text in t, timeout=30)
        wait_for(page, STATUS, lambda t: "in line" in t, timeout=30)
        page.locator("#stop").click()
        status = wait_for(page, STATUS, lambda t: "Stopped" in t, timeout=30)
        assert "3 queued prompts were not generated" in status
        story_box = page.locator("#story-box textarea").first
        assert story_box.input_value().splitlines() == prompts  # offered back, one per line
        screenshot(page, "stop_queue.png")


def test_new_story_mid_stream_shows_nothing_of_the_old_one(page, server, monkeypatch):  # noqa: F811
    from demo import app as demo_app

    write = demo_app.Story.write_segment

    def slow_write(self, frames, fps):  # a shot takes seconds, as on the real model, so "new story" lands mid-shot
        time.sleep(0.4)
        return write(self, frames, fps)

    monkeypatch.setattr(demo_app.Story, "write_segment", slow_write)
    page.on("dialog", lambda dialog: dialog.accept())  # "discard this story?" -> yes
    box = page.locator(BOX).first
    box.fill("a red striped star walks left in the snow")
    box.press("Enter")
    wait_for(page, "() => document.querySelector('#stats').innerText", lambda t: "frames 0" not in t, timeout=60)
    page.locator("#new").click()
    wait_for(page, STATUS, lambda t: "New story" in t, timeout=30)
    deadline = time.monotonic() + 3  # the old shot had chunks left: none of them may come back
    while time.monotonic() < deadline:
        stats = page.locator("#stats").inner_text()
        assert "frames 0" in stats and page.locator("#storyboard img").count() == 0, stats
        assert "New story" in page.locator("#status").inner_text()
        time.sleep(0.1)
    wait_for(page, VIDEO_STATE, lambda v: v is None, timeout=10)  # the player holds nothing of the old story
    time.sleep(1)
    assert page.evaluate(VIDEO_STATE) is None
    screenshot(page, "new_story.png")


PLAYBACK = """() => { const p = document.querySelector('#playback [data-state]'), v = document.querySelector('#stream video');
  return p ? {state: p.dataset.state, text: p.innerText, paused: v ? v.paused : null,
              ahead: v && v.buffered.length ? v.buffered.end(v.buffered.length - 1) - v.currentTime : 0} : null }"""


def test_prompts_typed_in_quick_succession_are_all_queued_in_order(page, server):  # noqa: F811
    from demo import app as demo_app

    box, prompts = page.locator(BOX).first, ["a red star walks left", "close-up of it spinning", "it jumps in the city"]
    # The first prompt's request is slow to leave the page (a slow network): sent as typed, the two
    # after it would overtake it.
    page.evaluate("""() => { const fetch = window.fetch; window.fetch = async (url, options) => {
        if (String(options?.body).includes('a red star walks left')) await new Promise((r) => setTimeout(r, 1500));
        return fetch(url, options); }; }""")
    with slot_taken(server):  # (nothing is generated: every prompt stays in the queue)
        with demo_app._PIPELINES_LOCK:  # the model is still loading: the first prompt's answer is late too
            for text in prompts:  # each pasted right after the previous Enter
                box.fill(text)
                box.press("Enter")
            time.sleep(0.5)
            assert box.input_value() == ""  # each taken out of the box, none erased before its Enter
        # each is queued, once, in the order typed
        wait_for(page, STATUS, lambda t: "Up next" in t and all(p in t for p in prompts), timeout=30)
        queues = [e.story.session.queued for e in server.app.stories._entries.values()]
        assert prompts in queues
    screenshot(page, "quick_succession.png")


def test_the_status_names_the_shot_playing_and_the_shot_generating(page, server):  # noqa: F811
    box = page.locator(BOX).first
    box.fill("a red striped star walks left in the snow")
    box.press("Enter")
    wait_for(page, STATUS, lambda t: "Generating shot 1" in t, timeout=30)
    box.fill("close-up of the same character spinning")
    box.press("Enter")
    wait_for(page, PLAYBACK, lambda p: p and p["state"] == "playing", timeout=90)
    page.evaluate("() => document.querySelector('#stream video').pause()")  # the viewer stays on shot 1...
    status = wait_for(page, STATUS, lambda t: "Generating shot 2" in t, timeout=90)  # ...while shot 2 is generated
    playing = page.evaluate(PLAYBACK)
    assert playing["state"] == "paused" and "shot 1: a red striped star walks left in the snow" in playing["text"], playing
    assert "Generating shot 2: close-up of the same character spinning" in status
    screenshot(page, "playing_and_generating.png")
    wait_for(page, STATUS, lambda t: "2 shots in the story" in t, timeout=90)  # generated; the viewer jumps to the end
    page.evaluate("() => { const v = document.querySelector('#stream video'); v.currentTime = v.buffered.end(v.buffered.length - 1) - 0.1; }")
    wait_for(page, PLAYBACK, lambda p: "shot 2: close-up of the same character spinning" in p["text"], timeout=10)


def test_slow_generation_buffers_before_playing_and_says_so(page, server, monkeypatch):  # noqa: F811
    from demo import app as demo_app
    from demo.devmodel import SlowedPipeline

    load = demo_app.get_pipeline
    monkeypatch.setattr(demo_app, "get_pipeline", lambda spec: SlowedPipeline(load(spec), speed=0.4))  # slower than real time
    box = page.locator(BOX).first
    box.fill("a red striped star walks left in the snow")
    box.press("Enter")
    # The first chunk is there, and the page holds it, saying so, rather than play into a stall
    held = wait_for(page, PLAYBACK, lambda p: p and p["state"] == "buffering" and p["paused"] and p["ahead"] > 0, timeout=120)
    assert "buffering" in held["text"] and "real time" in held["text"], held
    screenshot(page, "buffering.png")
    ended = wait_for(page, PLAYBACK, lambda p: p["state"] == "ended", timeout=180)  # then plays the shot to its end
    assert "Played to the end of shot 1" in ended["text"] and "buffering" not in ended["text"]
