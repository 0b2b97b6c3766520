"""Copies of the character: does a wide shot draw its main character twice?

A small video model that has not learnt one character per story tends to draw two blobs of its
colour in wide shots (#32). StoryWorld paints each body colour exactly and a second character never
shares the main one's colour, so on its stories a copy can be counted without a detector:

    character_copies   per wide shot: 1 if, in at least COPY_FRAMES of SAMPLED_FRAMES evenly spaced
                       frames, the main character's hue forms two or more separate blobs of at least
                       MIN_BLOB of its expected area; else 0 (the leaderboard mean: the share of wide
                       shots with a second copy)

Pixels are the character's when their hue is within HUE_TOLERANCE of its body colour's and they
are saturated and bright enough: stripes and dots are the body colour darkened, same hue. Blobs
closer than MERGE_RADIUS of the character's size are one (a pattern or an outline splits a body
into pieces), so two copies less than half a character apart count as one. On the 71 wide shots
of the evaluation suite's ground truth it counts no copy, and a copy on every one of them with the
character pasted a box's width beside itself (`tests/test_copies.py` checks the first 20
stories). Shots without a colour label (real videos) are missing, never 0.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import ndimage

from benchmark.metrics import MetricContext, StoryOutput, Value, register_metric
from shotstream.world.vocab import COLOUR_RGB, FRAMING_SIZE

HUE_TOLERANCE = 18.0  # degrees; StoryWorld's closest body colours (yellow, orange) are 24 apart
MIN_SATURATION, MIN_VALUE = 0.7, 0.3  # the pattern shade (0.45 of the body) stays above both
MERGE_RADIUS = 0.25  # of the character's expected side
MIN_BLOB = 0.15  # of its expected area (side^2 / 2: a shape fills about half its box)
SAMPLED_FRAMES, COPY_FRAMES = 9, 2


def hsv(rgb: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [H, W, 3]: hue in degrees [0, 360), saturation and value in [0, 1]."""
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)


def character_blobs(frame: np.ndarray, hue: float, side: float) -> list[int]:
    """Areas (pixels) of the separate blobs of hue `hue` (degrees) in one frame [H, W, 3] that are
    large enough to be a character of expected side `side` (pixels), largest first."""
    h, s, v = np.moveaxis(hsv(frame), -1, 0)
    mask = (np.abs((h - hue + 180) % 360 - 180) < HUE_TOLERANCE) & (s > MIN_SATURATION) & (v > MIN_VALUE)
    r = max(1, round(MERGE_RADIUS * side))
    groups, n = ndimage.label(ndimage.binary_dilation(mask, structure=np.ones((2 * r + 1, 2 * r + 1), bool)))
    areas = ndimage.sum(mask, groups, range(1, n + 1)) if n else []
    return sorted((int(a) for a in areas if a >= MIN_BLOB * side * side / 2), reverse=True)


def has_copy(frames: np.ndarray, colour: str) -> bool:
    """Whether a wide shot [F, H, W, 3] shows its main character of `colour` twice."""
    side = FRAMING_SIZE["wide"] * min(frames.shape[1:3])
    hue = float(hsv(np.array([[COLOUR_RGB[colour]]], np.uint8))[0, 0, 0])
    picks = np.round(np.linspace(0, len(frames) - 1, SAMPLED_FRAMES)).astype(int)
    return sum(len(character_blobs(frames[i], hue, side)) >= 2 for i in picks) >= COPY_FRAMES


@register_metric("character_copies", higher_is_better=False, range=(0, 1), unit="share of wide shots",
                 doc=f"per wide shot: 1 if in >= {COPY_FRAMES} of {SAMPLED_FRAMES} evenly spaced frames the main "
                     f"character's colour (hue within {HUE_TOLERANCE:g} degrees, saturated) forms >= 2 separate "
                     f"blobs of character size, else 0; needs the colour and framing labels")
def character_copies(story: StoryOutput, ctx: MetricContext) -> list[Value]:
    out = []
    for k, labels in enumerate(story.labels):
        if not labels or labels.get("colour") not in COLOUR_RGB or "framing" not in labels:
            out.append(Value(k, math.nan, "missing: no StoryWorld colour and framing labels"))
        elif labels["framing"] == "wide":
            out.append(Value(k, float(has_copy(story.frames[k], labels["colour"]))))
    return out
