"""ShotStream benchmark: metric registry, runner, tidy rows, report, and scoring of any system's videos.

Modules: metrics (registry + metrics), timing (chunk records, memory), clip / train_clip (CLIP
encoders, in-domain CLIP training), probe (StoryWorld label probe), suite (StoryWorld suites),
rows (tidy CSV rows, resume), runner (run / score loops),
manifest (external videos, read with shotstream.video), report (leaderboard, plots, REPORT.md), cli,
transitions (cut metrics) and copies (copies of the character), registered here so that every
entry point sees them.
"""

from benchmark import copies, transitions  # noqa: F401  (register character_copies and the cut metrics)
