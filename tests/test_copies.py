"""benchmark.copies: a second copy of the character in a wide shot."""

import math

import numpy as np
import pytest

from benchmark.copies import has_copy
from benchmark.metrics import StoryOutput, get_metrics, score_story
from benchmark.probe import shot_labels
from helpers import metrics_registered_on_import
from shotstream.world import load_eval_suite
from shotstream.world.render import render_shot


def wide_shots(stories):
    """(frames, boxes [F, n, 4], labels dict) of every wide shot of `stories`."""
    for story in stories:
        for k, shot in enumerate(story.shots):
            if shot.labels.framing == "wide":
                frames, boxes = render_shot(story, k)
                yield frames, boxes, shot_labels(shot.labels)


def pasted_twice(frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The shot with its main character's box copied two boxes to its right (left near the right
    edge): a box's width apart, farther than copies.MERGE_RADIUS merges."""
    out = frames.copy()
    width = frames.shape[2]
    for f, box in enumerate(boxes[:, 0]):
        x0, y0, x1, y1 = (min(max(int(round(v)), 0), width) for v in box)
        shift = 2 * (x1 - x0) * (1 if x1 + 2 * (x1 - x0) <= width else -1)
        out[f, y0:y1, x0 + shift : x1 + shift] = frames[f, y0:y1, x0:x1]
    return out


@pytest.fixture(scope="module")
def suite_wide_shots():
    return list(wide_shots(load_eval_suite()[:20]))


def test_ground_truth_wide_shots_show_one_character_and_pasting_it_twice_shows_two(suite_wide_shots):
    """Striped and dotted bodies (the pattern splits the colour into pieces), second characters of
    another colour and every scene: one copy; the same shots with the character pasted beside
    itself: two."""
    assert len(suite_wide_shots) >= 20
    patterns = {labels["pattern"] for _, _, labels in suite_wide_shots}
    assert patterns == {"solid", "striped", "dotted"}
    assert [has_copy(f, labels["colour"]) for f, _, labels in suite_wide_shots] == [False] * len(suite_wide_shots)
    assert all(has_copy(pasted_twice(f, b), labels["colour"]) for f, b, labels in suite_wide_shots)


def test_one_stray_frame_is_not_a_copy(suite_wide_shots):
    frames, boxes, labels = suite_wide_shots[0]
    twice = pasted_twice(frames, boxes)
    one_frame = frames.copy()
    one_frame[len(frames) // 2] = twice[len(frames) // 2]
    assert not has_copy(one_frame, labels["colour"])


def test_a_body_cut_in_two_by_a_dark_line_is_one_character(suite_wide_shots):
    """A blurred outline or a stripe can cut a generated body into halves: still one character."""
    for frames, boxes, labels in suite_wide_shots[:5]:
        cut = frames.copy()
        for f, (x0, _, x1, _) in enumerate(boxes[:, 0]):
            middle = int(round((x0 + x1) / 2))
            cut[f, :, middle - 1 : middle + 1] = 20
        assert not has_copy(cut, labels["colour"])


def test_the_metric_scores_wide_shots_only_and_unlabelled_shots_are_missing(suite_wide_shots):
    (metric,) = get_metrics(["character_copies"])
    frames, boxes, labels = suite_wide_shots[0]
    close_up = dict(labels, framing="close_up")
    story = StoryOutput("s", ["a", "b", "c", "d"], [frames, pasted_twice(frames, boxes), frames, frames],
                        [labels, labels, close_up, None])
    rows = {r.shot: r for r in score_story(story, [metric])}
    assert sorted(rows) == [0, 1, 3]  # the close-up has no row: it is not a wide shot
    assert (rows[0].value, rows[1].value) == (0.0, 1.0)
    assert math.isnan(rows[3].value) and rows[3].note.startswith("missing")


def test_a_fresh_import_of_the_metrics_registers_character_copies():
    assert "character_copies" in metrics_registered_on_import()
