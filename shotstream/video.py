"""All video I/O: H.264 mp4 writing and reading, streamable per-chunk segments, contact sheets.

Frames are numpy uint8 [F, H, W, 3] (RGB) everywhere in this module; `to_model_video` and
`to_uint8` convert them to and from the model's pixel tensors in [-1, 1]. Encoding pipes raw RGB
into the ffmpeg binary that imageio-ffmpeg ships (`imageio_ffmpeg.get_ffmpeg_exe()`), so no
system ffmpeg is needed.
"""

from __future__ import annotations

import subprocess
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import torch


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """[B=1, F, 3, H, W] in [-1, 1] -> uint8 [F, H, W, 3]."""
    return ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def to_model_video(frames: np.ndarray, device) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> [F, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def check_frames(frames, where: str = "frames", even: bool = False) -> np.ndarray:
    """Validate a uint8 [F, H, W, 3] video; `even` because H.264 yuv420p halves chroma in H and W."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"{where}: expected frames of shape [F, H, W, 3] with F >= 1, got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{where}: expected uint8 frames, got {frames.dtype}")
    if even and (frames.shape[1] % 2 or frames.shape[2] % 2):
        raise ValueError(
            f"{where}: H.264 yuv420p needs an even height and width, got {frames.shape[1]}x{frames.shape[2]}; "
            "crop or pad the frames (e.g. pad_to_even)"
        )
    return np.ascontiguousarray(frames)


def pad_to_even(frames: np.ndarray) -> np.ndarray:
    """Repeat the last row/column when H or W is odd, so the frames can be encoded as yuv420p."""
    _, H, W, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")


def _encode(frames: np.ndarray, fps: float, out: str, extra: list[str], where: str) -> bytes:
    """Pipe raw RGB frames through ffmpeg/libx264 into `out` (a path or 'pipe:1'); returns stdout."""
    if not fps or fps <= 0:
        raise ValueError(f"{where}: fps must be positive, got {fps!r}")
    F, H, W, _ = frames.shape
    cmd = [
        _ffmpeg(), "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}", "-r", f"{fps}", "-i", "pipe:0",
        "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", *extra, out,
    ]  # fmt: skip
    proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True)
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{where}: ffmpeg failed: {msg[-1] if msg else proc.returncode}")
    return proc.stdout


def write_mp4(path, frames, fps: float, crf: int = 18) -> Path:
    """Write an H.264 yuv420p mp4 that browsers and players open (moov atom first)."""
    path = Path(path)
    frames = check_frames(frames, str(path), even=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    _encode(frames, fps, str(path), ["-crf", str(crf), "-preset", "medium", "-movflags", "+faststart"], str(path))
    return path


def encode_segment(frames, fps: float, path=None, crf: int = 20):
    """Encode one streaming chunk as a small, independently playable fragmented mp4.

    Every segment starts with its own init segment and a keyframe, so the browser can play it
    alone (a <video> per chunk) or append it to a MediaSource buffer. Fast preset and
    zero-latency tuning: a segment is encoded while the next chunk is being generated.
    Returns the bytes, or the path when `path` is given."""
    where = str(path) if path is not None else "segment"
    frames = check_frames(frames, where, even=True)
    extra = [
        "-crf", str(crf), "-preset", "veryfast", "-tune", "zerolatency", "-g", str(len(frames)),
        "-movflags", "frag_keyframe+empty_moov+default_base_moof", "-f", "mp4",
    ]  # fmt: skip
    data = _encode(frames, fps, "pipe:1", extra, where)
    if path is None:
        return data
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _looks_like_mp4(head: bytes) -> bool:
    # ISO base media files open with a box whose type is 'ftyp' (plain mp4) or 'moov'/'styp' etc.
    return len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"styp", b"free", b"mdat", b"wide")


def read_mp4(source) -> np.ndarray:
    """Decode an mp4 (a path, or the bytes of one) to uint8 [F, H, W, 3]."""
    if isinstance(source, (bytes, bytearray)):
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp) / "segment.mp4"
            tmp_path.write_bytes(bytes(source))
            return _read_mp4_path(tmp_path, "<mp4 bytes>")
    return _read_mp4_path(Path(source), str(source))


def _read_mp4_path(path: Path, name: str) -> np.ndarray:
    import imageio_ffmpeg

    if not path.is_file():
        raise FileNotFoundError(f"{name}: video file not found")
    with open(path, "rb") as fh:
        head = fh.read(12)
    if not _looks_like_mp4(head):
        raise ValueError(f"{name}: not an mp4 file (no ISO-BMFF 'ftyp' header)")
    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(reader)
        W, H = meta["size"]
        frames = [np.frombuffer(buf, np.uint8).reshape(H, W, 3) for buf in reader]
    except (RuntimeError, OSError, StopIteration, KeyError) as e:
        detail = str(e).strip().splitlines()
        raise ValueError(f"{name}: cannot decode video ({detail[0] if detail else type(e).__name__})") from None
    if not frames:
        raise ValueError(f"{name}: video has no frames")
    return np.stack(frames)


# ---------------------------------------------------------------------------------------------
# Contact sheets


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has a single bitmap font
        return ImageFont.load_default()


def sample_indices(num_frames: int, n: int) -> np.ndarray:
    """n frame indices evenly spaced over a shot, first and last included."""
    return np.unique(np.round(np.linspace(0, num_frames - 1, min(n, num_frames))).astype(int))


def contact_sheet(shots, captions=None, n_per_shot: int = 5, pad: int = 4) -> np.ndarray:
    """One row per shot: n_per_shot evenly spaced frames, the caption written above the row.

    shots: list of uint8 [F, H, W, 3]; captions: list of str (or None). Returns uint8 [H', W', 3]."""
    from PIL import Image, ImageDraw

    if not shots:
        raise ValueError("contact_sheet: no shots given")
    shots = [check_frames(s, f"shots[{k}]") for k, s in enumerate(shots)]
    if captions is not None and len(captions) != len(shots):
        raise ValueError(f"contact_sheet: {len(shots)} shots but {len(captions)} captions")
    H, W = max(s.shape[1] for s in shots), max(s.shape[2] for s in shots)
    width = n_per_shot * (W + pad) + pad
    font_px = max(10, min(14, W // 8))
    font = _font(font_px)
    chars_per_line = max(20, int(width / (0.55 * font_px)))
    rows = []
    for k, s in enumerate(shots):
        text = f"{k + 1}. {captions[k]}" if captions is not None else f"{k + 1}."
        lines = textwrap.wrap(text, chars_per_line) or [""]
        text_h = len(lines) * (font_px + 3) + pad
        row = Image.new("RGB", (width, text_h + H + pad), (255, 255, 255))
        ImageDraw.Draw(row).multiline_text((pad, pad // 2), "\n".join(lines), fill=(0, 0, 0), font=font, spacing=3)
        for j, f in enumerate(sample_indices(len(s), n_per_shot)):
            row.paste(Image.fromarray(s[f]), (pad + j * (W + pad), text_h))
        rows.append(np.asarray(row))
    return np.concatenate(rows, axis=0)


def save_png(path, image) -> Path:
    """Save a uint8 [H, W, 3] image as PNG."""
    from PIL import Image

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{path}: expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path
