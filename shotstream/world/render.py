"""Vectorised numpy renderer for StoryWorld shots.

A shot is a static procedural background (drawn once per shot, a few pixels wider than the
frame so the camera can pan) plus characters composited per frame inside their own bounding
squares. Nothing loops over pixels in Python.

Coordinates: pixel video is uint8 [F, H, W, 3]. The background is drawn in *world* units
(1 = height of the wide view; the ground starts near y = 0.6 and characters stand at y = 0.8),
so a closer framing zooms the same scene. Boxes are float32 [F, n_chars, 4] = (x0, y0, x1, y1)
in pixels, x1/y1 exclusive: the tight box of the pixels each character painted (outline
included), main character first.
"""

from __future__ import annotations

import math

import numpy as np

from shotstream.config import VideoConfig
from shotstream.world import vocab
from shotstream.world.story import Character, Story

# Camera per framing: background zoom and where the characters' feet are (fraction of H).
ZOOM = {"wide": 1.0, "medium": 1.4, "close_up": 2.0}
FEET_Y = {"wide": 0.80, "medium": 0.86, "close_up": 0.93}
WORLD_FEET_Y = 0.8  # world y that maps to the feet row
# How far below the centre each shape reaches (in half-sizes), so every shape stands on the ground.
SHAPE_BOTTOM = {"circle": 0.95, "square": 0.82, "triangle": 0.8, "star": 0.81, "diamond": 1.0, "cross": 0.95}

OUTLINE_RGB = (25, 25, 30)
EYE_RGB = (250, 250, 250)
PUPIL_RGB = (15, 15, 15)
PATTERN_SHADE = 0.45  # stripes and dots are the body colour darkened: hue stays readable


# ---------------------------------------------------------------------------------------------
# Background canvas in world coordinates


class Canvas:
    """A float image with a world <-> pixel mapping (isotropic, axis aligned)."""

    def __init__(self, height: int, width: int, zoom: float, feet_frac: float, x_centre: float):
        self.img = np.zeros((height, width, 3), np.float32)  # [H, Wc, 3], 0..255
        self.scale = zoom * height  # pixels per world unit
        self.aspect = width / height
        self.ys = WORLD_FEET_Y + (np.arange(height, dtype=np.float32) + 0.5 - feet_frac * height) / self.scale  # [H]
        self.xs = x_centre + (np.arange(width, dtype=np.float32) + 0.5 - width / 2) / self.scale  # [Wc]

    def window(self, x0, x1, y0, y1):
        """Pixel slices covering the world box, plus the local world grids X [1, w] and Y [h, 1]."""
        c0, c1 = np.searchsorted(self.xs, [x0, x1])
        r0, r1 = np.searchsorted(self.ys, [y0, y1])
        rs, cs = slice(r0, r1), slice(c0, c1)
        return rs, cs, self.xs[cs][None, :], self.ys[rs][:, None]

    def paint(self, rs, cs, mask, colour):
        if mask.any():
            self.img[rs, cs][mask] = colour

    def gradient(self, y0, y1, top, bottom):
        """Fill rows with world y in [y0, y1) with a vertical colour gradient."""
        rs, _, _, Y = self.window(-np.inf, np.inf, y0, y1)
        t = np.clip((Y - y0) / max(y1 - y0, 1e-6), 0, 1)[..., None]  # [h, 1, 1]
        self.img[rs] = (1 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32)

    def below_curve(self, curve, top, bottom, y_lo=0.0, y_hi=2.0):
        """Fill everything under y = curve(x) down to y_hi with a gradient (hills, dunes, floors)."""
        rs, cs, X, Y = self.window(-np.inf, np.inf, y_lo, y_hi)
        mask = Y >= curve(X)  # [h, Wc]
        t = np.clip((Y - y_lo) / (y_hi - y_lo), 0, 1)[..., None]
        colour = (1 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32)  # [h, 1, 3]
        region = self.img[rs]
        region[mask] = np.broadcast_to(colour, region.shape)[mask]

    def rect(self, x0, x1, y0, y1, colour):
        rs, cs, _, _ = self.window(x0, x1, y0, y1)
        self.img[rs, cs] = colour

    def disc(self, cx, cy, r, colour, ring: float = 0.0):
        """A disc (or a ring of width `ring`) at least about one pixel wide, so far stars still show."""
        r = max(r, 0.6 / self.scale)
        rs, cs, X, Y = self.window(cx - r - 1 / self.scale, cx + r + 1 / self.scale, cy - r - 1 / self.scale, cy + r + 1 / self.scale)
        d2 = (X - cx) ** 2 + (Y - cy) ** 2
        mask = d2 <= r * r
        if ring:
            mask &= d2 >= (r - max(ring, 0.8 / self.scale)) ** 2
        self.paint(rs, cs, mask, colour)

    def ellipse(self, cx, cy, rx, ry, colour):
        rs, cs, X, Y = self.window(cx - rx, cx + rx, cy - ry, cy + ry)
        self.paint(rs, cs, ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2 <= 1, colour)

    def triangle(self, x, apex_y, base_y, half_width, colour):
        """Upright isosceles triangle (tree canopies, mountains)."""
        rs, cs, X, Y = self.window(x - half_width, x + half_width, apex_y, base_y)
        self.paint(rs, cs, np.abs(X - x) <= half_width * (Y - apex_y) / (base_y - apex_y), colour)


def _sine(amps_freqs_phases, base):
    def curve(X):
        return base + sum(a * np.sin(f * X + p) for a, f, p in amps_freqs_phases)

    return curve


def _waves(rng, base, amps, freqs):
    return _sine([(a, f, rng.uniform(0, 2 * np.pi)) for a, f in zip(amps, freqs)], base)


def _pine(c: Canvas, x, base, h, green, snow=False):
    """A fir tree of height h standing at (x, base): trunk plus three stacked tiers."""
    c.rect(x - 0.012, x + 0.012, base - 0.09, base, (95, 65, 40))
    for k in range(3):  # top tier first
        apex, tier_base, half_width = base - h + 0.17 * k * h, base - 0.06 - (2 - k) * 0.05, 0.05 + 0.025 * k
        c.triangle(x, apex, tier_base, half_width, green)
        if snow:  # a white cap on each tier
            cap = 0.3 * (tier_base - apex)
            c.triangle(x, apex, apex + cap, 0.3 * half_width, (245, 248, 252))


def _draw_forest(c: Canvas, rng):
    A = c.aspect
    c.gradient(0.0, 0.6, (135, 190, 230), (200, 225, 235))
    c.below_curve(_waves(rng, 0.5, (0.03, 0.015), (7, 17)), (80, 120, 85), (70, 110, 75), 0.3, 0.6)
    c.gradient(0.6, 2.0, (100, 145, 65), (55, 100, 45))
    trees = sorted((rng.uniform(0.6, 0.7), rng.uniform(-0.2, A + 0.2), rng.uniform(0.28, 0.42)) for _ in range(8))
    for base, x, h in trees:
        shade = rng.uniform(0.8, 1.15)
        _pine(c, x, base, h, (30 * shade, 85 * shade, 45 * shade))
    for _ in range(12):  # bushes
        c.ellipse(rng.uniform(-0.2, A + 0.2), rng.uniform(0.66, 1.0), 0.03, 0.015, (60, 115, 50))


def _draw_beach(c: Canvas, rng):
    A = c.aspect
    c.gradient(0.0, 0.5, (110, 180, 235), (185, 220, 240))
    c.disc(rng.uniform(0.1, A - 0.1), rng.uniform(0.1, 0.22), 0.06, (255, 245, 190))
    c.gradient(0.5, 0.63, (30, 110, 170), (60, 150, 190))
    rs, cs, X, Y = c.window(-np.inf, np.inf, 0.5, 0.62)
    c.paint(rs, cs, np.sin(X * 70 + 5 * np.sin(Y * 50)) > 0.85, (150, 205, 225))  # wave crests
    c.below_curve(_waves(rng, 0.615, (0.006,), (25,)), (240, 242, 238), (240, 242, 238), 0.6, 0.64)  # foam
    c.below_curve(_waves(rng, 0.63, (0.006,), (25,)), (235, 215, 165), (215, 190, 135), 0.6, 2.0)
    for _ in range(10):  # pebbles and shells
        c.ellipse(rng.uniform(-0.2, A + 0.2), rng.uniform(0.68, 1.0), 0.012, 0.007, (195, 165, 135))


def _draw_city(c: Canvas, rng):
    A = c.aspect
    c.gradient(0.0, 0.62, (160, 190, 220), (215, 225, 235))
    for _ in range(11):
        x0, w, top = rng.uniform(-0.3, A + 0.15), rng.uniform(0.1, 0.2), rng.uniform(0.12, 0.45)
        g = rng.uniform(85, 150)
        c.rect(x0, x0 + w, top, 0.62, (g, g + 5, g + 15))
        rs, cs, X, Y = c.window(x0 + 0.01, x0 + w - 0.01, top + 0.02, 0.6)
        windows = ((X * 35) % 1 < 0.55) & ((Y * 30) % 1 < 0.5)
        c.paint(rs, cs, windows, (230, 225, 170) if rng.random() < 0.5 else (60, 70, 85))
    c.gradient(0.62, 0.68, (175, 175, 170), (160, 160, 155))  # sidewalk
    c.gradient(0.68, 2.0, (80, 80, 85), (55, 55, 60))  # road
    rs, cs, X, Y = c.window(-np.inf, np.inf, 0.9, 0.915)
    c.paint(rs, cs, np.broadcast_to((X * 5) % 1 < 0.5, (Y.shape[0], X.shape[1])), (230, 230, 215))


def _draw_night(c: Canvas, rng):
    A = c.aspect
    c.gradient(0.0, 0.65, (8, 12, 40), (40, 45, 95))
    for _ in range(70):
        c.disc(rng.uniform(-0.2, A + 0.2), rng.uniform(0, 0.6), rng.uniform(0.002, 0.006), np.full(3, 255.0) * rng.uniform(0.7, 1))
    mx, my = rng.uniform(0.1, A - 0.1), rng.uniform(0.1, 0.25)
    c.disc(mx, my, 0.07, (240, 240, 210))
    for _ in range(3):  # craters
        c.disc(mx + rng.uniform(-0.04, 0.04), my + rng.uniform(-0.04, 0.04), 0.012, (210, 210, 185))
    c.below_curve(_waves(rng, 0.6, (0.03, 0.01), (6, 15)), (30, 40, 55), (15, 20, 30), 0.5, 2.0)


def _draw_snow(c: Canvas, rng):
    A = c.aspect
    c.gradient(0.0, 0.6, (195, 210, 230), (230, 235, 242))
    for _ in range(3):
        x, apex, hw = rng.uniform(-0.1, A + 0.1), rng.uniform(0.22, 0.38), rng.uniform(0.22, 0.35)
        c.triangle(x, apex, 0.6, hw, (150, 165, 195))
        c.triangle(x, apex, apex + 0.3 * (0.6 - apex), 0.3 * hw, (245, 248, 252))
    c.below_curve(_waves(rng, 0.6, (0.01,), (9,)), (245, 248, 252), (205, 218, 238), 0.55, 2.0)
    for base, x, h in sorted((rng.uniform(0.6, 0.68), rng.uniform(-0.2, A + 0.2), rng.uniform(0.25, 0.38)) for _ in range(5)):
        _pine(c, x, base, h, (35, 75, 60), snow=True)
    for _ in range(60):  # snowflakes
        c.disc(rng.uniform(-0.2, A + 0.2), rng.uniform(0, 1.1), rng.uniform(0.003, 0.007), (252, 252, 255))


def _draw_desert(c: Canvas, rng):
    A = c.aspect
    c.gradient(0.0, 0.6, (245, 185, 115), (250, 225, 170))
    c.disc(rng.uniform(0.1, A - 0.1), rng.uniform(0.1, 0.2), 0.08, (255, 240, 195))
    c.below_curve(_waves(rng, 0.53, (0.04,), (5,)), (210, 155, 95), (215, 160, 95), 0.4, 0.7)
    c.below_curve(_waves(rng, 0.62, (0.03,), (8,)), (230, 180, 110), (232, 185, 115), 0.5, 0.75)
    c.below_curve(_waves(rng, 0.7, (0.015,), (6,)), (238, 195, 130), (222, 178, 112), 0.6, 2.0)
    rs, cs, X, Y = c.window(-np.inf, np.inf, 0.72, 2.0)
    c.paint(rs, cs, np.sin(X * 60 + Y * 140) > 0.9, (215, 170, 105))  # wind ripples
    for _ in range(3):  # cacti
        x, base, h = rng.uniform(-0.1, A + 0.1), rng.uniform(0.64, 0.7), rng.uniform(0.12, 0.2)
        green = (60, 130, 70)
        c.rect(x - 0.014, x + 0.014, base - h, base, green)
        c.rect(x - 0.05, x - 0.014, base - 0.55 * h, base - 0.45 * h, green)
        c.rect(x - 0.05, x - 0.035, base - 0.8 * h, base - 0.45 * h, green)
        c.rect(x + 0.014, x + 0.05, base - 0.4 * h, base - 0.3 * h, green)
        c.rect(x + 0.035, x + 0.05, base - 0.7 * h, base - 0.3 * h, green)


def _draw_underwater(c: Canvas, rng):
    A = c.aspect
    c.gradient(0.0, 1.2, (30, 120, 170), (10, 55, 110))
    rs, cs, X, Y = c.window(-np.inf, np.inf, 0.0, 0.7)
    rays = (np.sin(X * 9 + Y * 3) > 0.93)
    c.img[rs, cs][rays] += 18  # light rays from the surface
    c.below_curve(_waves(rng, 0.66, (0.02,), (6,)), (190, 175, 125), (150, 135, 95), 0.6, 2.0)
    for _ in range(6):  # seaweed
        xk, top, ph = rng.uniform(-0.2, A + 0.2), rng.uniform(0.3, 0.5), rng.uniform(0, 6.3)
        rs, cs, X, Y = c.window(xk - 0.04, xk + 0.04, top, 0.7)
        c.paint(rs, cs, np.abs(X - (xk + 0.015 * np.sin(Y * 25 + ph))) < 0.011, (30, 130, 80))
    for _ in range(4):  # rocks
        c.ellipse(rng.uniform(-0.2, A + 0.2), rng.uniform(0.66, 0.72), rng.uniform(0.03, 0.06), 0.025, (95, 100, 110))
    for _ in range(15):  # bubbles
        c.disc(rng.uniform(-0.2, A + 0.2), rng.uniform(0.0, 0.65), rng.uniform(0.008, 0.02), (185, 225, 245), ring=0.004)


SCENE_PAINTERS = {
    "forest": _draw_forest,
    "beach": _draw_beach,
    "city": _draw_city,
    "night": _draw_night,
    "snow": _draw_snow,
    "desert": _draw_desert,
    "underwater": _draw_underwater,
}
assert set(SCENE_PAINTERS) == set(vocab.SCENES)


def render_background(scene: str, framing: str, height: int, width: int, story_seed: int,
                      x_offset: float = 0.0, noise_seed: int = 0) -> np.ndarray:
    """uint8 [H, width, 3]. The layout depends only on (story_seed, scene), so a scene revisited
    later in a story is the same place; framing zooms it, x_offset moves the camera sideways."""
    c = Canvas(height, width, ZOOM[framing], FEET_Y[framing], x_centre=width / height / 2 + x_offset)
    SCENE_PAINTERS[scene](c, np.random.default_rng([story_seed, vocab.SCENES.index(scene), 0x5CE4E]))
    # Fixed fine texture, so flat areas are not perfectly flat (as in real footage).
    c.img += np.random.default_rng([noise_seed, 0x7E47]).standard_normal((height, width, 1), np.float32) * 3.0
    return np.clip(c.img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Characters


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in the character's local frame: u right, v down, the body fits about [-1, 1]^2."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= 0.95**2
    if shape == "square":
        return np.maximum(au, av) <= 0.82
    if shape == "triangle":  # apex up at v = -0.95, flat base at v = 0.8
        return (v <= 0.8) & (au <= 0.95 * (v + 0.95) / 1.75)
    if shape == "diamond":  # taller than wide, so it never looks like a rotated square
        return au / 0.72 + av <= 1.0
    if shape == "cross":
        return ((au <= 0.33) & (av <= 0.95)) | ((av <= 0.33) & (au <= 0.95))
    if shape == "star":  # five points, one up; outer radius 1, inner 0.5
        r = np.sqrt(u * u + v * v)
        a = np.arctan2(u, -v)  # 0 = straight up
        a = np.abs((a + np.pi / 5) % (2 * np.pi / 5) - np.pi / 5)  # angle to the nearest tip, [0, pi/5]
        tip, inner = np.array([1.0, 0.0]), 0.5 * np.array([np.cos(np.pi / 5), np.sin(np.pi / 5)])
        e = inner - tip
        # distance along the ray at angle a to the edge tip->inner vertex
        edge_r = (tip[0] * e[1] - tip[1] * e[0]) / (np.cos(a) * e[1] - np.sin(a) * e[0])
        return r <= edge_r
    raise ValueError(f"unknown shape {shape!r}")


def pattern_mask(pattern: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Where the darker pattern colour goes (rotates with the body, so spins are visible)."""
    if pattern == "solid":
        return np.zeros(np.broadcast_shapes(u.shape, v.shape), bool)
    if pattern == "striped":  # diagonal bands
        return ((u - v) / 0.8) % 1.0 < 0.5
    if pattern == "dotted":
        du, dv = (u / 0.7 + 0.5) % 1.0 - 0.5, (v / 0.7 + 0.5) % 1.0 - 0.5
        return du * du + dv * dv < 0.3**2
    raise ValueError(f"unknown pattern {pattern!r}")


def draw_character(frame: np.ndarray, char: Character, cx: float, cy: float, size: float,
                   angle: float = 0.0, sx: float = 1.0, sy: float = 1.0, look: float = 0.0):
    """Paint `char` into frame (uint8 [H, W, 3], in place) centred at pixel (cx, cy), `size` px
    across, rotated by `angle` rad and squashed by (sx, sy). Returns its tight box (x0, y0, x1, y1)
    or None if no pixel landed in the frame."""
    H, W, _ = frame.shape
    half = size / 2
    outline = max(1.0, 0.06 * size)
    reach = half * 1.2 * max(sx, sy) + outline + 1
    r0, r1 = max(0, int(cy - reach)), min(H, int(math.ceil(cy + reach)))
    c0, c1 = max(0, int(cx - reach)), min(W, int(math.ceil(cx + reach)))
    if r0 >= r1 or c0 >= c1:
        return None
    dy = (np.arange(r0, r1, dtype=np.float32) + 0.5 - cy)[:, None]  # [h, 1]
    dx = (np.arange(c0, c1, dtype=np.float32) + 0.5 - cx)[None, :]  # [1, w]
    ca, sa = math.cos(angle), math.sin(angle)
    u = (ca * dx + sa * dy) / (half * sx)  # [h, w] local frame, rotated with the body
    v = (-sa * dx + ca * dy) / (half * sy)
    grow = 1 + outline / half
    body = shape_mask(char.shape, u, v)
    silhouette = shape_mask(char.shape, u / grow, v / grow) | body
    if not silhouette.any():
        return None
    base = np.array(vocab.COLOUR_RGB[char.colour], np.float32)
    eyes = ((np.abs(u) - 0.3) ** 2 + v * v <= 0.17**2) & body
    # both pupils shift the same way, towards where the character looks (its walking direction)
    pupils = (u - (0.3 * np.sign(u) + 0.07 * look)) ** 2 + v * v <= 0.09**2
    pupils &= eyes

    region = frame[r0:r1, c0:c1]
    region[silhouette & ~body] = OUTLINE_RGB
    region[body] = base.astype(np.uint8)
    region[body & pattern_mask(char.pattern, u, v) & ~eyes] = (base * PATTERN_SHADE).astype(np.uint8)
    region[eyes] = EYE_RGB
    region[pupils] = PUPIL_RGB
    rows, cols = np.flatnonzero(silhouette.any(1)), np.flatnonzero(silhouette.any(0))
    return (c0 + cols[0], r0 + rows[0], c0 + cols[-1] + 1, r0 + rows[-1] + 1)


def draw_shadow(frame: np.ndarray, cx: float, feet_y: float, size: float, lift: float):
    """Darken an ellipse on the ground under a character; it shrinks as the character rises."""
    H, W, _ = frame.shape
    k = 1.0 / (1.0 + 1.5 * lift / size)
    rx, ry = 0.45 * size * k, max(1.0, 0.08 * size * k)
    r0, r1 = max(0, int(feet_y - ry)), min(H, int(math.ceil(feet_y + ry)))
    c0, c1 = max(0, int(cx - rx)), min(W, int(math.ceil(cx + rx)))
    if r0 >= r1 or c0 >= c1:
        return
    dy = (np.arange(r0, r1) + 0.5 - feet_y)[:, None] / ry
    dx = (np.arange(c0, c1) + 0.5 - cx)[None, :] / rx
    region = frame[r0:r1, c0:c1]
    mask = dx * dx + dy * dy <= 1
    region[mask] = (region[mask] * 0.65).astype(np.uint8)


def action_poses(action: str, num_frames: int, fps: float, size: float, max_jump: float) -> dict:
    """Per-frame pose of a character doing `action`: arrays [F] of
    walk (0..1 position along the walking range, NaN = stay home), dx (px), lift (px above the
    ground), angle (rad), sx, sy (squash) and look (-1 left .. 1 right).

    Periodic motions run in seconds (so they look the same at any fps); walks and jumps span
    the shot so every shot shows its whole action."""
    F = num_frames
    t = np.arange(F, dtype=np.float64) / fps  # seconds
    duration = max((F - 1) / fps, 1e-6)
    frac = np.arange(F) / max(F - 1, 1)
    z = np.zeros(F)
    pose = dict(walk=np.full(F, np.nan), dx=z.copy(), lift=z.copy(), angle=z.copy(), sx=np.ones(F), sy=np.ones(F), look=z.copy())
    if action in ("walk_left", "walk_right"):
        step = np.sin(2 * np.pi * 2.0 * t)  # two steps a second
        pose["walk"] = 1 - frac if action == "walk_left" else frac
        pose["lift"] = 0.08 * size * np.abs(step)
        pose["angle"] = 0.12 * step
        pose["look"][:] = -1.0 if action == "walk_left" else 1.0
    elif action == "jump":  # one jump of ~0.9 s centred in the shot, squashed on take-off and landing
        # A one-frame shot (joint image training) is a long shot's opening frame: at rest before take-off.
        jump = min(0.9, duration)
        s = (t - (duration - jump) / 2) / jump if F > 1 else np.full(F, -1.0)
        pose["lift"] = np.where((s > 0) & (s < 1), 4 * s * (1 - s), 0.0) * max_jump
        squash = 0.2 * (np.clip(1 - np.abs(s) / 0.12, 0, 1) + np.clip(1 - np.abs(s - 1) / 0.12, 0, 1))
        pose["sy"], pose["sx"] = 1 - squash, 1 + 0.6 * squash
    elif action == "spin":
        pose["angle"] = 2 * np.pi * 1.0 * t  # one turn a second
    elif action == "bounce":  # 2.5 small hops a second
        p = (t * 2.5) % 1.0
        pose["lift"] = 4 * p * (1 - p) * 0.35 * size
        contact = np.clip(1 - np.minimum(p, 1 - p) / 0.12, 0, 1)
        pose["sy"], pose["sx"] = 1 - 0.2 * contact, 1 + 0.15 * contact
    elif action == "shake":
        pose["dx"] = 0.1 * size * np.sin(2 * np.pi * 5.0 * t)
        pose["angle"] = 0.15 * np.sin(2 * np.pi * 5.0 * t + 1.0)
    elif action == "stay":  # breathing, so the shot is not a still image
        breathe = 0.03 * np.sin(2 * np.pi * 0.8 * t)
        pose["sy"], pose["sx"] = 1 + breathe, 1 - breathe
    else:
        raise ValueError(f"unknown action {action!r}")
    return pose


# ---------------------------------------------------------------------------------------------
# Shots and stories


def render_shot(story: Story, shot_index: int, video_cfg: VideoConfig | None = None):
    """Render one labelled shot -> (frames uint8 [F, H, W, 3], boxes float32 [F, n_chars, 4]).

    F is the shot's own num_frames; H, W and fps come from video_cfg (default VideoConfig()).
    Deterministic in (story.seed, shot_index, labels, video geometry)."""
    cfg = video_cfg or VideoConfig()
    if not 0 <= shot_index < story.num_shots:
        raise IndexError(f"shot_index {shot_index} out of range for a story of {story.num_shots} shots")
    shot = story.shots[shot_index]
    if shot.labels is None:
        raise ValueError(f"shot {shot_index} has no labels (caption-only story): only labelled stories can be rendered")
    if cfg.height < 16 or cfg.width < 16 or cfg.fps <= 0:
        raise ValueError(f"cannot render at {cfg.height}x{cfg.width} and {cfg.fps} fps")
    lab = shot.labels
    H, W, F = cfg.height, cfg.width, shot.num_frames
    seed = story.seed or 0
    rng = np.random.default_rng([seed, shot_index, 0x5407])

    # Camera: a small sideways offset per shot and a slow pan (tracking a walk, else random).
    margin = max(2, round(0.03 * W))
    pan_sign = {"walk_left": -1.0, "walk_right": 1.0}.get(lab.action, rng.choice([-1.0, 1.0]))
    pan = pan_sign * rng.uniform(0.4, 1.0) * 2 * margin  # total pan in pixels over the shot
    background = render_background(lab.scene, lab.framing, H, W + 2 * margin, seed,
                                   x_offset=rng.uniform(-0.1, 0.1), noise_seed=seed * 1000 + shot_index)
    offsets = np.round(margin + pan * (np.arange(F) / max(F - 1, 1) - 0.5)).astype(int)

    size = vocab.FRAMING_SIZE[lab.framing] * min(H, W)
    feet = FEET_Y[lab.framing] * H
    max_jump = min(1.5 * size, 0.9 * (feet - size))
    pad = 0.04 * W + 0.6 * size  # keep centres this far from the frame edges
    if len(lab.characters) == 1:
        lo, hi = pad, W - pad
        home = W / 2 + rng.uniform(-0.08, 0.08) * W
    else:  # the main character keeps to the left, the idle companion stands on the right
        lo, hi = pad, min(0.5 * W, 0.78 * W - 1.3 * size)
        home = (lo + hi) / 2
    travel = min(0.55 * W, hi - lo)
    walk_from = np.clip(home - travel / 2, lo, hi - travel)

    poses = [action_poses(lab.action, F, cfg.fps, size, max_jump)]
    placements = [(walk_from, travel, home)]
    if len(lab.characters) > 1:
        poses.append(action_poses("stay", F, cfg.fps, size, max_jump))
        placements.append((0.0, 0.0, 0.78 * W))

    frames = np.empty((F, H, W, 3), np.uint8)
    boxes = np.full((F, len(lab.characters), 4), np.nan, np.float32)
    order = list(range(len(lab.characters)))[::-1]  # companions first, the main character on top
    for f in range(F):
        frame = frames[f]
        frame[:] = background[:, offsets[f]:offsets[f] + W]
        centres = []
        for ci, (p, (start, span, home_x)) in enumerate(zip(poses, placements)):
            walk = p["walk"][f]
            cx = (home_x if np.isnan(walk) else start + walk * span) + p["dx"][f]
            cy = feet - p["lift"][f] - SHAPE_BOTTOM[lab.characters[ci].shape] * size / 2 * p["sy"][f]
            centres.append((cx, cy))
            draw_shadow(frame, cx, feet, size, p["lift"][f])  # all shadows first: never over a character
        for ci in order:
            p, (cx, cy) = poses[ci], centres[ci]
            box = draw_character(frame, lab.characters[ci], cx, cy, size, p["angle"][f], p["sx"][f], p["sy"][f], p["look"][f])
            if box is not None:
                boxes[f, ci] = box
    return frames, boxes


def render_story(story: Story, video_cfg: VideoConfig | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(frames [F, H, W, 3], boxes [F, n_chars, 4]) for each shot]."""
    return [render_shot(story, k, video_cfg) for k in range(story.num_shots)]
