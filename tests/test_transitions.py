"""Transition control (benchmark/transitions.py) on synthetic videos whose cuts are known: scenes of
textured colour with a camera pan inside each shot, cut at chosen frames."""

from __future__ import annotations

import json
import math

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest

from benchmark.cli import main as bench_main
from benchmark.metrics import STORY_LEVEL, StoryOutput, get_metrics, score_story
from benchmark.transitions import CUT_TOLERANCE, detect_cuts, match_cuts
from helpers import metrics_registered_on_import

CUT_METRICS = get_metrics(["cut_recall", "cut_precision", "cut_time_error"])


def test_a_fresh_import_of_the_metrics_registers_the_cut_metrics():
    """Every entry point (benchmark run, score, report) sees them, not only code that happens to
    import benchmark.transitions itself, as this file does."""
    assert {"cut_recall", "cut_precision", "cut_time_error"} <= metrics_registered_on_import()


def scene(seed: int, frames: int, size: int = 64) -> np.ndarray:
    """A textured scene panned one pixel a frame: motion inside the shot that is not a cut."""
    rng = np.random.default_rng(seed)
    colour = rng.integers(40, 216, 3)
    texture = rng.integers(-40, 41, (size, 2 * size, 1))
    world = np.clip(colour + texture, 0, 255).astype(np.uint8)  # [H, 2W, 3]
    return np.stack([world[:, i : i + size] for i in range(frames)])


def values(rows, metric):
    return {r.shot: r.value for r in rows if r.metric == metric}


def cut_story(lengths, seeds=None) -> StoryOutput:
    seeds = seeds or range(len(lengths))
    shots = [scene(s, n) for s, n in zip(seeds, lengths)]
    return StoryOutput("s", [f"shot {k}" for k in range(len(shots))], shots, [None] * len(shots))


def test_detects_the_known_cuts_and_not_the_pan():
    video = np.concatenate([scene(0, 12), scene(1, 9), scene(2, 15)])
    cuts, scores = detect_cuts(video)
    assert cuts == [12, 21]
    assert scores.shape == (36,) and scores[12] > 3 * np.median(scores)


def test_matching_is_one_to_one_nearest_first_within_the_tolerance():
    assert match_cuts([10, 20], [11, 19, 30]) == {10: 11, 20: 19}
    assert match_cuts([10, 12], [11]) == {10: 11}  # one cut serves one start
    assert match_cuts([10], [10 + CUT_TOLERANCE + 1]) == {}


def test_every_boundary_a_cut_scores_perfectly():
    rows = score_story(cut_story([12, 9, 15]), CUT_METRICS)
    assert values(rows, "cut_recall") == {1: 1.0, 2: 1.0}
    assert values(rows, "cut_precision") == {STORY_LEVEL: 1.0}
    assert values(rows, "cut_time_error") == {1: 0.0, 2: 0.0}


def test_a_boundary_in_the_same_scene_is_not_a_cut():
    # shots 1 and 2 continue one pan: the caption changes, the picture does not
    shots = [scene(0, 12), scene(1, 20)]
    story = StoryOutput("s", ["a", "b", "c"], [shots[0], shots[1][:9], shots[1][9:]], [None] * 3)
    rows = score_story(story, CUT_METRICS)
    assert values(rows, "cut_recall") == {1: 1.0, 2: 0.0}
    assert values(rows, "cut_precision") == {STORY_LEVEL: 1.0}


def test_a_cut_inside_a_shot_lowers_precision():
    # shot 1 jumps to a third scene halfway: 2 cuts detected, one at a shot start
    shot1 = np.concatenate([scene(1, 8), scene(2, 8)])
    story = StoryOutput("s", ["a", "b"], [scene(0, 12), shot1], [None] * 2)
    rows = score_story(story, CUT_METRICS)
    assert values(rows, "cut_precision") == {STORY_LEVEL: 0.5}
    assert values(rows, "cut_recall") == {1: 1.0}


@pytest.mark.parametrize("shift", [-4, -3, -1, 1, 2, 3])
def test_given_shot_starts_off_the_real_cut_show_as_time_error(shift):
    video = np.concatenate([scene(0, 16), scene(1, 16)])  # the real cut: frame 16
    start = 16 + shift
    story = StoryOutput("s", ["a", "b"], [video[:start], video[start:]], [None] * 2)
    rows = score_story(story, CUT_METRICS)
    assert values(rows, "cut_time_error") == {1: abs(shift)}
    assert values(rows, "cut_recall") == {1: float(abs(shift) <= CUT_TOLERANCE)}


def test_score_checks_a_single_file_storys_shot_starts(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    iio.imwrite(root / "story.mp4", np.concatenate([scene(0, 16), scene(1, 16), scene(2, 16)]), fps=8,
                codec="libx264")
    manifest = {"method": "ext", "stories": [
        {"id": "right", "video": "story.mp4", "shot_starts": [0, 16, 32], "captions": ["a", "b", "c"]},
        {"id": "off", "video": "story.mp4", "shot_starts": [0, 20, 32], "captions": ["a", "b", "c"]}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    results = tmp_path / "results"
    assert bench_main(["score", "--manifest", str(root / "manifest.json"), "--results", str(results),
                       "--metrics", "cut_recall,cut_precision,cut_time_error", "--quiet"]) == 0
    rows = pd.read_csv(results / "rows.csv").set_index(["story", "metric", "shot"])["value"]
    assert rows[("right", "cut_recall", 1)] == rows[("right", "cut_recall", 2)] == 1
    assert rows[("off", "cut_recall", 1)] == 0 and rows[("off", "cut_time_error", 1)] == 4
    board = pd.read_csv(results / "leaderboard.csv")
    assert math.isclose(board.loc[0, "cut_recall"], 3 / 4) and board.loc[0, "failures"] == 0


def test_storyworld_ground_truth_boundaries_read_as_cuts():
    # story 34 of the evaluation suite: its scenes differ little, one framing from the next (a fixed
    # threshold, ContentDetector's 27, finds none of its cuts); judged against its neighbours, each is
    from benchmark.suite import load_suite
    from shotstream.world import render_shot

    source = load_suite("storyworld-eval")[0][34].source
    shots = [render_shot(source, k)[0] for k in range(source.num_shots)]
    rows = score_story(StoryOutput("gt", [f"shot {k}" for k in range(len(shots))], shots, [None] * len(shots)), CUT_METRICS)
    assert set(values(rows, "cut_recall").values()) == {1.0}
    assert values(rows, "cut_precision") == {STORY_LEVEL: 1.0}
    assert set(values(rows, "cut_time_error").values()) == {0.0}
