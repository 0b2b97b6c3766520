"""demo/app.py: pure helpers, and the app driven through gradio_client on a localhost server.

The server runs a tiny random model (demo.devmodel) so no checkpoint is needed; the real text
encoder (MiniLM, offline) is loaded once for the module. SHOTSTREAM_DEMO_MODEL=<shipped name or
folder> serves that model instead (e.g. to time the browser test on the shipped student).
"""

import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from demo import app as demo_app  # noqa: E402
from demo.app import Busy, GenerationSlots, ModelSpec, as_text, check_prompt, stats_markdown  # noqa: E402
from demo.devmodel import DEV_OVERRIDES, write_dev_checkpoint  # noqa: E402
from demo.card import chips, chips_html, unknown_words, vocabulary_hint  # noqa: E402
from demo.playback import LOW, Timeline, needed_buffer  # noqa: E402
from demo import playback  # noqa: E402
from demo.stories import Full, StoryRegistry  # noqa: E402
from helpers import free_port  # noqa: E402

# 17-frame shots in 1-latent-frame chunks: 5 streamed chunks per shot (1 + 4 + 4 + 4 + 4 frames)
TEST_OVERRIDES = [o for o in DEV_OVERRIDES if not o.startswith("video.frames_per_shot")] + [
    "video.frames_per_shot=17", "model.chunk_frames=1",
]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Pure helpers


def test_check_prompt_cleans_truncates_with_a_note_and_refuses_empty():
    assert check_prompt("  a red  star\n walks ", 400) == ("a red star walks", None)
    prompt, note = check_prompt("word " * 200, max_chars=50)
    assert len(prompt) == 50 and "50 characters" in note
    for bad in ["", "  \n\t "]:
        with pytest.raises(ValueError, match="empty prompt"):
            check_prompt(bad, 400)
    with pytest.raises(ValueError, match="UTF-8"):
        check_prompt(b"\xff\xfe bad", 400)
    assert check_prompt("caf\u00e9".encode(), 400)[0] == "caf\u00e9"


def test_user_text_is_shown_as_plain_text_in_markdown():
    assert as_text('<script>alert("x")</script> & <b>') == '&lt;script&gt;alert\\("x"\\)&lt;/script&gt; &amp; &lt;b&gt;'
    assert as_text("it's #1 > 'two'") == "it's \\#1 &gt; 'two'"  # quotes as typed, no broken entity
    assert as_text("plain words") == "plain words"
    assert as_text("**bold** ![x](http://h/x.png)") == "\\*\\*bold\\*\\* \\!\\[x\\]\\(http\\://h/x\\.png\\)"  # no emphasis, no image, no link
    assert as_text("a\x00b\x1b[31mred\x1b[0m\x07c") == "abredc"  # NUL, ANSI colour codes and controls dropped


def test_stats_markdown_shows_shot_latency_fps():
    text = stats_markdown(1, 0.345, 12.34, 40, 2)
    assert "**shot** 2" in text and "0.34 s" in text and "12.3" in text and "**queued** 2" in text
    assert "**first frame** -" in stats_markdown(None, None, None, 0, 0)


def fake_chunk(shot, chunk, n, caption="a red star walks", t_start=100.0):
    return SimpleNamespace(shot=shot, chunk=chunk, frames=np.zeros((n, 2, 2, 3), np.uint8), caption=caption, t_start=t_start)


def test_the_timeline_places_each_shot_in_the_runs_video_and_measures_the_speed():
    now = [100.0]
    timeline = Timeline(fps=16, clock=lambda: now[0])
    assert timeline.speed() is None
    for j, n in enumerate((9, 12, 12)):  # the tiny preset's shot: 33 frames in chunks of 9, 12, 12
        timeline.add(fake_chunk(3, j, n))  # (the story's 4th shot, first of this run)
    now[0] = 104.125  # 33 frames, 2.0625 s of video, in 4.125 s: half real time
    timeline.add(fake_chunk(4, 0, 9, "close-up of it\x1b[31m spinning\x00", t_start=104.0))
    assert timeline.shots == [(0.0, 3, "a red star walks"), (2.0625, 4, "close-up of it spinning")]
    assert timeline.speed() == pytest.approx((42 / 16) / 4.125)
    state = json.loads(timeline.state(4, remaining=1.5))
    assert state == {"shots": [[0.0, 4, "a red star walks"], [2.0625, 5, "close-up of it spinning"]],
                     "generating": 5, "speed": round((42 / 16) / 4.125, 3), "remaining": 1.5}
    over = json.loads(timeline.state())  # the run is over: nothing generating, nothing left to wait for
    assert over["generating"] is None and over["remaining"] == 0.0 and over["shots"] == state["shots"]


def test_the_page_buffers_what_the_rest_needs_to_play_without_a_stall():
    assert needed_buffer(None, 2.0) == needed_buffer(1.0, 2.0) == needed_buffer(3.0, 2.0) == LOW  # real time or faster
    assert needed_buffer(0.5, 0.0) == LOW  # nothing left to generate
    assert needed_buffer(0.5, 1.0) == pytest.approx(1.0)  # 1 s left at half speed: 2 s to make, 1 s to play
    assert needed_buffer(0.8, 2.0) == pytest.approx(0.5)
    assert needed_buffer(0.1, 2.0) == playback.CAP  # more than the player buffers: as much as it does


def test_generation_slots_limit_line_order_and_refusal():
    slots = GenerationSlots(limit=2, max_waiting=2)
    a, b, c, d, e = (object() for _ in range(5))
    assert slots.join(a) == 0 and slots.join(b) == 0  # two run at once
    assert slots.join(c) == 1 and slots.join(d) == 2  # the others wait in order
    with pytest.raises(Busy, match="busy"):
        slots.join(e)  # the line is full: refused, not queued
    assert slots.wait(d, timeout=0.01) == 2
    slots.leave(a)  # a finishes: c (first in line) runs, d moves up
    assert slots.wait(c, timeout=0.01) == 0 and slots.wait(d, timeout=0.01) == 1
    slots.leave(d)  # d gives up while waiting
    assert slots.waiting == deque_of() and slots.running == {b, c}
    with pytest.raises(ValueError, match="max-concurrent"):
        GenerationSlots(0)


def deque_of(*items):
    from collections import deque

    return deque(items)


class FakeStory:
    def __init__(self, name, busy=False):
        self.name, self.busy, self.closed = name, busy, False

    def close(self):
        self.closed = True


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def registry(**kw) -> tuple[StoryRegistry, Clock]:
    clock = Clock()
    return StoryRegistry(clock=clock, busy=lambda s: s.busy, **kw), clock


def test_story_cap_evicts_the_least_recently_active_rest_story_never_an_open_page():
    stories, clock = registry(max_stories=3, idle_timeout=600)
    stories.opened("page")  # a browser opened the page before its first shot
    page = stories.add("page", lambda: FakeStory("page"))
    a = stories.add("a", lambda: FakeStory("a"))
    clock.now += 1
    b = stories.add("b", lambda: FakeStory("b", busy=True))  # generating: never evicted
    clock.now += 1
    stories.get("a")  # a was active after b
    assert stories.add("a", lambda: FakeStory("other")) is a  # an existing story is returned, not replaced
    c = stories.add("c", lambda: FakeStory("c"))  # full: a (least recently active, not page, not busy) makes room
    assert stories.keys() == ["page", "b", "c"] and a.closed and not (page.closed or b.closed)
    assert "replaced by a newer story" in stories.why_freed("a") and stories.why_freed("page") is None
    d = stories.add("d", lambda: FakeStory("d"))  # then c
    assert c.closed and not d.closed and stories.keys() == ["page", "b", "d"]
    b.busy, d.busy = False, True
    stories.opened("d")
    stories.opened("b")
    with pytest.raises(Full, match="maximum of 3 stories"):  # every slot is a page's or busy: refused
        stories.add("e", lambda: FakeStory("e"))
    assert len(stories) == 3 and "e" not in stories
    stories.remove("page")  # the page's tab closed
    assert page.closed and stories.add("e", lambda: FakeStory("e")).name == "e"


def test_idle_stories_are_freed_after_the_timeout_page_or_not_unless_generating():
    stories, clock = registry(max_stories=10, idle_timeout=60)
    stories.opened("page")
    page, rest, busy = (stories.add(k, lambda k=k: FakeStory(k, busy=k == "busy")) for k in ("page", "rest", "busy"))
    clock.now += 59
    stories.touch("rest")
    clock.now += 2  # page idle 61 s, rest 2 s
    assert stories.free_idle() == 1 and page.closed and stories.keys() == ["busy", "rest"]  # least recently active first
    assert "idle for more than 1 minute" in stories.why_freed("page")
    clock.now += 61
    assert stories.free_idle() == 1 and rest.closed and not busy.closed  # busy: its run touches it per chunk
    busy.busy = False
    clock.now += 1
    stories.add("new", lambda: FakeStory("new"))  # adding sweeps too
    assert busy.closed and stories.keys() == ["new"]
    assert stories.get("page") is None and stories.get("new").name == "new"
    stories.add("page", lambda: FakeStory("page again"))
    assert stories.why_freed("page") is None  # a new story: no stale message


def test_the_sweeper_frees_idle_stories_without_any_new_request():
    from demo.stories import Sweeper

    stories, clock = registry(max_stories=2, idle_timeout=60)
    story = stories.add("a", lambda: FakeStory("a"))
    clock.now += 61
    sweeper = Sweeper(stories, period=0.01).start()
    try:
        deadline = time.monotonic() + 10
        while not story.closed and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        sweeper.stop()
    assert story.closed and len(stories) == 0


@pytest.mark.parametrize("kw, message", [({"max_stories": 0}, "--max-stories"), ({"idle_timeout": 0}, "--idle-timeout")])
def test_story_registry_refuses_bad_bounds(kw, message):
    with pytest.raises(ValueError, match=message):
        StoryRegistry(**kw)


def test_the_vocabulary_covers_every_storyworld_caption():
    from shotstream.world.story import sample_story

    for seed in range(300):
        story = sample_story(seed)
        for text in [*story.captions, story.global_caption or ""]:
            assert unknown_words(text) == [], (seed, text)


def test_words_outside_the_tiny_models_vocabulary_are_flagged():
    assert unknown_words("A golden retriever playing piano in Paris at sunset!") == ["retriever", "playing", "piano", "paris", "sunset"]
    assert unknown_words("a red striped star walks to the left in a snowy field, wide shot") == []
    assert unknown_words("Close-up of IT spinning, close-up") == []  # case and repeats
    assert unknown_words("a red dog, a blue dog") == ["dog"]  # each once
    hint = vocabulary_hint("a <script>x</script> star")
    assert "script" in hint and "<script>" not in hint and "&lt;" not in hint  # words only, never markup
    assert "ignored: <b>script, x</b>" in hint
    assert vocabulary_hint("a red star spins") == "" and vocabulary_hint("") == ""
    assert vocabulary_hint("a golden retriever", storyworld=False) == ""  # a released model reads any words


def test_the_chips_are_the_vocabulary_and_cover_every_label():
    from shotstream.world import vocab

    kinds = chips()
    for kind, labels in (("shapes", vocab.SHAPES), ("colours", vocab.COLOURS), ("patterns", vocab.PATTERNS),
                         ("scenes", vocab.SCENES), ("framing", vocab.FRAMINGS), ("actions", vocab.ACTIONS)):
        assert len(kinds[kind]) == len(labels), kind
    assert all(unknown_words(w) == [] for words in kinds.values() for w in words)
    page = chips_html()
    assert page.count('class="chip"') == sum(map(len, kinds.values())) and 'data-word="walks to the left"' in page


def test_the_model_card_names_the_model_its_limits_and_the_paper(tmp_path):
    from demo.card import model_card, repository_url

    shipped = tmp_path / "tiny"
    card = model_card(shipped / "student", "causal", 128, 128, 33, 16, "cpu", "float32", shipped=shipped, environ={})
    assert "shipped tiny **student**" in card and "128x128" in card and "33 frames (2.1 s)" in card
    assert "trained on a CPU on StoryWorld" in card and "https://arxiv.org/abs/2603.25746" in card
    released = tmp_path / "shotstream-1.3b"
    released.mkdir()
    (released / "components.json").write_text("{}")
    card = model_card(released, "causal", 832, 480, 81, 16, "cuda", "bfloat16", shipped=shipped, environ={"SPACE_ID": "me/shotstream"})
    assert f"model folder `{released}`" in card and "open-vocabulary" in card and "StoryWorld" not in card
    assert "[source](https://huggingface.co/spaces/me/shotstream/tree/main)" in card
    assert repository_url({"SHOTSTREAM_REPO_URL": "https://example.org/r", "SPACE_ID": "a/b"}) == "https://example.org/r"
    assert repository_url({}) is None


def test_default_model_falls_back_to_teacher_with_a_note(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo_app, "SHIPPED", tmp_path)
    with pytest.raises(FileNotFoundError, match="--model"):
        demo_app.default_model(None)
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "config.json").write_text("{}")
    assert demo_app.default_model(None) == tmp_path / "teacher"
    assert "no student" in capsys.readouterr().err
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "config.json").write_text("{}")
    assert demo_app.default_model(None) == tmp_path / "student"


def test_cli_defaults_are_safe():
    args = demo_app.parse_args([])
    assert args.model is None and args.max_concurrent == 1
    assert args.max_stories == 16 and args.idle_timeout == 600  # bounded by default (a free 2-vCPU Space)
    assert args.device == "cpu" and args.dtype == "float32"
    # no flag and no Space variable: this machine only (tests/test_space.py covers the variables)
    assert demo_app.server_address(args.host, args.port, environ={}) == ("127.0.0.1", 7860)


@pytest.mark.parametrize("argv, message", [(["--max-concurrent", "0"], "at least 1"), (["--device", "cud"], "unknown device"),
                                           (["--dtype", "fp64"], "unknown dtype"), (["--threads", "two"], "whole number"),
                                           (["--port", "0"], "port number 1-65535"), (["--port", "web"], "port number"),
                                           (["--max-stories", "0"], "at least 1"), (["--idle-timeout", "0"], "seconds > 0"),
                                           (["--idle-timeout", "soon"], "number of seconds"), (["--idle-timeout", "inf"], "seconds > 0")])
def test_bad_cli_arguments_are_one_line_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        demo_app.parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_corrupt_checkpoint_stops_the_app_before_it_serves(tmp_path, capsys):
    model = write_dev_checkpoint(tmp_path, overrides=TEST_OVERRIDES)
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # truncated by a failed copy
    assert demo_app.main(["--model", str(model)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_seed_box_empty_means_zero_and_bad_values_are_refused():
    assert demo_app.seed_value(None) == 0 and demo_app.seed_value(7.0) == 7
    for bad in (-1, 2.5, 2**40):
        with pytest.raises(ValueError, match="seed must be"):
            demo_app.seed_value(bad)


# ---------------------------------------------------------------------------------------------
# The app through gradio_client


@pytest.fixture(scope="module")
def model_spec(tmp_path_factory) -> ModelSpec:
    model = os.environ.get("SHOTSTREAM_DEMO_MODEL")
    if model:
        student = demo_app.resolve_model(model)
    else:
        student = write_dev_checkpoint(tmp_path_factory.mktemp("dev"), overrides=TEST_OVERRIDES)
    return ModelSpec(str(student))


def serve(spec: ModelSpec, **kw):
    width = demo_app.get_pipeline(spec).config.video.width
    demo = demo_app.build_app(spec, max_concurrent=1, max_waiting=4, **kw)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=demo_app.CSS)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", app=demo.shotstream, width=width)
    demo.close()
    demo.shotstream.shutdown()


@pytest.fixture(scope="module")
def server(model_spec):
    yield from serve(model_spec)


def client(server):
    return gradio_client.Client(server.url, verbose=False)


def story_of(server, c) -> demo_app.Story:
    story = server.app.stories.get(c.session_hash, touch=False)
    assert story is not None, "this client has no live story"
    return story


def run_outputs(c, during=None) -> list[tuple]:
    """Every streamed output of /run; `during(outputs)` is called after each one arrives."""
    job, seen = c.submit(api_name="/run"), []
    for out in job:
        seen.append(out)
        if during:
            during(seen)
    return job.outputs() or seen


def test_two_shots_stream_and_the_second_does_not_regenerate_the_first(server):
    c = client(server)
    status, refused = c.predict("a red striped star walks left in a snowy field", "", 0, api_name="/add_shot")
    assert refused == "" and "Up next" in status
    queued_second = []

    def queue_second(seen):  # the next prompt arrives while shot 1 is still streaming
        if not queued_second:
            queued_second.append(c.predict("close-up of the same character spinning", "", 0, api_name="/add_shot"))

    outs = run_outputs(c, during=queue_second)
    segments = [o[0] for o in outs if isinstance(o[0], str) and o[0].endswith(".m3u8")]
    assert len(segments) == 10  # 5 chunks per shot, one streamed segment each, both shots in one stream
    shots_streamed = [o[2] for o in outs if isinstance(o[2], str) and "**shot**" in o[2]]
    assert "**shot** 1 " in shots_streamed[0] and "**shot** 2 " in shots_streamed[-1]
    story = story_of(server, c)
    assert [s.caption for s in story.session.shots] == ["a red striped star walks left in a snowy field",
                                                        "close-up of the same character spinning"]
    assert story.generated_shots == 2
    first = story.session.shots[0].frames.copy()
    gallery = outs[-1][1]
    assert [g["caption"] for g in gallery] == ["1. a red striped star walks left in a snowy field",
                                               "2. close-up of the same character spinning"]
    # a third shot: generated alone, the first two kept bit-identical
    c.predict("the same character jumps in the city", "", 0, api_name="/add_shot")
    run_outputs(c)
    assert story.generated_shots == 3 and len(story.session.shots) == 3
    assert np.array_equal(story.session.shots[0].frames, first)
    mp4 = c.predict(api_name="/download")
    assert mp4 and open(mp4, "rb").read(12)[4:8] == b"ftyp"


def test_the_page_shows_the_model_card_and_the_words_it_knows(server):
    import httpx

    config = httpx.get(f"{server.url}config", timeout=30).json()
    values = {c["props"].get("elem_id"): c["props"].get("value") for c in config["components"] if c["props"].get("elem_id")}
    assert "**Model:** the model folder" in values["model-card"] and "arXiv 2603.25746" in values["model-card"]
    assert 'data-word="triangle"' in values["chips-box"] and 'data-word="in a snowy field"' in values["chips-box"]


def test_a_prompt_longer_than_the_text_encoder_reads_is_told_which_words_it_ignores(server, monkeypatch):
    toasts = []
    monkeypatch.setattr(demo_app.gr, "Warning", toasts.append)
    monkeypatch.setattr(demo_app.gr, "Info", lambda m: None)
    user = SimpleNamespace(session_hash="long-prompt-user")
    words = "a red striped star walks left in a snowy field " * 8  # ~90 tokens; the tiny model reads 64
    server.app.add_shot(words + "and then the moon rises", "", 0, user)
    assert len(toasts) == 1 and "first 64 tokens" in toasts[0] and toasts[0].endswith("and then the moon rises")
    server.app.add_shot("a red striped star walks left in a snowy field", "", 0, user)  # read in full: no note
    assert len(toasts) == 1
    server.app.stories.get(user.session_hash, touch=False).session.cancel()


def test_two_clients_see_only_their_own_story(server):
    a, b = client(server), client(server)
    assert a.session_hash != b.session_hash
    a.predict("a blue square jumps on the beach", "", 1, api_name="/add_shot")
    b.predict("a yellow disc <script>alert(1)</script> in the city", "", 2, api_name="/add_shot")
    results = {}
    threads = [threading.Thread(target=lambda k, c: results.__setitem__(k, run_outputs(c)), args=(k, c)) for k, c in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    captions = {k: [g["caption"] for g in v[-1][1]] for k, v in results.items()}
    assert captions == {"a": ["1. a blue square jumps on the beach"],
                        "b": ["1. a yellow disc <script>alert(1)</script> in the city"]}  # text, shown as text
    assert story_of(server, a) is not story_of(server, b) and story_of(server, a).seed == 1 and story_of(server, b).seed == 2
    assert all("<script>" not in str(o[3]) for o in results["b"])  # escaped in the Markdown status


def test_busy_users_wait_in_line_with_their_place_shown(server):
    c = client(server)
    c.predict("a green star walks right", "", 0, api_name="/add_shot")
    blocker = object()
    assert server.app.slots.join(blocker) == 0  # another user holds the only slot
    released = []

    def release(seen):
        if not released and "you are 1 in line" in str(seen[-1][3]):
            released.append(True)
            server.app.slots.leave(blocker)

    outs = run_outputs(c, during=release)
    assert released, "the waiting user was not told its place in line"
    assert len(story_of(server, c).session.shots) == 1 and outs[-1][1][0]["caption"] == "1. a green star walks right"


def test_bad_input_is_refused_politely_and_cancel_keeps_the_story(server):
    c = client(server)
    status, refused = c.predict("   ", "", 0, api_name="/add_shot")
    assert "Nothing queued" in status and "empty prompt" in status and refused == "   "  # handed back to the box
    status, refused = c.predict("x" * 5000, "", 0, api_name="/add_shot")
    max_chars = story_of(server, c).pipe.config.prompt.max_chars  # the model's bound, not the demo's
    assert refused == "" and len(story_of(server, c).session._queue[0].caption) == max_chars < 5000
    for i in range(demo_app.MAX_PENDING - 1):  # rapid submissions fill the queue...
        c.predict(f"shot {i} it walks", "", 0, api_name="/add_shot")
    status, refused = c.predict("one too many", "", 0, api_name="/add_shot")
    assert "Not queued" in status and "already waiting" in status and refused == "one too many"  # ...then are refused politely
    status, story_box, _ = c.predict(api_name="/cancel")
    assert story_of(server, c).session.pending == 0
    # the queued prompts were not generated: said, and handed back in the story box to queue again
    assert "8 queued prompts were not generated" in status
    assert story_box.splitlines() == ["x" * max_chars] + [f"shot {i} it walks" for i in range(7)]
    # a finished shot, then cancel in the middle of the next one: the story so far is kept
    c.predict("a red circle walks left", "", 0, api_name="/add_shot")
    run_outputs(c)
    c.predict("it spins", "", 0, api_name="/add_shot")
    cancelled = []

    def cancel_mid_shot(seen):
        if not cancelled and "**shot** 2 " in str(seen[-1][2]):
            cancelled.append(c.predict(api_name="/cancel"))

    run_outputs(c, during=cancel_mid_shot)
    assert cancelled and [s.caption for s in story_of(server, c).session.shots] == ["a red circle walks left"]
    c.predict("it bounces", "", 0, api_name="/add_shot")  # the app keeps working
    run_outputs(c)
    assert len(story_of(server, c).session.shots) == 2


def test_each_run_tells_the_page_where_its_shots_start_and_a_queued_shot_is_timed_from_its_start(server):
    app, request = server.app, SimpleNamespace(session_hash="timeline-and-latency")
    app.add_shot("a red star walks left", "", 0, request)
    app.add_shot("close-up of it spinning", "", 0, request)
    story, chunks = app.stories.get(request.session_hash), []
    stream, write = story.session.stream, story.write_segment

    def recorded():
        for chunk in stream():
            chunks.append(chunk)
            yield chunk

    def slow_write(frames, fps):  # shot 1 takes a while: shot 2 waits in the queue meanwhile
        time.sleep(0.1 if len(chunks) <= 5 else 0)
        return write(frames, fps)

    story.session.stream, story.write_segment = recorded, slow_write
    outs = list(app.run(request))
    states = [json.loads(o[4]) for o in outs if isinstance(o[4], str) and o[4]]
    fps, frames = story.pipe.config.video.fps, story.pipe.config.video.frames_per_shot
    shots = [[0.0, 1, "a red star walks left"], [round(frames / fps, 4), 2, "close-up of it spinning"]]
    assert states[-1]["shots"] == shots and states[-1]["generating"] is None  # the run is over: play out
    assert [s["generating"] for s in states[:-1]] == [1] * 5 + [2] * 5 and states[5]["shots"] == shots
    assert states[0]["remaining"] == pytest.approx((2 * frames - 1) / fps)  # the rest of shot 1 and all of shot 2
    # "first frame" of the queued shot 2: from when it started generating, not from its submit
    first = next(c for c in chunks if c.shot == 1)
    assert first.t_start - first.t_submit > 0.3  # (it waited for shot 1: the two figures differ)
    stats = next(o[2] for o in outs if "**shot** 2 " in str(o[2]))
    assert f"**first frame** {first.t_ready - first.t_start:.2f} s" in stats
    app.unload(request)


def test_a_freed_story_never_writes_into_its_removed_folder(server, tmp_path):
    pipe = demo_app.get_pipeline(server.app.spec)
    story = demo_app.Story(pipe, tmp_path)
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    assert story.write_segment(frames, 8).is_file()
    story.close()  # the tab closed while a chunk was being made
    assert story.write_segment(frames, 8) is None and story.write_story() is None
    assert not story.dir.exists() and list(tmp_path.iterdir()) == []


def test_new_story_mid_stream_never_shows_a_chunk_of_the_old_story(server):
    app, request = server.app, SimpleNamespace(session_hash="new-story-mid-stream")
    app.add_shot("a red star walks left", "", 0, request)
    story, written = app.stories.get(request.session_hash), []
    write = story.write_segment

    def write_then_press_new_story(frames, fps):  # "new story" pressed while chunk 2 is being made
        written.append(write(frames, fps))
        if len(written) == 2:
            assert app.new_story("", 3, True, request)[3].startswith("New story")
        return written[-1]

    story.write_segment = write_then_press_new_story
    outs = list(app.run(request))
    assert [o[0] for o in outs if isinstance(o[0], str)] == [str(written[0])]  # chunk 2 of the old story: dropped
    assert all("**shot** 1" not in str(o[2]) for o in outs[1:])  # nor its stats
    assert story.session.shots == [] and story.seed == 3 and story.session.pending == 0
    # "new story" asks first: a page whose user declined changes nothing
    app.add_shot("a blue disc spins", "", 3, request)
    assert all(out is not None for out in app.new_story("", 0, False, request)) and story.session.pending == 1
    app.unload(request)


def test_new_story_resets_and_closed_tab_frees_the_session(server):
    c = client(server)
    c.predict("a pink heart walks left", "", 0, api_name="/add_shot")
    run_outputs(c)
    story = story_of(server, c)
    c.predict("", 5, api_name="/new_story")
    assert story.session.shots == [] and story.seed == 5
    folder = story.dir
    server.app.unload(SimpleNamespace(session_hash=c.session_hash))
    assert c.session_hash not in server.app.stories and not folder.exists()
    deadline = time.monotonic() + 5
    while story.session._closed is False and time.monotonic() < deadline:
        time.sleep(0.05)
    assert story.session._closed


# ---------------------------------------------------------------------------------------------
# Bounded under anonymous load


def rss_mb() -> float:
    """This process's resident memory (the server runs in it), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rest_call(url, api_name, data, session_hash=None) -> list:
    """One anonymous call as a script makes it (no gradio_client, no heartbeat): POST, then read
    the result's event stream. Returns the outputs."""
    import json

    import httpx

    body = {"data": data} | ({"session_hash": session_hash} if session_hash else {})
    event = httpx.post(f"{url}gradio_api/call/{api_name}", json=body, timeout=60).json()["event_id"]
    stream = httpx.get(f"{url}gradio_api/call/{api_name}/{event}", timeout=60).text
    kind, data = [line.split(": ", 1)[1] for line in stream.strip().splitlines()[-2:]]
    assert kind == "complete", stream
    return json.loads(data)


CAP = demo_app.MAX_STORIES  # the default a Space runs with


@pytest.fixture
def bounded_server(model_spec):
    """The shipped tiny student (its stories' real memory: a KV cache of ~14 MB each) at the default
    cap; the test model where none is shipped."""
    try:
        spec = ModelSpec(str(demo_app.default_model(None)))
    except FileNotFoundError:
        spec = model_spec
    yield from serve(spec, idle_timeout=600)


def test_100_anonymous_rest_calls_stay_within_the_story_cap_and_a_page_keeps_its_story(bounded_server):
    app, url = bounded_server.app, bounded_server.url
    page = client(bounded_server)  # a browser-style client: a heartbeat, and the page's load event
    page.predict(api_name="/opened")
    page.predict("a red striped star walks left in a snowy field", "", 0, api_name="/add_shot")
    mine = story_of(bounded_server, page)
    rss_before, seen, statuses = rss_mb(), [], []

    def hammer(worker):
        for i in range(worker, 100, 4):
            statuses.append(rest_call(url, "add_shot", [f"a blue square jumps {i}", "", 0], session_hash=f"script-{i}")[0])
            seen.append((len(app.stories), sum(1 for _ in app.root.iterdir())))

    workers = [threading.Thread(target=hammer, args=(w,)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    rss_after = rss_mb()
    print(f"\n100 REST calls: live stories max {max(s for s, _ in seen)}, story folders max {max(f for _, f in seen)} "
          f"(cap {CAP}); server RSS {rss_before:.0f} -> {rss_after:.0f} MB")
    assert len(seen) == 100 and all(s.startswith("Up next: ") for s in statuses)  # every call was served
    assert max(s for s, _ in seen) == CAP and max(f for _, f in seen) == CAP  # held at the cap, never above
    assert len(app.stories) == CAP and sum(1 for _ in app.root.iterdir()) == CAP
    assert rss_after - rss_before < 300  # the bound; 100 stories of the tiny student take 1.4 GB
    # the page's story survived the load, and still streams
    assert story_of(bounded_server, page) is mine and mine.dir.is_dir() and not mine.closed
    outs = run_outputs(page)
    assert [s.caption for s in mine.session.shots] == ["a red striped star walks left in a snowy field"]
    assert outs[-1][1][0]["caption"] == "1. a red striped star walks left in a snowy field"
    # a script whose story made room is told so when it comes back
    status = rest_call(url, "add_shot", ["a green disc spins", "", 0], session_hash="script-0")[0]
    assert "freed because it was replaced by a newer story" in status and "Up next: *a green disc spins*" in status
