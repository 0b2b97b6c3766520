"""Bounded server state for the demo: at most `max_stories` live stories, each freed after
`idle_timeout` seconds without activity.

Why: a story holds a session whose KV cache is preallocated (~14 MB on the tiny model, GBs on the
real one) plus a folder of video segments. Gradio frees a browser's state when its heartbeat
connection closes, but a plain REST call (`POST /gradio_api/call/add_shot`) never opens one, so
without a bound one script fills the machine. Here every story is freed by inactivity, whatever
its client; and when the cap is reached a new story first replaces the least recently active
story of a client that never opened the page (REST), never a page's story: those are refused
politely instead.

No gradio in this module: the clock is injectable and the stories are any objects with `close()`,
so the policy is unit-tested without a server (tests/test_demo.py).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_STORIES = 16  # a free CPU Space: 1 generating + 8 waiting in line + a few reading their story
IDLE_TIMEOUT = 600.0  # s without any event or streamed chunk: long enough to watch and type, short enough to recover memory
MAX_REMEMBERED = 1024  # freed / opened keys remembered (for the message to a returning client); bounded too


class Full(Exception):
    """Every story slot is held by an open page or a story being generated."""


@dataclass
class _Entry:
    story: object
    last_active: float
    opened: bool  # its client opened the page (a browser): never evicted to make room, only by idleness


@dataclass
class StoryRegistry:
    """Live stories by session key. Thread-safe; `clock` is injectable for tests.

    `busy(story)` says a story is being generated or waits for a slot: such a story is never
    evicted nor timed out (its run touches it at every chunk anyway). `released()` is called after
    stories were freed (the app returns their memory to the OS there)."""

    max_stories: int = MAX_STORIES
    idle_timeout: float = IDLE_TIMEOUT
    clock: Callable[[], float] = time.monotonic
    busy: Callable[[object], bool] = lambda story: False
    released: Callable[[], None] = lambda: None
    _entries: OrderedDict = field(default_factory=OrderedDict)  # key -> _Entry, least recently active first
    _opened: OrderedDict = field(default_factory=OrderedDict)  # keys of pages opened before their first story
    _freed: OrderedDict = field(default_factory=OrderedDict)  # key -> why its story was freed
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self):
        if self.max_stories < 1:
            raise ValueError(f"--max-stories must be >= 1, got {self.max_stories}")
        if not self.idle_timeout > 0:
            raise ValueError(f"--idle-timeout must be > 0 seconds, got {self.idle_timeout}")

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._entries

    def get(self, key, touch: bool = True):
        """The live story of `key`, or None; `touch` counts this as activity."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if touch:
                self._touch(key, entry)
            return entry.story

    def touch(self, key) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._touch(key, entry)

    def _touch(self, key, entry: _Entry) -> None:
        entry.last_active = self.clock()
        self._entries.move_to_end(key)

    def opened(self, key) -> None:
        """`key`'s client opened the page (a browser tab): its story is never evicted for room."""
        with self._lock:
            if key in self._entries:
                self._entries[key].opened = True
            else:
                _remember(self._opened, key, True)

    def add(self, key, make: Callable[[], object]):
        """The story of `key`, made by `make()` if it has none. Frees idle stories first; at the cap,
        evicts the least recently active story no page opened and nobody generates; else raises Full.
        Stories are closed (their folders removed) under the lock, before the new one is made, so
        neither stories nor folders ever exceed the cap."""
        with self._lock:
            if key in self._entries:
                return self.get(key)
            self.free_idle()
            if len(self._entries) >= self.max_stories:
                victim = next((k for k, e in self._entries.items() if not e.opened and not self.busy(e.story)), None)
                if victim is None:
                    raise Full(f"the server holds its maximum of {self.max_stories} stories; try again in a few minutes")
                self._pop(victim, f"it was replaced by a newer story (the server keeps at most {self.max_stories})").close()
                self.released()
            self._entries[key] = _Entry(make(), self.clock(), opened=self._opened.pop(key, False))
            self._freed.pop(key, None)
            return self._entries[key].story

    def remove(self, key, why: str | None = None):
        """Free `key`'s story now (its tab closed); returns it (closed) or None."""
        with self._lock:
            self._opened.pop(key, None)
            story = self._pop(key, why) if key in self._entries else None
            if story is not None:
                story.close()
        if story is not None:
            self.released()
        return story

    def free_idle(self) -> int:
        """Close every story idle for longer than idle_timeout (unless busy); returns how many.
        Called by `add` and by a timer (Sweeper)."""
        with self._lock:
            now = self.clock()
            idle = [k for k, e in self._entries.items() if now - e.last_active > self.idle_timeout and not self.busy(e.story)]
            minutes = self.idle_timeout / 60
            for k in idle:
                self._pop(k, f"it was idle for more than {minutes:g} minute{'s' * (minutes != 1)}").close()
            if idle:
                self.released()
            return len(idle)

    def why_freed(self, key) -> str | None:
        """Why `key`'s story was freed (for the message to its client), or None if it never was."""
        with self._lock:
            return self._freed.get(key)

    def keys(self) -> list:
        with self._lock:
            return list(self._entries)

    def close_all(self) -> None:
        with self._lock:
            for k in list(self._entries):
                self._pop(k, "the server stopped").close()

    def _pop(self, key, why: str | None):
        entry = self._entries.pop(key)
        if why:
            _remember(self._freed, key, why)
        return entry.story


def _remember(memory: OrderedDict, key, value) -> None:
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > MAX_REMEMBERED:
        memory.popitem(last=False)


class Sweeper:
    """A daemon thread that frees idle stories every `period` seconds, so memory comes back even
    when no new request arrives to trigger `StoryRegistry.add` to free idle ones."""

    def __init__(self, registry: StoryRegistry, period: float):
        self.registry, self.period = registry, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shotstream-demo-sweeper", daemon=True)

    def start(self) -> "Sweeper":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.registry.free_idle()
