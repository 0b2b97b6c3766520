"""Minimal mp4 reading for `score` (imageio + imageio-ffmpeg).

Local stand-in: `shotstream/video.py` (read_mp4 / write_mp4) is being written by another
engineer; once it lands, `read_mp4` here can delegate to it. Errors name the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class VideoError(ValueError):
    """A video file is missing, not decodable, or empty."""


def read_mp4(path: str | Path) -> np.ndarray:
    """All frames of a video file as uint8 [F, H, W, 3]."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: video file not found")
    try:
        frames = iio.imread(path, plugin="FFMPEG", extension=path.suffix or ".mp4")
    except Exception as e:  # imageio raises OSError/RuntimeError/ValueError... depending on the failure
        raise VideoError(f"{path}: unreadable video ({type(e).__name__}: {_first_line(e)})") from None
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise VideoError(f"{path}: video has no frames")
    if frames.shape[-1] == 4:
        frames = frames[..., :3]
    if frames.shape[-1] != 3:
        raise VideoError(f"{path}: expected RGB frames, got shape {frames.shape}")
    return np.ascontiguousarray(frames.astype(np.uint8, copy=False))


def count_frames(path: str | Path) -> int:
    """Number of frames of a video, without keeping them (a cheap validity check)."""
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: video file not found")
    try:
        n, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    except Exception as e:
        raise VideoError(f"{path}: unreadable video ({type(e).__name__}: {_first_line(e)})") from None
    if n < 1:
        raise VideoError(f"{path}: video has no frames")
    return int(n)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else "no detail"
