"""Streamed-chunk timing records and the memory measurement around generation.

A `ChunkRecord` is written each time a decoded chunk leaves the streaming session: the timing
metrics (latency to first frame, FPS, per-chunk time and its growth over shots) are pure
functions of these records, so they are exact on synthetic records and honest on real ones.
Times are seconds from any monotonic clock (time.perf_counter).
"""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class ChunkRecord:
    shot: int  # shot index in the story, 0-based
    chunk: int  # chunk index inside the shot, 0-based
    t_submit: float  # when the shot's prompt was submitted (s)
    t_chunk_ready: float  # when this chunk's decoded frames were available (s)
    frames: int  # pixel frames delivered in this chunk

    def validate(self) -> None:
        if self.shot < 0 or self.chunk < 0 or self.frames < 1:
            raise ValueError(f"bad chunk record {self}: shot/chunk must be >= 0 and frames >= 1")
        if self.t_chunk_ready < self.t_submit:
            raise ValueError(f"bad chunk record {self}: chunk ready before its shot was submitted")


class StreamRecorder:
    """Collects ChunkRecords while a session streams: call `submit(shot)` when a prompt arrives
    and `chunk_ready(shot, frames)` as each decoded chunk is yielded."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.records: list[ChunkRecord] = []
        self._submitted: dict[int, float] = {}
        self._chunks: dict[int, int] = {}

    def submit(self, shot: int) -> None:
        self._submitted[shot] = self.clock()

    def chunk_ready(self, shot: int, frames: int) -> None:
        if shot not in self._submitted:
            raise ValueError(f"chunk of shot {shot} ready before the shot was submitted")
        chunk = self._chunks.get(shot, 0)
        self._chunks[shot] = chunk + 1
        self.records.append(ChunkRecord(shot, chunk, self._submitted[shot], self.clock(), frames))


def chunk_durations(records: Sequence[ChunkRecord]) -> list[tuple[ChunkRecord, float]]:
    """Service time of each chunk: ready time minus when the stream could start on it.

    Chunks are produced one after another, so a chunk starts when the previous chunk (of any
    shot) was ready, or when its shot was submitted if that is later (a prompt submitted early
    waits for the previous shot; that wait is not the chunk's cost).
    """
    ordered = sorted(records, key=lambda r: (r.t_chunk_ready, r.shot, r.chunk))
    out, prev_ready = [], None
    for r in ordered:
        r.validate()
        start = r.t_submit if prev_ready is None else max(r.t_submit, prev_ready)
        out.append((r, r.t_chunk_ready - start))
        prev_ready = r.t_chunk_ready
    return out


def chunk_time_growth(shots: Sequence[int], seconds: Sequence[float], first: int, last: int) -> float:
    """Growth of the per-chunk time from shot `first` to shot `last`: the ratio of a line fitted to
    (shot, chunk time) over every chunk of those shots, read at `last` and at `first`.

    A robust line (Theil-Sen: the median of pairwise slopes) because timing noise is one-sided:
    a chunk that another process slowed down must not read as growth. Comparing the last shot's
    few chunks with the first's instead gave 0.95-1.19 per story on a flat 20-shot run.
    """
    from scipy.stats import theilslopes

    x, y = np.asarray(shots, float), np.asarray(seconds, float)
    keep = (x >= first) & (x <= last)
    x, y = x[keep], y[keep]
    if len(np.unique(x)) < 2:
        raise ValueError(f"needs chunk times of at least two shots in [{first}, {last}]")
    slope, intercept, *_ = theilslopes(y, x)
    at_first, at_last = intercept + slope * first, intercept + slope * last
    if at_first <= 0:
        raise ValueError("the fitted chunk time at the first shot is not positive")
    return float(at_last / at_first)


def measure_peak_memory(fn: Callable[[], T], device: str = "cpu") -> tuple[T, float]:
    """Run `fn()` and return (its result, peak memory in MB during the call).

    CUDA: torch's peak allocated bytes on the device. CPU: the process's peak resident set
    (Linux VmHWM, reset just before the call through /proc/self/clear_refs); where that reset
    is unavailable, the process's lifetime peak RSS, an upper bound.
    """
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) / 2**20
    reset = _reset_peak_rss()
    result = fn()
    peak = _read_vm_hwm_mb() if reset else None
    return result, peak if peak is not None else _lifetime_peak_rss_mb()


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # "5" resets the peak RSS high-water mark (Linux >= 4.0)
        return True
    except OSError:
        return False


def _read_vm_hwm_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB -> MB
    except OSError:
        pass
    return None


def _lifetime_peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB on Linux


def cpu_threads() -> int:
    import torch

    return torch.get_num_threads() or os.cpu_count() or 1


# A timed story ran on a busy machine when other processes' load (the 1-minute load average
# before or after it, less the run's own threads, which the average still holds from the previous
# story) exceeds this many runnable processes per CPU core: then the run's threads queued for a
# core, and its latency and FPS measured the queue as much as the model. (Observed: a 2-core
# machine at load 5-6 recorded 11.5 s latency and 1.4 FPS.)
BUSY_LOAD_PER_CORE = 0.5


@dataclass(frozen=True)
class MachineLoad:
    """The machine's 1-minute load average around one timed story, and its CPU cores."""

    before: float
    after: float
    cores: int

    def busy(self, threads: int) -> bool:
        return is_busy(self.before, self.after, threads, self.cores)


def load_average() -> float:
    """1-minute load average (runnable processes); NaN where the OS keeps none."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return float("nan")


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity, not the whole machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def is_busy(before: float, after: float, threads: int, cores: int) -> bool:
    """Other processes' load above BUSY_LOAD_PER_CORE per core, before or after; unknown load is not busy."""
    loads = [x for x in (before, after) if x == x]  # (x == x: not NaN)
    return bool(loads) and cores > 0 and max(loads) - threads > BUSY_LOAD_PER_CORE * cores
