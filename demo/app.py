"""ShotStream demo: type a shot, watch it stream, type the next one while it plays.

    python -m demo.app                                  # shipped tiny student (teacher until one ships), CPU
    python -m demo.app --model /tmp/dev/student --port 7861 --max-concurrent 2
    GRADIO_SERVER_NAME=0.0.0.0 PORT=7860 python demo/app.py   # as a Hugging Face Space starts it
    SHOTSTREAM_DEMO_ARGS="--device cuda --dtype bf16" python demo/app.py   # flags where none can be typed

UI wiring only: the model, the dual cache and the streaming loop live in `shotstream.session`.
One pipeline is loaded lazily and shared (module-level cache keyed by model/device/dtype); each
browser session owns its own `ShotStreamSession` (keyed by gradio's session hash) in a bounded
`demo.stories.StoryRegistry`: freed when the tab closes, after --idle-timeout without activity,
or (a REST client's) to make room under --max-stories. Each decoded chunk is encoded as a small H.264 segment (`shotstream.video.
encode_segment`) and appended to a streaming `gr.Video` (HLS in the browser), so the shots of one
run play as one continuous video; a shot queued while another plays joins the same stream.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import html
import os
import re
import shlex
import shutil
import sys
import tempfile
import textwrap
import threading
import time
from collections import deque
from pathlib import Path

if __package__ in (None, ""):  # `python demo/app.py` (how a Hugging Face Space runs app_file)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradio as gr

from demo.card import CHIPS_CSS, CHIPS_JS, chips_html, is_storyworld_model, model_card, unknown_words, vocabulary_hint
from demo.playback import PLAYBACK_CSS, PLAYBACK_HTML, PLAYBACK_JS, Timeline, plain_text
from demo.stories import IDLE_TIMEOUT, MAX_STORIES, Full, StoryRegistry, Sweeper
from shotstream import runtime
from shotstream.checkpoint import CheckpointError
from shotstream.model.loading import resolve_model
from shotstream.paths import SHIPPED
from shotstream.runtime import add_runtime_args, as_arg, positive_int, set_threads, torch_dtype
from shotstream.session import ShotStreamPipeline, ShotStreamSession, check_seed, clean_prompt
from shotstream.video import encode_segment, pad_to_even, write_mp4

MAX_PENDING = 8  # shots a user may queue behind the one being generated (an example story has up to 6)
MAX_WAITING = 8  # users waiting for a generation slot before new ones are turned away
# Events of all users that gradio's queue holds at once; beyond, it refuses new ones. Generations
# have their own line (GenerationSlots: --max-concurrent, default 1, because a free CPU Space has
# 2 vCPUs and a second generation beside the first would only halve both; MAX_WAITING behind it).
QUEUE_SIZE = 64
DEFAULT_HOST = "127.0.0.1"  # this machine only, unless the command line or a Space says otherwise
DEFAULT_PORT = 7860  # gradio's, and the port a Space forwards
N_EXAMPLES = 4


# ---------------------------------------------------------------------------------------------
# Pure helpers (unit-tested)


def check_prompt(text, max_chars: int) -> tuple[str, str | None]:
    """(clean prompt cut to the model's prompt.max_chars, note for the user or None). Raises
    ValueError on empty / undecodable input. (What the text encoder reads of it is in tokens:
    App.add_shot says which words it ignores.)"""
    prompt = clean_prompt(text, max_chars=sys.maxsize)  # cut here, with a note instead of a warning
    if len(prompt) > max_chars:
        return prompt[:max_chars], f"Prompt cut to its first {max_chars} characters."
    return prompt, None


def port_number(text) -> int:
    """A TCP port to listen on, 1-65535; ValueError otherwise."""
    try:
        port = int(str(text).strip())
    except ValueError:
        raise ValueError(f"expected a port number 1-65535, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"expected a port number 1-65535, got {port}")
    return port


def server_address(host: str | None, port: int | None, environ=os.environ) -> tuple[str, int]:
    """(host, port) to listen on: the command line's, else the environment's as a Hugging Face
    Space or a container platform sets it (GRADIO_SERVER_NAME; GRADIO_SERVER_PORT, then PORT),
    else 127.0.0.1:7860. Empty variables count as unset; a bad port is a ValueError naming it."""
    host = host or environ.get("GRADIO_SERVER_NAME", "").strip() or DEFAULT_HOST
    if port is None:
        name = next((n for n in ("GRADIO_SERVER_PORT", "PORT") if environ.get(n, "").strip()), None)
        try:
            port = port_number(environ[name]) if name else DEFAULT_PORT
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    return host, port


def positive_seconds(text) -> float:
    """A duration in seconds, > 0; ValueError otherwise."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise ValueError(f"expected a number of seconds > 0, got {text!r}")
    return value


def seed_value(seed) -> int:
    """The seed box's value: empty means 0; anything else must be a valid session seed."""
    return 0 if seed is None or seed == "" else check_seed(seed)


# Every ASCII punctuation that Markdown (with GFM's autolinks: "http://", "www.", "a@b.c") reads.
# (< > & are left to html.escape: a backslash before an entity would break it.)
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|~:@])")


def as_text(text: str) -> str:
    """User text for Markdown/HTML, shown exactly as typed: HTML escaped (`<script>` never runs),
    Markdown punctuation backslash-escaped (`**bold**` and `![](url)` stay text, no image is
    fetched), control characters and ANSI escapes dropped."""
    return html.escape(_MARKDOWN.sub(r"\\\1", plain_text(text)), quote=False)


def stats_markdown(shot: int | None, latency: float | None, fps: float | None, frames: int, pending: int) -> str:
    cells = [
        f"**shot** {shot + 1 if shot is not None else '-'}",
        f"**first frame** {f'{latency:.2f} s' if latency is not None else '-'}",
        f"**FPS** {f'{fps:.1f}' if fps else '-'}",
        f"**frames** {frames}",
        f"**queued** {pending}",
    ]
    return " &nbsp;|&nbsp; ".join(cells)


class Busy(Exception):
    """More users are waiting for a generation slot than the app accepts."""


class GenerationSlots:
    """At most `limit` generations at once; the others wait in line, first come first served."""

    def __init__(self, limit: int, max_waiting: int = MAX_WAITING):
        if limit < 1:
            raise ValueError(f"--max-concurrent must be >= 1, got {limit}")
        self.limit, self.max_waiting = limit, max_waiting
        self.running: set[object] = set()
        self.waiting: deque[object] = deque()
        self._cond = threading.Condition()

    def join(self, ticket) -> int:
        """Enter the line; returns the place in it (0 = running now). Raises Busy when the line is full."""
        with self._cond:
            if len(self.running) < self.limit and not self.waiting:
                self.running.add(ticket)
                return 0
            if len(self.waiting) >= self.max_waiting:
                raise Busy(f"the server is busy ({len(self.running)} generating, {len(self.waiting)} waiting); try again shortly")
            self.waiting.append(ticket)
            return len(self.waiting)

    def wait(self, ticket, timeout: float) -> int:
        """Wait up to `timeout` s for a slot; returns the place in line (0 = running now)."""
        with self._cond:
            self._promote()
            if ticket not in self.running:
                self._cond.wait(timeout)
                self._promote()
            return 0 if ticket in self.running else self.waiting.index(ticket) + 1

    def leave(self, ticket) -> None:
        with self._cond:
            self.running.discard(ticket)
            if ticket in self.waiting:
                self.waiting.remove(ticket)
            self._promote()
            self._cond.notify_all()

    def _promote(self) -> None:
        while self.waiting and len(self.running) < self.limit:
            self.running.add(self.waiting.popleft())
            self._cond.notify_all()


# ---------------------------------------------------------------------------------------------
# The one pipeline (lazy, shared) and the per-browser-session stories


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    path: str
    device: str = "cpu"
    dtype: str = "float32"
    text_device: str | None = None  # None: `device`


_PIPELINES: dict[ModelSpec, ShotStreamPipeline] = {}
_PIPELINES_LOCK = threading.Lock()


def get_pipeline(spec: ModelSpec) -> ShotStreamPipeline:
    """Load once per (model, device, dtype); every session shares the weights."""
    with _PIPELINES_LOCK:
        if spec not in _PIPELINES:
            _PIPELINES[spec] = ShotStreamPipeline.from_pretrained(spec.path, device=spec.device, dtype=torch_dtype(spec.dtype),
                                                                  text_device=spec.text_device)
        return _PIPELINES[spec]


def default_model(requested: str | None) -> Path:
    """--model, else the shipped student, else the shipped teacher (with a note)."""
    if requested:
        return resolve_model(requested)
    for name in ("student", "teacher"):
        if (SHIPPED / name / "config.json").is_file():
            if name != "student":
                print(f"note: no student is shipped in {SHIPPED} yet; using the {name} "
                      "(its chunks arrive together once each shot is denoised)", file=sys.stderr)
            return SHIPPED / name
    raise FileNotFoundError(
        f"no shipped model in {SHIPPED} yet; pass --model <folder> "
        "(e.g. `python -m demo.devmodel /tmp/dev` writes a random one to /tmp/dev/student)"
    )


class Story:
    """One browser session's story: its ShotStreamSession, files, and who is streaming it."""

    def __init__(self, pipe: ShotStreamPipeline, root: Path, seed: int = 0, global_caption: str | None = None):
        self.pipe = pipe
        self.dir = Path(tempfile.mkdtemp(prefix="story-", dir=root))
        self.lock = threading.Lock()
        # Held while a file is written into self.dir and while close() removes it: a story freed
        # mid-stream (tab closed, idle timeout) never has its folder recreated by a late segment.
        self.files = threading.Lock()
        self.closed = False
        self.stale_video = False  # the last run ended with the player holding a replaced story's chunks
        self.streaming: object | None = None  # ticket of the run() generator draining this story's queue
        self.segments = 0
        self.in_progress: int | None = None  # index of the shot being streamed
        self.t_first: float | None = None  # latest shot: its first frame, s after it started generating
        self.generated_shots = 0  # shots whose frames were generated (never regenerated)
        self.session = self._new_session(seed, global_caption)

    def _new_session(self, seed: int, global_caption: str | None) -> ShotStreamSession:
        self.seed, self.global_caption = check_seed(seed), global_caption or None
        return self.pipe.session(seed=self.seed, global_caption=self.global_caption, max_queue=MAX_PENDING)

    def restart(self, seed: int, global_caption: str | None) -> None:
        """New story: the shot in progress is dropped, the queue and history cleared."""
        old = self.session
        old.cancel()
        old.close()
        self.session = self._new_session(seed, global_caption)

    @property
    def busy(self) -> bool:
        """Generating or waiting for a slot: never freed for idleness or room (StoryRegistry)."""
        return self.streaming is not None

    def close(self) -> None:
        self.session.cancel()
        self.session.close()
        with self.files:
            self.closed = True
            shutil.rmtree(self.dir, ignore_errors=True)

    def write_segment(self, frames, fps: float) -> Path | None:
        """The chunk as the next video segment in the story's folder; None once the story is closed."""
        with self.files:
            if self.closed:
                return None
            self.segments += 1
            return encode_segment(pad_to_even(frames), fps, self.dir / f"segment_{self.segments:05d}.mp4")

    def write_story(self) -> Path | None:
        with self.files:
            if self.closed:
                return None
            frames = pad_to_even(self.session.story_frames())
            return write_mp4(self.dir / f"story_{len(self.session.shots)}_shots.mp4", frames, self.pipe.config.video.fps)

    def gallery(self) -> list[tuple[object, str]]:
        return [(s.frames[len(s.frames) // 2], f"{k + 1}. {s.caption}") for k, s in enumerate(self.session.shots)]


def session_key(request: gr.Request | None) -> str:
    key = getattr(request, "session_hash", None)
    if not key:
        raise gr.Error("no browser session: reload the page")
    return key


def release_memory() -> None:
    """Give freed memory back to the OS. A story's KV cache is a few large tensors allocated by
    gradio's worker threads; glibc keeps such freed blocks in per-thread arenas, so without this
    100 stories made and freed one after another left the server ~0.6 GB larger than 16 live ones
    (measured on the shipped tiny student). No-op where libc has no malloc_trim."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class App:
    """Event handlers of one Blocks app. State lives in self.stories, keyed by session hash; every
    story's files live under self.root (one folder per server, removed by shutdown())."""

    def __init__(self, spec: ModelSpec, max_concurrent: int = 1, max_waiting: int = MAX_WAITING,
                 max_stories: int = MAX_STORIES, idle_timeout: float = IDLE_TIMEOUT, clock=time.monotonic):
        self.spec = spec
        self.storyworld = is_storyworld_model(spec.path)  # the tiny model's vocabulary applies
        self.slots = GenerationSlots(max_concurrent, max_waiting)
        self.stories = StoryRegistry(max_stories, idle_timeout, clock=clock, busy=lambda story: story.busy,
                                     released=release_memory)
        self.root = Path(tempfile.mkdtemp(prefix="shotstream-demo-"))
        self.sweeper = Sweeper(self.stories, period=min(30.0, idle_timeout / 4)).start()

    def shutdown(self) -> None:
        self.sweeper.stop()
        self.stories.close_all()
        shutil.rmtree(self.root, ignore_errors=True)

    def story(self, request: gr.Request, seed=0, global_caption: str | None = None, create: bool = True) -> Story | None:
        """The session's story (its activity noted); a new one if `create`. Raises Full at the cap."""
        key = session_key(request)
        story = self.stories.get(key)
        if story is None and create:
            pipe = get_pipeline(self.spec)  # (loads outside the registry's lock)
            story = self.stories.add(key, lambda: Story(pipe, self.root, seed, global_caption))
        return story

    def freed_note(self, request: gr.Request | None) -> str | None:
        """What to tell a client whose story is gone, or None if it never had one."""
        why = self.stories.why_freed(getattr(request, "session_hash", None))
        return f"Your story was freed because {why}; its shots are gone." if why else None

    @property
    def max_chars(self) -> int:
        """The loaded model's prompt bound (its config's prompt.max_chars)."""
        return get_pipeline(self.spec).config.prompt.max_chars

    # -- events ------------------------------------------------------------------------------
    def add_shot(self, prompt, global_caption, seed, request: gr.Request):
        """Queue a shot; the run event that follows streams it. Returns (status, the prompt if it was
        not queued): the page took it out of the box and puts a refused prompt back only into an
        empty box (SUBMIT_JS, RESTORE_JS), so nothing typed since is lost."""
        text = prompt if isinstance(prompt, str) else ""
        try:
            prompt, note = check_prompt(prompt, self.max_chars)
            caption, caption_note = check_prompt(global_caption, self.max_chars) if (global_caption or "").strip() else (None, None)
            seed = seed_value(seed)
        except (ValueError, TypeError) as e:
            gr.Info(f"Nothing queued: {e}.")
            return f"Nothing queued: {as_text(str(e))}.", text
        freed = None if self.stories.get(session_key(request), touch=False) else self.freed_note(request)
        try:
            story = self.story(request, seed, caption)
        except Full as e:
            gr.Warning(f"Not queued: {e}.")
            return f"Not queued: {as_text(str(e))}.", text
        if freed:
            freed = f"{freed} This shot starts a new story."
            gr.Warning(freed)
        if not story.session.shots and not story.session.pending and story.streaming is None:
            if (story.seed, story.global_caption) != (seed, caption):
                story.restart(seed, caption)  # seed / story caption apply from a story's first shot
        for n in (note, caption_note):
            if n:
                gr.Warning(n)
        try:
            index = story.session.submit(prompt)
        except ValueError as e:  # the per-session queue is full (rapid submissions) or the story is at its maximum
            gr.Warning(f"Not queued: {e}.")
            return self.status(story, f"Not queued: {as_text(str(e))}."), text
        unknown = unknown_words(prompt) if self.storyworld else []
        gr.Info(f"Shot {index + 1} queued." + (f" The tiny model ignores: {', '.join(unknown)}." if unknown else ""))
        unread = story.pipe.text_encoder.unread(story.session.prompt(prompt, index))
        if unread:
            gr.Warning(f"The model reads the first {story.pipe.text_encoder.max_len} tokens of a shot's prompt "
                       f"(with the story caption); it does not read: {as_text(textwrap.shorten(unread, 120, placeholder=' ...'))}")
        return self.status(story, as_text(freed) if freed else None), ""

    def add_story(self, lines, global_caption, seed, request: gr.Request):
        """Queue every line of an example story (one shot per line)."""
        prompts = [p for p in (lines or "").splitlines() if p.strip()]
        if not prompts:
            gr.Info("Nothing queued: the story box is empty.")
            return gr.skip()
        status = gr.skip()
        for p in prompts:
            status, _ = self.add_shot(p, global_caption, seed, request)
        return status

    def run(self, request: gr.Request):
        """Stream every queued shot of this session: yields (video segment, storyboard, stats, status,
        playback state for the page's player: Timeline.state). A run with nothing to stream (the
        streaming run took its shot) still yields once, leaving every output as it is: gradio would
        otherwise end it with empty outputs, and empty the player that the other run fills."""
        streamed = False
        with contextlib.closing(self._run(request)) as outputs:  # (closed with this one: the client went away)
            for out in outputs:
                streamed = True
                yield out
        if not streamed:
            yield (gr.skip(),) * 5

    def _run(self, request: gr.Request):
        story = self.story(request, create=False)
        if story is None:
            note = self.freed_note(request)
            if note:
                yield gr.skip(), gr.skip(), gr.skip(), as_text(note), gr.skip()
            return
        key, ticket = session_key(request), object()
        with story.lock:
            if story.streaming is not None:  # the running stream will pick the new shot up
                return
            story.streaming = ticket
        try:
            try:
                place = self.slots.join(ticket)
            except Busy as e:
                story.session.cancel()
                gr.Warning(f"Not generated: {e}.")
                yield gr.skip(), gr.skip(), gr.skip(), self.status(story, f"Busy: {e}."), gr.skip()
                return
            while place:
                yield gr.skip(), gr.skip(), gr.skip(), self.status(story, f"Busy: {len(self.slots.running)} generating; you are {place} in line."), gr.skip()
                self.stories.touch(key)  # waiting in line is activity
                place = self.slots.wait(ticket, timeout=0.5)
                if not story.session.pending or story.closed:  # cancelled, reset or freed while waiting
                    return
            yield from self._stream(story, key)
        finally:
            self.slots.leave(ticket)
            with story.lock:
                if story.streaming is ticket:
                    story.streaming = None

    def _stream(self, story: Story, key):
        """Stream queued shots of `story`, following "new story" to the new session. Gradio ends a
        run by sending its last outputs again, so the last yield always states the story as it is
        now: after "new story" or "stop", never the old chunk and stats (issue 31)."""
        video = story.pipe.config.video
        fps, shown_session = video.fps, None  # whose chunks this run showed last
        timeline = Timeline(fps)  # this run's video: one HLS stream, its clock from 0
        while True:
            session = story.session  # "new story" swaps it; the loop then follows the new one
            with story.lock:  # checked and released together, so a shot queued now starts a new run
                if not session.pending or story.closed:
                    story.streaming = None
                    break
            frames_this_shot, stream, shown = 0, session.stream(), len(session.shots)
            try:
                for chunk in stream:
                    frames_this_shot = len(chunk.frames) + (0 if chunk.chunk == 0 else frames_this_shot)
                    segment = story.write_segment(chunk.frames, fps)
                    if segment is None:  # freed meanwhile (tab closed, or the server's bound): nothing to show it to
                        return
                    self.stories.touch(key)  # a streamed chunk is activity
                    if chunk.chunk == 0:  # from when this shot started generating, not from its submit (time in the queue)
                        story.t_first = chunk.t_ready - chunk.t_start
                    gen_fps = frames_this_shot / max(chunk.t_ready - chunk.t_start, 1e-6)
                    stats = stats_markdown(chunk.shot, story.t_first, gen_fps, sum(len(s.frames) for s in session.shots) + frames_this_shot, session.pending)
                    timeline.add(chunk)
                    story.generated_shots += chunk.last
                    story.in_progress = None if chunk.last else chunk.shot
                    gallery = gr.skip()
                    if len(session.shots) != shown:  # the previous shot was just added to the history
                        gallery, shown = story.gallery(), len(session.shots)
                    if story.session is not session:  # "new story" meanwhile: a late chunk of the old one is never shown
                        break
                    shown_session = session
                    remaining = (video.frames_per_shot - frames_this_shot + session.pending * video.frames_per_shot) / fps
                    yield (str(segment), gallery, stats, self.status(story, f"Generating shot {chunk.shot + 1}: {as_text(chunk.caption)}"),
                           timeline.state(chunk.shot, remaining))
            finally:
                stream.close()  # releases the pipeline's lock even when the client went away
                story.in_progress = None
        if shown_session is None or story.closed:
            return
        if shown_session is not story.session:  # "new story" after this run showed chunks of the old one
            story.stale_video = True  # gradio's streamed video keeps this run's segments: cleared by after_run
            yield None, [], stats_markdown(None, None, None, 0, 0), "New story: type the first shot.", ""
            return
        shots = story.session.shots  # finished, or stopped: the stats count only the shots kept
        stats = stats_markdown(len(shots) - 1 if shots else None, story.t_first if shots else None, None,
                               sum(len(s.frames) for s in shots), story.session.pending)
        yield gr.skip(), story.gallery(), stats, self.status(story), timeline.state()  # generation over: play out, never hold

    def after_run(self, request: gr.Request):
        """After a run: empty the player if it holds a replaced story's chunks. (A streamed gr.Video
        keeps every segment of its run, whatever the run yields last; only an event after the run
        resets it.)"""
        story = self.story(request, create=False)
        if story is not None and story.stale_video:
            story.stale_video = False
            return None
        return gr.skip()

    def cancel(self, request: gr.Request):
        """Stop the shot in progress. Returns (status, story box, stats): the prompts that were
        queued behind it are not generated but handed back in the story box, to queue again."""
        story = self.story(request, create=False)
        if story is None:
            note = self.freed_note(request)
            return (as_text(note) if note else gr.skip()), gr.skip(), gr.skip()
        session = story.session
        with session._cond:  # read and cleared together: a prompt submitted meanwhile is in one or the other
            dropped = session.queued
            session.cancel()
        message = "Stopped: the shot in progress was dropped, finished shots are kept."
        if dropped:
            n = len(dropped)
            message += (f" {n} queued prompt{'s were' if n > 1 else ' was'} not generated: "
                        f"{'they are' if n > 1 else 'it is'} in the story box; 'queue this story' queues {'them' if n > 1 else 'it'} again.")
        gr.Info(message)
        frames = sum(len(s.frames) for s in session.shots)
        stats = stats_markdown(len(session.shots) - 1 if session.shots else None, None, None, frames, 0)
        return self.status(story, as_text(message)), ("\n".join(dropped) if dropped else gr.skip()), stats

    def new_story(self, global_caption, seed, confirmed=True, request: gr.Request = None):
        """Discard the story (the page asks first: `confirmed` is the answer) and start a new one."""
        if confirmed is False:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        story = self.story(request, create=False)
        try:
            caption = check_prompt(global_caption, self.max_chars)[0] if (global_caption or "").strip() else None
        except (ValueError, TypeError):
            caption = None
        try:
            seed = seed_value(seed)
        except ValueError as e:
            gr.Warning(f"Seed 0 used: {e}.")
            seed = 0
        if story is not None:
            story.restart(seed, caption)
        return None, [], stats_markdown(None, None, None, 0, 0), "New story: type the first shot.", None, ""

    def download(self, request: gr.Request):
        story = self.story(request, create=False)
        if story is None or not story.session.shots:
            gr.Info(self.freed_note(request) or "No finished shot to download yet.")
            return None
        path = story.write_story()
        return str(path) if path else None

    def hint(self, prompt):
        """The live line under the prompt box: words the tiny model will ignore."""
        return vocabulary_hint(prompt if isinstance(prompt, str) else "", self.storyworld)

    def opened(self, request: gr.Request):
        """The page was opened in a browser (its load event): that story is never evicted for room."""
        key = getattr(request, "session_hash", None)
        if key:
            self.stories.opened(key)

    def unload(self, request: gr.Request):
        """Tab closed: stop its generation and free its story."""
        key = getattr(request, "session_hash", None)
        if key:
            self.stories.remove(key)

    @staticmethod
    def status(story: Story, headline: str | None = None) -> str:
        lines = [headline] if headline else []
        queued = story.session.queued
        if queued:
            lines.append("Up next: " + "; ".join(f"*{as_text(c)}*" for c in queued))
        if not lines:
            n = len(story.session.shots)
            lines.append(f"{n} shot{'s' * (n != 1)} in the story. Type the next one.")
        return "\n\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Layout


def example_stories(n: int = N_EXAMPLES) -> tuple[list[list[str]], list[str]]:
    """([one shot per line, global caption], labels) for a few stories of the evaluation suite."""
    from shotstream.world.dataset import load_eval_suite

    stories = load_eval_suite()[:n]
    labels = [f"{len(s.captions)} shots: {s.captions[0][:60]}..." for s in stories]
    return [["\n".join(s.captions), s.global_caption or ""] for s in stories], labels


# The prompt box is edited in the page, never through an event's outputs: gradio applies those a
# moment later, over whatever was typed or pasted meanwhile (issue 31: a prompt pasted right after
# Enter was erased in 2 of 8 tries). Gradio also reads the box a tick after Enter, so a key typed in
# that instant joined the prompt: TAKE_JS takes the box's text at the keypress itself (or the click
# on "add shot") into a queue and empties the box; SUBMIT_JS sends the oldest taken text
# (what gradio read, for a caller without the page's listener). RESTORE_JS puts a refused prompt
# back only into an empty box.
# Prompts also reach the server in the order typed: two events sent a few ms apart can join the
# queue in either order (1 of 10 tries), so each prompt waits for the previous one's answer
# (RESTORE_JS runs on it), at most 10 s.
_SET_BOX = "const box = document.querySelector('#prompt textarea, #prompt input'); " \
           "const set = (value) => { box.value = value; box.dispatchEvent(new Event('input', {bubbles: true})); };"
TAKE_JS = f"""() => {{ window.shotTaken = [];
  const take = () => {{ {_SET_BOX} if (box) {{ window.shotTaken.push(box.value); set(''); }} }};
  // capture phase: before the box's own keypress handler (the one that submits) and the button's click
  document.addEventListener('keypress', (e) => {{
    if (e.key === 'Enter' && !e.shiftKey && e.target.closest?.('#prompt')) take(); }}, true);
  document.addEventListener('click', (e) => {{ if (e.target.closest?.('#add')) take(); }}, true);
  return []; }}"""
SUBMIT_JS = f"""async (text) => {{ {_SET_BOX}
  const taken = (window.shotTaken || []).shift();
  if (taken !== undefined) text = taken;
  else if (box && box.value.startsWith(text)) set(box.value.slice(text.length).trimStart());
  const previous = window.shotAnswered || Promise.resolve();
  window.shotAnswered = new Promise((resolve) => (window.shotWaiting ||= []).push(resolve));
  await Promise.race([previous, new Promise((resolve) => setTimeout(resolve, 10000))]);
  return [text]; }}"""
RESTORE_JS = f"""(refused) => {{ {_SET_BOX}
  if (box && refused && !box.value.trim()) set(refused);
  (window.shotWaiting || []).shift()?.(); return []; }}"""
CONFIRM_NEW_JS = "(caption, seed, _) => [caption, seed, window.confirm('Start a new story? This one and its shots are discarded.')]"
CSS = "#stats {font-variant-numeric: tabular-nums} #vocab-hint {color: var(--color-accent)}"


def card_for(spec: ModelSpec) -> str:
    """The model card of `spec`, read from its config.json (no weights loaded)."""
    from shotstream.model.loading import read_config

    try:
        config, kind = read_config(spec.path)
    except Exception as e:  # noqa: BLE001 -- a card must never stop the page; the model load reports errors
        return f"**Model:** `{spec.path}` (its config could not be read: {as_text(str(e))})"
    v = config.video
    return model_card(spec.path, kind, v.width, v.height, v.frames_per_shot, v.fps, spec.device, spec.dtype, SHIPPED)


def build_app(spec: ModelSpec, max_concurrent: int = 1, max_waiting: int = MAX_WAITING,
              max_stories: int = MAX_STORIES, idle_timeout: float = IDLE_TIMEOUT) -> gr.Blocks:
    app = App(spec, max_concurrent, max_waiting, max_stories, idle_timeout)
    with gr.Blocks(title="ShotStream") as demo:
        gr.Markdown("## ShotStream: streaming multi-shot video\nType a shot and press Enter. "
                    "Queue the next shot while this one plays: it continues the story from memory.")
        gr.Markdown(card_for(spec), elem_id="model-card")
        with gr.Row():
            with gr.Column(scale=3):
                video = gr.Video(label="now streaming", streaming=True, autoplay=True, elem_id="stream", height=360)
                # The shot playing, from the player's position (the status names the shot generating),
                # and "buffering" while the page holds playback for generation to get ahead (demo/playback.py).
                playback = gr.HTML("", html_template=PLAYBACK_HTML, js_on_load=PLAYBACK_JS, css_template=PLAYBACK_CSS,
                                   elem_id="playback")
                stats = gr.Markdown(stats_markdown(None, None, None, 0, 0), elem_id="stats")
                status = gr.Markdown("Type the first shot.", elem_id="status")
                with gr.Row():
                    prompt = gr.Textbox(label="next shot", placeholder="a red striped star walks left in a snowy field, wide shot",
                                        max_length=None, scale=5, elem_id="prompt", autofocus=True)
                    add = gr.Button("add shot", variant="primary", scale=1, elem_id="add")
                hint = gr.Markdown("", elem_id="vocab-hint")
                with gr.Row():
                    stop = gr.Button("stop shot", elem_id="stop")
                    new = gr.Button("new story", elem_id="new")
                    dl = gr.Button("download story (mp4)", elem_id="download")
                file = gr.File(label="story mp4", elem_id="story-file", height=90)
            with gr.Column(scale=2):
                if app.storyworld:
                    with gr.Accordion("what it can draw (click a word to add it to the prompt)", open=True):
                        gr.HTML(chips_html(), js_on_load=CHIPS_JS, css_template=CHIPS_CSS, elem_id="chips-box")
                gallery = gr.Gallery(label="storyboard", columns=3, height=300, elem_id="storyboard")
                with gr.Accordion("story settings", open=False):
                    global_caption = gr.Textbox(label="global story caption (optional, prefixed to every shot)")
                    seed = gr.Number(label="seed (applies from a story's first shot)", value=0, precision=0)
                with gr.Accordion("example stories (one shot per line)", open=True):
                    story_box = gr.Textbox(label="story", lines=3, elem_id="story-box")
                    queue_story = gr.Button("queue this story", elem_id="queue-story")
                    examples, labels = example_stories()
                    gr.Examples(examples, inputs=[story_box, global_caption], example_labels=labels)

        stream_outputs = [video, gallery, stats, status, playback]
        # Before Enter: which words the tiny model will ignore (cheap, so outside the queue).
        prompt.change(app.hint, prompt, hint, queue=False, api_name=False, show_progress="hidden")
        # Named events are the API that scripts and tests drive with gradio_client:
        # /add_shot then /run streams it; /cancel, /new_story, /download.
        # Enter moves the box's text to `submitted`, cleared in the page (SUBMIT_JS, RESTORE_JS).
        submitted, refused = gr.Textbox(visible=False), gr.Textbox(visible=False)
        # Every Enter queues its prompt, even while an earlier one is still being queued ("multiple":
        # gradio's default drops a trigger while the same event is pending, and the box was already
        # cleared: the prompt was lost), one at a time in the order typed (one add_shot at a time for
        # the whole server: it takes milliseconds). A run triggered while one streams waits for it to
        # end ("always_last"): the streaming run picks the new shot up, or the next one streams it.
        for trigger, name in ((prompt.submit, "add_shot"), (add.click, False)):
            trigger(None, prompt, submitted, js=SUBMIT_JS, queue=False, api_name=False, trigger_mode="multiple") \
                .then(app.add_shot, [submitted, global_caption, seed], [status, refused], concurrency_limit=1,
                      concurrency_id="add_shot", api_name=name, trigger_mode="multiple") \
                .then(None, refused, None, js=RESTORE_JS, queue=False, api_name=False, trigger_mode="multiple") \
                .then(app.run, None, stream_outputs, concurrency_limit=None, api_name=name and "run", show_progress="hidden",
                      trigger_mode="always_last") \
                .then(app.after_run, None, video, queue=False, api_name=False, show_progress="hidden", trigger_mode="always_last")
        queue_story.click(app.add_story, [story_box, global_caption, seed], status, concurrency_limit=1,
                          concurrency_id="add_shot", api_name=False) \
            .then(app.run, None, stream_outputs, concurrency_limit=None, api_name=False, show_progress="hidden",
                  trigger_mode="always_last") \
            .then(app.after_run, None, video, queue=False, api_name=False, show_progress="hidden", trigger_mode="always_last")
        stop.click(app.cancel, None, [status, story_box, stats], concurrency_limit=None, api_name="cancel")
        confirmed = gr.Checkbox(True, visible=False)  # the page's answer to "discard this story?" (API callers: True)
        new.click(app.new_story, [global_caption, seed, confirmed], [video, gallery, stats, status, file, playback],
                  js=CONFIRM_NEW_JS, concurrency_limit=None, api_name="new_story")
        dl.click(app.download, None, file, concurrency_limit=None, api_name="download")
        # A browser fires load when the page opens (and holds a heartbeat that fires unload when it
        # closes); a plain REST call does neither, so its stories are the first to make room.
        demo.load(app.opened, None, None, api_name="opened", api_visibility="undocumented", queue=False)
        demo.load(None, None, None, js=TAKE_JS, api_name=False, queue=False)
        demo.unload(app.unload)

    demo.shotstream = app  # tests reach the handlers' state through it
    return demo


# ---------------------------------------------------------------------------------------------
# CLI


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo.app", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="shipped model name or model folder (default: student, else teacher)")
    add_runtime_args(p, text_device=True)
    p.add_argument("--host", help=f"address to listen on (default: $GRADIO_SERVER_NAME, else {DEFAULT_HOST}; "
                                  "0.0.0.0 exposes the app to your network)")
    p.add_argument("--port", type=as_arg(port_number), help=f"default: $GRADIO_SERVER_PORT, else $PORT, else {DEFAULT_PORT}")
    p.add_argument("--max-concurrent", type=as_arg(positive_int), default=1, help="generations at once; later users wait in line")
    p.add_argument("--max-stories", type=as_arg(positive_int), default=MAX_STORIES,
                   help="stories held at once (each preallocates its KV cache); beyond, a story of a client "
                        "that never opened the page (REST) makes room, else new ones are refused")
    p.add_argument("--idle-timeout", type=as_arg(positive_seconds), default=IDLE_TIMEOUT,
                   help="seconds without activity after which a story is freed, browser or not")
    p.add_argument("--no-warmup", action="store_true", help="load the model on first use instead of at start")
    return runtime.parse_args(p, argv)


def main(argv=None) -> int:
    # A Space runs `python demo/app.py` with no arguments: its settings' variables are the only way
    # to give flags there. Flags typed on the command line come after, so they win.
    try:
        from_env = shlex.split(os.environ.get("SHOTSTREAM_DEMO_ARGS", ""))
    except ValueError as e:
        print(f"error: SHOTSTREAM_DEMO_ARGS: {e}", file=sys.stderr)
        return 2
    args = parse_args(from_env + (sys.argv[1:] if argv is None else list(argv)))
    set_threads(args.threads)
    try:
        host, port = server_address(args.host, args.port)
        spec = ModelSpec(str(default_model(args.model)), args.device, args.dtype, args.text_device)
        if not args.no_warmup:  # loaded before the server starts: the first user does not wait, a bad checkpoint stops here
            get_pipeline(spec)
    except (FileNotFoundError, ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    demo = build_app(spec, args.max_concurrent, max_stories=args.max_stories, idle_timeout=args.idle_timeout)
    print(f"ShotStream demo: model {spec.path} on {spec.device} ({spec.dtype}), at most {args.max_concurrent} "
          f"generation(s) at once, {args.max_stories} stories (freed after {args.idle_timeout:g} s idle), "
          f"listening on {host}:{port}")
    # share=False whatever the environment: a Space serves the app itself, and a local run
    # should never open a public tunnel unasked.
    try:
        demo.queue(max_size=QUEUE_SIZE).launch(server_name=host, server_port=port, share=False, css=CSS)
    finally:
        demo.shotstream.shutdown()  # (launch returns at once when tests stub it)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
