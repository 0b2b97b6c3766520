"""Scoring manifests: videos produced by any system, with their captions (format: benchmark/README.md).

    {"method": "my-system", "stories": [
       {"id": "s0", "global_caption": "...",
        "shots": [{"video": "s0/shot0.mp4", "caption": "...", "labels": {...}}, ...]},
       {"id": "s1", "video": "s1.mp4", "shot_starts": [0, 33, 66], "prompts": "s1_prompts.json"}]}

Paths are relative to the manifest's folder and must stay inside it. `load_manifest` checks the
structure, the paths and the shot counts; `Manifest.check_videos()` opens every video, so that
a bad entry is reported (naming it) before anything is scored or written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shotstream.video import _looks_like_mp4
from shotstream.video import read_mp4 as _read_mp4

# Fewest frames a shot may have. intra_shot_consistency compares each frame with the first and
# the previous one, so a one-frame shot has nothing to compare and its NaN would be listed as a
# model failure; a shot that short is a cutting or export error in the input, refused up front.
MIN_SHOT_FRAMES = 2

# Leading bytes of image formats that are sometimes renamed .mp4 by mistake (ffmpeg decodes them
# as a one-frame "video", so only the header tells them apart).
_IMAGE_SIGNATURES = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image"}


class ManifestError(ValueError):
    """A manifest entry is malformed, points outside the manifest folder, or at a bad video."""


class VideoError(ValueError):
    """A video file is missing, not decodable, or empty."""


def read_mp4(path: Path) -> np.ndarray:
    """All frames of a video, uint8 [F, H, W, 3] (shotstream.video.read_mp4), errors naming the file."""
    if not Path(path).is_file():
        raise VideoError(f"{path}: video file not found")
    try:
        return _read_mp4(path)
    except ValueError as e:
        raise VideoError(f"{path}: unreadable video ({e})") from None


def count_frames(path: Path) -> int:
    """Frame count of a video without decoding it to memory (a cheap validity check).

    The ISO-BMFF header is checked first, as `read_mp4` does when scoring: an image renamed .mp4
    counts as one frame with ffmpeg and would only fail later, after earlier stories were written."""
    import imageio_ffmpeg

    if not Path(path).is_file():
        raise VideoError(f"{path}: video file not found")
    with open(path, "rb") as fh:
        head = fh.read(12)
    if not _looks_like_mp4(head):
        kind = next((name for sig, name in _IMAGE_SIGNATURES.items() if head.startswith(sig)), None)
        raise VideoError(f"{path}: unreadable video (" + (f"{kind} named as a video" if kind else
                                                          "not an mp4 file: no ISO-BMFF header") + ")")
    try:
        n, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    except Exception as e:  # imageio-ffmpeg raises RuntimeError/OSError/... depending on the failure
        detail = str(e).strip().splitlines()
        raise VideoError(f"{path}: unreadable video ({detail[0][:200] if detail else type(e).__name__})") from None
    if n < 1:
        raise VideoError(f"{path}: video has no frames")
    return int(n)


@dataclass
class ManifestStory:
    id: str
    captions: list[str]
    labels: list[dict | None]
    global_caption: str = ""
    shot_videos: list[Path] | None = None  # one video per shot, or
    story_video: Path | None = None  # one video per story ...
    shot_starts: list[int] | None = None  # ... cut at these frame indices
    where: str = ""  # "manifest.json: stories[3] (id 's3')" for error messages

    @property
    def num_shots(self) -> int:
        return len(self.captions)

    def check_videos(self) -> None:
        """Open every video (frame count only); a missing/unreadable file, a shot of fewer than
        MIN_SHOT_FRAMES frames or too short a story video is a ManifestError naming this entry."""
        try:
            if self.shot_videos is not None:
                for k, v in enumerate(self.shot_videos):
                    n = count_frames(v)
                    if n < MIN_SHOT_FRAMES:
                        raise ManifestError(f"{self.where}: shots[{k}].video {v.name!r} has {n} frame(s); a shot "
                                            f"needs at least {MIN_SHOT_FRAMES} ({v})")
            else:
                n = count_frames(self.story_video)
                if self.shot_starts[-1] >= n:
                    raise ManifestError(f"{self.where}: shot_starts {self.shot_starts} go past the "
                                        f"video's {n} frames ({self.story_video})")
                if n - self.shot_starts[-1] < MIN_SHOT_FRAMES:
                    raise ManifestError(f"{self.where}: the last shot (frames {self.shot_starts[-1]}..{n - 1} of "
                                        f"{self.story_video.name!r}) has {n - self.shot_starts[-1]} frame(s); a shot "
                                        f"needs at least {MIN_SHOT_FRAMES}")
        except VideoError as e:
            raise ManifestError(f"{self.where}: {e}") from None

    def inputs(self) -> str:
        """Digest of everything scored: the videos' bytes, cut points, captions and labels (the
        resume key: a re-encoded video or an edited caption is scored again)."""
        from benchmark.rows import digest, file_digest

        videos = self.shot_videos if self.shot_videos is not None else [self.story_video]
        return digest({"videos": [file_digest(v) for v in videos], "shot_starts": self.shot_starts,
                       "global_caption": self.global_caption, "captions": self.captions, "labels": self.labels})

    def load_frames(self) -> list[np.ndarray]:
        """Per-shot frames, uint8 [F, H, W, 3]."""
        try:
            if self.shot_videos is not None:
                return [read_mp4(v) for v in self.shot_videos]
            video = read_mp4(self.story_video)
        except VideoError as e:
            raise ManifestError(f"{self.where}: {e}") from None
        ends = [*self.shot_starts[1:], len(video)]
        if self.shot_starts[-1] >= len(video):
            raise ManifestError(f"{self.where}: shot_starts {self.shot_starts} go past the video's "
                                f"{len(video)} frames ({self.story_video})")
        return [video[a:b] for a, b in zip(self.shot_starts, ends)]


@dataclass
class Manifest:
    path: Path
    stories: list[ManifestStory]
    method: str | None = None
    suite: str = ""
    extra: dict = field(default_factory=dict)

    def check_videos(self) -> None:
        for story in self.stories:
            story.check_videos()


def load_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    data = _read_json(path, path)
    if not isinstance(data, dict) or not isinstance(data.get("stories"), list) or not data["stories"]:
        raise ManifestError(f"{path}: expected a JSON object with a non-empty 'stories' list")
    method = data.get("method")
    if method is not None and (not isinstance(method, str) or not method):
        raise ManifestError(f"{path}: 'method' must be a non-empty string")
    root = path.resolve().parent
    stories, seen = [], set()
    for i, entry in enumerate(data["stories"]):
        story = _parse_story(entry, i, path, root)
        if story.id in seen:
            raise ManifestError(f"{story.where}: duplicate story id")
        seen.add(story.id)
        stories.append(story)
    return Manifest(path, stories, method, str(data.get("suite", "")))


def load_prompts(path: str | Path) -> tuple[str, list[str]]:
    """(global caption, shot captions) of one story in the official ShotStream test-story JSON
    ({"global_caption": ..., "shot1": ..., "shotN": ...}), read by the project's one story reader
    (shotstream.world.load_stories), so `score` accepts what `generate` and `run` accept. The
    global caption is "" when there is none."""
    from shotstream.world.storage import StoryFormatError, load_stories

    try:
        stories = load_stories(path)
    except StoryFormatError as e:
        raise ManifestError(str(e)) from None
    if len(stories) != 1:
        raise ManifestError(f"{path}: holds {len(stories)} stories; a manifest entry's prompts file gives one")
    return stories[0].global_caption or "", stories[0].captions


def _parse_story(entry, i: int, manifest: Path, root: Path) -> ManifestStory:
    where = f"{manifest}: stories[{i}]"
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: expected an object")
    sid = entry.get("id")
    if not isinstance(sid, str) or not sid:
        raise ManifestError(f"{where}: missing 'id' (a non-empty string)")
    where = f"{where} (id {sid!r})"
    global_caption = entry.get("global_caption") or ""
    if not isinstance(global_caption, str):
        raise ManifestError(f"{where}: 'global_caption' must be a string")
    if not global_caption.strip():
        global_caption = ""  # as in the official format: an empty global caption means none
    prompts = None
    if "prompts" in entry:
        prompts_path = _resolve(entry["prompts"], root, f"{where}: prompts")
        if not prompts_path.is_file():
            raise ManifestError(f"{where}: prompts file {entry['prompts']!r} not found")
        try:
            global_caption_p, prompts = load_prompts(prompts_path)
        except ManifestError as e:
            raise ManifestError(f"{where}: {e}") from None
        global_caption = global_caption or global_caption_p

    if "shots" in entry:
        shots = entry["shots"]
        if not isinstance(shots, list) or not shots:
            raise ManifestError(f"{where}: 'shots' must be a non-empty list")
        videos, captions, labels = [], [], []
        for k, shot in enumerate(shots):
            if not isinstance(shot, dict) or "video" not in shot:
                raise ManifestError(f"{where}: shots[{k}] needs a 'video'")
            videos.append(_existing(shot["video"], root, f"{where}: shots[{k}].video"))
            captions.append(shot.get("caption"))
            labels.append(_labels(shot.get("labels"), f"{where}: shots[{k}].labels"))
        captions = _merge_captions(captions, prompts, where)
        return ManifestStory(sid, captions, labels, global_caption, shot_videos=videos, where=where)

    if "video" in entry:
        video = _existing(entry["video"], root, f"{where}: video")
        starts = entry.get("shot_starts")
        if (not isinstance(starts, list) or not starts or not all(isinstance(s, int) and not isinstance(s, bool) for s in starts)
                or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:]))):
            raise ManifestError(f"{where}: 'shot_starts' must be increasing frame indices starting at 0, got {starts!r}")
        short = [k for k, (a, b) in enumerate(zip(starts, starts[1:])) if b - a < MIN_SHOT_FRAMES]
        if short:
            raise ManifestError(f"{where}: shot {short[0]} of shot_starts {starts} has {starts[short[0] + 1] - starts[short[0]]} "
                                f"frame(s); a shot needs at least {MIN_SHOT_FRAMES}")
        captions = entry.get("captions")
        if captions is not None and (not isinstance(captions, list) or len(captions) != len(starts)):
            raise ManifestError(f"{where}: {len(starts)} shots in shot_starts but "
                                f"{len(captions) if isinstance(captions, list) else captions!r} captions")
        captions = _merge_captions(captions or [None] * len(starts), prompts, where)
        labels = entry.get("labels") or [None] * len(starts)
        if not isinstance(labels, list) or len(labels) != len(starts):
            raise ManifestError(f"{where}: 'labels' must be a list of {len(starts)} (one per shot)")
        labels = [_labels(lab, f"{where}: labels[{k}]") for k, lab in enumerate(labels)]
        return ManifestStory(sid, captions, labels, global_caption, story_video=video, shot_starts=starts, where=where)

    raise ManifestError(f"{where}: needs either 'shots' (one video per shot) or 'video' + 'shot_starts'")


def _merge_captions(captions: list, prompts: list[str] | None, where: str) -> list[str]:
    if prompts is not None:
        if len(prompts) != len(captions):
            raise ManifestError(f"{where}: {len(captions)} shots but the prompts file has {len(prompts)} captions")
        captions = [c if c is not None else p for c, p in zip(captions, prompts)]
    missing = [k for k, c in enumerate(captions) if not isinstance(c, str)]
    if missing:
        raise ManifestError(f"{where}: no caption for shot(s) {missing} (give 'caption'/'captions' or 'prompts')")
    # An empty caption would be scored (clip_text 0 against nothing): nothing missing is ever scored.
    empty = [k for k, c in enumerate(captions) if not c.strip()]
    if empty:
        raise ManifestError(f"{where}: empty caption for shot(s) {empty}")
    return captions


def _labels(labels, where: str) -> dict | None:
    if labels is not None and not isinstance(labels, dict):
        raise ManifestError(f"{where}: must be an object")
    return labels


def _resolve(rel, root: Path, where: str) -> Path:
    if not isinstance(rel, str) or not rel:
        raise ManifestError(f"{where}: expected a path string, got {rel!r}")
    p = (root / rel).resolve()  # an absolute `rel` replaces root; symlinks are followed
    if not p.is_relative_to(root):
        raise ManifestError(f"{where}: path {rel!r} escapes the manifest folder {root}")
    return p


def _existing(rel, root: Path, where: str) -> Path:
    p = _resolve(rel, root, where)
    if not p.is_file():
        raise ManifestError(f"{where}: file {rel!r} not found")
    return p


def _read_json(path: Path, where: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{where}: not valid JSON ({e})") from None
