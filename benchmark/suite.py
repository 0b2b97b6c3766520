"""StoryWorld suites for `run`: the committed evaluation suite, or any StoryWorld stories file.

    views, suite = load_suite("storyworld-eval")   # the 50 stories of shotstream.world (seeds 0..49)
    views, suite = load_suite("storyworld-long")   # 4 stories of 20 shots: memory and speed over many shots
    views, suite = load_suite("my_stories.json")   # any file shotstream.world.load_stories reads

Each story becomes a `StoryView` with id `story-NNN` (its position in the suite, stable under
`--limit`), the shot captions, and per shot the label dict of the LABEL_KEYS contract
(`benchmark.probe.shot_labels`: identity, scene, framing, action, pronoun). The StoryWorld
`Story` itself is kept as `source`, so the `ground_truth` method can render it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from benchmark.probe import shot_labels
from benchmark.runner import StoryView

EVAL_SUITE = "storyworld-eval"
LONG_SUITE = "storyworld-long"


def story_views(stories: Sequence) -> list[StoryView]:
    """StoryWorld stories -> StoryViews (labels mapped to the benchmark's contract)."""
    return [StoryView(id=f"story-{i:03d}", global_caption=s.global_caption or "", captions=list(s.captions),
                      labels=[shot_labels(sh.labels) if sh.labels is not None else None for sh in s.shots],
                      frames=None, source=s)
            for i, s in enumerate(stories)]


def load_suite(name: str = EVAL_SUITE) -> tuple[list[StoryView], str]:
    """(views, suite name recorded in the rows) for a committed suite or a StoryWorld stories file."""
    from shotstream.world import load_eval_suite, load_stories
    from shotstream.world.dataset import load_long_suite

    if name == EVAL_SUITE:
        return story_views(load_eval_suite()), EVAL_SUITE
    if name == LONG_SUITE:
        return story_views(load_long_suite()), LONG_SUITE
    path = Path(name)
    if not path.suffix == ".json":
        raise ValueError(f"unknown suite {name!r}: use {EVAL_SUITE!r} (the committed evaluation suite), "
                         f"{LONG_SUITE!r} (4 stories of 20 shots) or a StoryWorld stories .json file")
    return story_views(load_stories(path)), path.stem
