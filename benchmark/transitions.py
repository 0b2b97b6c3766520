"""Transition control: does each shot boundary read as a cut, where the captions put it?

A story's shots are played back to back and PySceneDetect's `AdaptiveDetector` finds the cuts: its
content score (`content_val`, the mean HSV change between consecutive frames) is judged against
the frames around it, so camera motion inside a shot is not taken for a cut (on StoryWorld's
ground truth its plain threshold, `ContentDetector`, both misses boundaries and cuts on fast pans).
The shot starts are the caption boundaries: where the project's own methods switch caption, the
joins of an external system's per-shot files, or a single-file story's given `shot_starts` (which
these metrics check: a start placed off the real cut shows as a miss and a time error).

    cut_recall      per shot k >= 1: 1 if a detected cut lies within CUT_TOLERANCE frames of its start
    cut_precision   per story: detected cuts matched to a shot start / detected cuts
    cut_time_error  per shot k >= 1: frames between its start and the sharpest change around it

Cuts and starts are matched one to one, nearest first. The metrics register in benchmark.metrics'
registry (imported there), so they are scored, stored and reported like every other metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from benchmark.metrics import STORY_LEVEL, MetricContext, StoryOutput, Value, register_metric

CUT_METRICS = ("cut_recall", "cut_precision", "cut_time_error")  # (they need the frames only)

# A cut up to this many frames from the shot start still counts (an export or frame-rate change
# can move it by a frame or two); farther, the start is wrong or the boundary is not a cut.
CUT_TOLERANCE = 2
# Two detected cuts are at least this far apart: the shortest shot the manifest accepts
# (manifest.MIN_SHOT_FRAMES; PySceneDetect's default of 15 frames would merge short shots).
MIN_CUT_GAP = 2


@dataclass(frozen=True)
class Transitions:
    starts: list[int]  # frame index of each shot k >= 1 in the back-to-back video
    cuts: list[int]  # frames where PySceneDetect starts a new scene
    scores: np.ndarray  # content_val per frame (change from the frame before), [N]; 0 at frame 0
    matched: dict[int, int]  # shot start -> its cut (within CUT_TOLERANCE)


def detect_cuts(frames: np.ndarray, adaptive: bool = True) -> tuple[list[int], np.ndarray]:
    """PySceneDetect's AdaptiveDetector (else its fixed-threshold ContentDetector, for comparison) on
    uint8 RGB frames [N, H, W, 3]: (cut frames, content_val [N])."""
    import cv2
    from scenedetect.common import FrameTimecode
    from scenedetect.detectors import AdaptiveDetector, ContentDetector
    from scenedetect.stats_manager import StatsManager

    detector = (AdaptiveDetector if adaptive else ContentDetector)(min_scene_len=MIN_CUT_GAP)
    detector.stats_manager = stats = StatsManager()
    fps = 16.0  # (timecodes need a rate; every length here is in frames)
    cuts = []
    for i, frame in enumerate(frames):
        cuts += detector.process_frame(FrameTimecode(i, fps=fps), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    cuts += detector.post_process(FrameTimecode(len(frames) - 1, fps=fps))
    key = ContentDetector.FRAME_SCORE_KEY
    scores = [stats.get_metrics(FrameTimecode(i, fps=fps), [key])[0] for i in range(len(frames))]
    return sorted(c.frame_num for c in cuts), np.nan_to_num(np.array(scores, dtype=float))


def match_cuts(starts: list[int], cuts: list[int], tolerance: int = CUT_TOLERANCE) -> dict[int, int]:
    """Shot start -> detected cut, one to one, nearest pairs first, at most `tolerance` frames apart."""
    pairs = sorted((abs(c - s), s, c) for s in starts for c in cuts if abs(c - s) <= tolerance)
    matched, used = {}, set()
    for _, s, c in pairs:
        if s not in matched and c not in used:
            matched[s] = c
            used.add(c)
    return matched


def transitions(story: StoryOutput) -> Transitions:
    """The story's shots back to back (resized to the first frame's size), its cuts, matched."""
    global _last
    if _last is not None and _last[0] is story:  # three metrics read one detection
        return _last[1]
    size = story.frames[0].shape[1:3]
    shots = [f if f.shape[1:3] == size else _resize(f, size) for f in story.frames]
    starts = np.cumsum([len(f) for f in shots])[:-1].tolist()
    cuts, scores = detect_cuts(np.concatenate(shots))
    _last = (story, Transitions(starts, cuts, scores, match_cuts(starts, cuts)))
    return _last[1]


_last: tuple[StoryOutput, Transitions] | None = None


def _resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    return np.stack([cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_AREA) for f in frames])


@register_metric("cut_recall", higher_is_better=True, range=(0, 1), unit="share of boundaries",
                 doc=f"per shot k >= 1: 1 if PySceneDetect (AdaptiveDetector) detects a cut within {CUT_TOLERANCE} "
                     "frames of the shot's start in the shots played back to back, else 0 (does the boundary read "
                     "as a cut?)")
def cut_recall(story: StoryOutput, ctx: MetricContext) -> list[Value]:
    t = transitions(story)
    return [Value(k, float(s in t.matched), f"cut at {t.matched[s] - s:+d}" if s in t.matched else
                  f"no cut within {CUT_TOLERANCE} frames")
            for k, s in enumerate(t.starts, start=1)]


@register_metric("cut_precision", higher_is_better=True, range=(0, 1), unit="share of cuts", level="story",
                 doc="detected cuts matched one to one to a shot start (cut_recall's tolerance) / detected cuts; "
                     "a cut inside a shot (a glitch, a jump) lowers it; a story with no detected cut has no false "
                     "one: 1")
def cut_precision(story: StoryOutput, ctx: MetricContext) -> list[Value]:
    t = transitions(story)
    if not t.cuts:
        return [Value(STORY_LEVEL, 1.0, "no cut detected")]
    false = [c for c in t.cuts if c not in set(t.matched.values())]
    return [Value(STORY_LEVEL, 1 - len(false) / len(t.cuts), f"cuts inside shots at {false}" if false else "")]


@register_metric("cut_time_error", higher_is_better=False, range=(0, math.inf), unit="frames",
                 doc="per shot k >= 1: |f - start|, f the frame of the largest PySceneDetect content_val (change "
                     "from the frame before) between the middles of the shots before and after the start: where "
                     "the transition really is (a detected cut sits there)")
def cut_time_error(story: StoryOutput, ctx: MetricContext) -> list[Value]:
    t = transitions(story)
    ends = [*t.starts, sum(len(f) for f in story.frames)]
    bounds = [0, *t.starts]
    out = []
    for k, s in enumerate(t.starts, start=1):
        before, after = s - bounds[k - 1], ends[k] - s  # lengths of shots k-1 and k
        lo, hi = s - (before - 1) // 2, s + (after - 1) // 2  # frames whose change belongs to this start
        f = lo + int(np.argmax(t.scores[lo : hi + 1]))
        out.append(Value(k, float(abs(f - s)), f"sharpest change at {f - s:+d}"))
    return out


def compare_detectors() -> None:
    """Both PySceneDetect detectors on the evaluation suite's ground truth: boundaries found, extra cuts
    (`python -c "from benchmark.transitions import compare_detectors; compare_detectors()"`, ~1 min)."""
    from benchmark.suite import EVAL_SUITE, load_suite
    from shotstream.world import render_shot

    stories = [v.source for v in load_suite(EVAL_SUITE)[0]]
    found, extra, total = {True: 0, False: 0}, {True: 0, False: 0}, 0
    for story in stories:
        shots = [render_shot(story, k)[0] for k in range(story.num_shots)]
        starts = np.cumsum([len(f) for f in shots])[:-1].tolist()
        total += len(starts)
        for adaptive in (True, False):
            cuts = detect_cuts(np.concatenate(shots), adaptive)[0]
            matched = match_cuts(starts, cuts)
            found[adaptive] += len(matched)
            extra[adaptive] += len(cuts) - len(matched)
    print(f"{EVAL_SUITE} ground truth, {len(stories)} stories, {total} shot boundaries (cut within {CUT_TOLERANCE} frames):")
    for adaptive, name in ((True, "AdaptiveDetector (used)"), (False, "ContentDetector (threshold 27)")):
        print(f"  {name}: {found[adaptive]} boundaries found, {extra[adaptive]} cuts inside shots")
