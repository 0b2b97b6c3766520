"""Default locations, in one place: the shipped models and the training outputs.

Training defaults are relative to the working directory (the repository root, where `make train`
runs), as a run's config.json records them; SHIPPED is absolute, for the CLI, demo and benchmark.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED = REPO_ROOT / "checkpoints" / "tiny"  # shipped model folders, by name (`shotstream generate --model teacher`)
# The benchmark's StoryWorld judges (shotstream-bench train-clip / train-probe / train-localiser)
CLIP_TINY = REPO_ROOT / "checkpoints" / "clip-tiny"
PROBE = REPO_ROOT / "checkpoints" / "probe"
LOCALISER = REPO_ROOT / "checkpoints" / "localiser"

AUTOENCODER = "checkpoints/tiny/autoencoder"
TEACHER = "checkpoints/tiny/teacher"
SHAPE_CLASSIFIER = "checkpoints/tiny/shape_classifier"
ODE_PAIRS = "cache/ode_pairs"  # teacher trajectories (outside git)
RUNS = "runs"  # runs/<stage>/: a training run's checkpoints, metrics and final/ model copies
ODE_STUDENT = f"{RUNS}/ode/final/student_ode"  # the ODE stage's fp32 student, where self-forcing starts
