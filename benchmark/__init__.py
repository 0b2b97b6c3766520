"""ShotStream benchmark: metric registry, runner, tidy rows, report, and scoring of any system's videos.

Modules: metrics (registry + metrics), timing (chunk records, memory), clip / train_clip (CLIP
encoders, in-domain CLIP training), rows (tidy CSV rows, resume), runner (run / score loops),
manifest + video_io (external videos), report (leaderboard, plots, REPORT.md), cli.
"""
