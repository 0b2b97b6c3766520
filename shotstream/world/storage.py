"""Story files: our labelled JSON format and the official ShotStream caption-only format.

Our format (written by `save_stories`):
    {"format": "shotstream.world/stories-v1",
     "stories": [{"seed": 3, "global_caption": "..." | null,
                  "shots": [{"caption": "...", "num_frames": 33,
                             "labels": {"characters": [{"shape": "star", "colour": "red", "pattern": "striped"}],
                                        "scene": "snow", "framing": "wide", "action": "walk_left",
                                        "pronoun": false} | null}]}]}
A bare list of story objects, or a single story object, is accepted too.

Official ShotStream test format (captions only, so labels are None):
    {"global_caption": "...", "shot1": "...", "shot2": "...", ...}   or a list of such objects.
An empty (or missing, or null) global caption means the story has none, in either format.
This is the one reader of story files: `generate --story`, `run --suite`, `run --stories` and a
scoring manifest's `prompts` all go through `load_stories`.

Every problem raises StoryFormatError (a ValueError) as one line naming the file and the field,
e.g. `suite.json: stories[2].shots[0].labels.colour: unknown colour 'redd' (did you mean 'red'?)`.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

from shotstream.config import VideoConfig
from shotstream.world import vocab
from shotstream.world.story import Character, Shot, ShotLabels, Story, check_num_frames

FORMAT = "shotstream.world/stories-v1"


class StoryFormatError(ValueError):
    """A story file is malformed; the message names the file and the offending field."""


# ---------------------------------------------------------------------------------------------
# Writing


def story_to_dict(story: Story) -> dict:
    def labels(lab: ShotLabels | None):
        if lab is None:
            return None
        return {
            "characters": [{"shape": c.shape, "colour": c.colour, "pattern": c.pattern} for c in lab.characters],
            "scene": lab.scene,
            "framing": lab.framing,
            "action": lab.action,
            "pronoun": lab.pronoun,
        }

    return {
        "seed": story.seed,
        "global_caption": story.global_caption,
        "shots": [{"caption": s.caption, "num_frames": s.num_frames, "labels": labels(s.labels)} for s in story.shots],
    }


def save_stories(path, stories: list[Story]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "stories": [story_to_dict(s) for s in stories]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


# ---------------------------------------------------------------------------------------------
# Reading


def load_stories(path, frames_per_shot: int | None = None) -> list[Story]:
    """Read a story file in either format. frames_per_shot fills in shots that do not say
    (default VideoConfig().frames_per_shot)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: story file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise StoryFormatError(f"{path}: unreadable JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise StoryFormatError(f"{path}: unreadable JSON (not UTF-8 text)") from None
    return parse_stories(data, source=str(path), frames_per_shot=frames_per_shot)


def parse_stories(data, source: str = "<stories>", frames_per_shot: int | None = None) -> list[Story]:
    """Stories from already-decoded JSON (see the module docstring for the accepted shapes)."""
    frames = VideoConfig().frames_per_shot if frames_per_shot is None else frames_per_shot
    check_num_frames(frames, "frames_per_shot")
    p = _Parser(source, frames)
    if isinstance(data, dict) and "stories" in data:
        p.keys(data, {"format", "stories"}, "")
        if "format" in data and data["format"] != FORMAT:
            p.fail("format", f"unsupported format {data['format']!r} (expected {FORMAT!r})")
        items, prefix = p.typed(data["stories"], list, "stories"), "stories"
    elif isinstance(data, dict):
        items, prefix = [data], None
    elif isinstance(data, list):
        items, prefix = data, ""
    else:
        p.fail("", f"expected a JSON object or a list of stories, got {_type(data)}")
    if not items:
        p.fail(prefix or "", "no stories")
    return [p.story(item, f"{prefix}[{i}]" if prefix is not None else "") for i, item in enumerate(items)]


def _type(x) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(x), type(x).__name__
    )


def _join(where: str, key) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


_OFFICIAL_SHOT = re.compile(r"^shot(\d+)$")


class _Parser:
    def __init__(self, source: str, frames_per_shot: int):
        self.source, self.frames = source, frames_per_shot

    def fail(self, where: str, msg: str):
        raise StoryFormatError(f"{self.source}: {where}: {msg}" if where else f"{self.source}: {msg}")

    def typed(self, value, tp, where: str, allow_none: bool = False):
        if value is None and allow_none:
            return None
        ok = isinstance(value, tp) and not (tp in (int,) and isinstance(value, bool))
        if not ok:
            names = {str: "a string", int: "an integer", bool: "a boolean", list: "a list", dict: "an object"}
            self.fail(where, f"expected {names[tp]}{' or null' if allow_none else ''}, got {_type(value)}")
        return value

    def keys(self, obj: dict, allowed: set, where: str, required: tuple = ()):
        for key in obj:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f"; expected {', '.join(sorted(allowed))}"
                self.fail(_join(where, key), f"unknown field{hint}")
        for key in required:
            if key not in obj:
                self.fail(_join(where, key), "missing required field")

    def caption(self, value, where: str) -> str:
        self.typed(value, str, where)
        if not value.strip():
            self.fail(where, "empty caption")
        return value

    def global_caption(self, value, where: str) -> str | None:
        # The official test stories write "global_caption": "" for a story without one: empty means none.
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return self.caption(value, where)

    def word(self, value, space: str, where: str) -> str:
        options = vocab.LABEL_SPACES[space]
        self.typed(value, str, where)
        if value not in options:
            close = difflib.get_close_matches(value, options, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.fail(where, f"unknown {space} {value!r}{hint}; expected one of {', '.join(options)}")
        return value

    def story(self, obj, where: str) -> Story:
        self.typed(obj, dict, where or "story")
        if "shots" in obj:
            return self.own_story(obj, where)
        return self.official_story(obj, where)

    def own_story(self, obj: dict, where: str) -> Story:
        self.keys(obj, {"seed", "global_caption", "shots"}, where, required=("shots",))
        seed = self.typed(obj.get("seed"), int, _join(where, "seed"), allow_none=True)
        if seed is not None and seed < 0:
            self.fail(_join(where, "seed"), f"must be >= 0, got {seed}")
        gc = self.global_caption(obj.get("global_caption"), _join(where, "global_caption"))
        shots_where = _join(where, "shots")
        shots = self.typed(obj["shots"], list, shots_where)
        if not shots:
            self.fail(shots_where, "a story needs at least one shot, got zero")
        return Story(shots=[self.shot(s, _join(shots_where, k)) for k, s in enumerate(shots)], global_caption=gc, seed=seed)

    def shot(self, obj, where: str) -> Shot:
        self.typed(obj, dict, where)
        self.keys(obj, {"caption", "num_frames", "labels"}, where, required=("caption",))
        caption = self.caption(obj["caption"], _join(where, "caption"))
        frames = obj.get("num_frames", self.frames)
        try:
            check_num_frames(frames, _join(where, "num_frames"))
        except ValueError as e:
            raise StoryFormatError(f"{self.source}: {e}") from None
        labels = obj.get("labels")
        return Shot(caption=caption, num_frames=frames, labels=None if labels is None else self.labels(labels, _join(where, "labels")))

    def labels(self, obj, where: str) -> ShotLabels:
        self.typed(obj, dict, where)
        fields = ("characters", "scene", "framing", "action", "pronoun")
        self.keys(obj, set(fields), where, required=fields)
        chars_where = _join(where, "characters")
        chars = self.typed(obj["characters"], list, chars_where)
        if not chars:
            self.fail(chars_where, "a shot needs at least one character")
        characters = []
        for i, c in enumerate(chars):
            cw = _join(chars_where, i)
            self.typed(c, dict, cw)
            self.keys(c, {"shape", "colour", "pattern"}, cw, required=("shape", "colour", "pattern"))
            characters.append(Character(*(self.word(c[k], k, _join(cw, k)) for k in ("shape", "colour", "pattern"))))
        return ShotLabels(
            characters=tuple(characters),
            scene=self.word(obj["scene"], "scene", _join(where, "scene")),
            framing=self.word(obj["framing"], "framing", _join(where, "framing")),
            action=self.word(obj["action"], "action", _join(where, "action")),
            pronoun=self.typed(obj["pronoun"], bool, _join(where, "pronoun")),
        )

    def official_story(self, obj: dict, where: str) -> Story:
        """{"global_caption": ..., "shot1": ..., "shot2": ...}: captions only, shots numbered from 1."""
        numbered = {}
        for key in obj:
            m = _OFFICIAL_SHOT.match(str(key))
            if m:
                n = int(m.group(1))
                if n == 0 or n in numbered:
                    why = "shots are numbered from shot1" if n == 0 else f"same shot number as {numbered[n]!r}"
                    self.fail(_join(where, key), why)
                numbered[n] = key
            elif key != "global_caption":
                close = difflib.get_close_matches(str(key), ["global_caption", "shot1", "shots"], n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.fail(_join(where, key), f"unknown field{hint}; expected global_caption and shot1 .. shotN")
        if not numbered:
            self.fail(where or "story", "a story needs at least one shot, got zero (expected keys shot1, shot2, ...)")
        missing = sorted(set(range(1, max(numbered) + 1)) - set(numbered))
        if missing:
            self.fail(_join(where, f"shot{missing[0]}"), f"missing (shots must be numbered shot1 .. shot{max(numbered)})")
        gc = self.global_caption(obj.get("global_caption"), _join(where, "global_caption"))
        shots = [Shot(caption=self.caption(obj[numbered[n]], _join(where, numbered[n])), num_frames=self.frames) for n in sorted(numbered)]
        return Story(shots=shots, global_caption=gc, seed=None)
