"""The one source of configuration: dataclasses with documented defaults and named presets.

Every option of the model, the video geometry and the sampler lives here. Presets are plain
functions returning a `ShotStreamConfig`; command lines override fields with `key=value`
(`model.dim=128`, `video.height=96`), and unknown keys or bad values fail loudly.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import string
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass
class VideoConfig:
    """Pixel and latent geometry shared by the world, the autoencoder and the model."""

    height: int = 128
    width: int = 128
    fps: int = 16
    frames_per_shot: int = 33  # 4k+1: the causal autoencoder keeps frame 0 alone
    temporal_stride: int = 4  # autoencoder compression in time
    spatial_stride: int = 8  # autoencoder compression in height and width
    latent_channels: int = 16

    @property
    def latent_frames_per_shot(self) -> int:
        return latent_frame_count(self.frames_per_shot, self.temporal_stride)

    @property
    def latent_size(self) -> tuple[int, int]:
        return self.height // self.spatial_stride, self.width // self.spatial_stride

    def validate(self) -> None:
        _check_positive("video", self, "height", "width", "fps", "frames_per_shot", "temporal_stride", "spatial_stride",
                        "latent_channels")
        if self.height % self.spatial_stride or self.width % self.spatial_stride:
            raise ValueError(
                f"video size {self.height}x{self.width} must be a multiple of the spatial stride {self.spatial_stride}"
            )
        latent_frame_count(self.frames_per_shot, self.temporal_stride)


def _check_positive(section: str, cfg, *names: str) -> None:
    bad = [f"{section}.{n}={getattr(cfg, n)}" for n in names if not getattr(cfg, n) > 0]
    if bad:
        raise ValueError(f"{', '.join(bad)}: must be positive")


def latent_frame_count(frames: int, temporal_stride: int = 4) -> int:
    """Frames of a causal-VAE latent for `frames` pixel frames (frame 0 is encoded alone)."""
    if frames < 1 or (frames - 1) % temporal_stride:
        raise ValueError(f"a shot must have {temporal_stride}k+1 frames, got {frames}")
    return 1 + (frames - 1) // temporal_stride


@dataclass
class ModelConfig:
    """Sizes of the Wan2.1-style DiT. Names follow Wan's `WanModel` arguments."""

    dim: int = 256
    ffn_dim: int = 1024
    num_heads: int = 4
    num_layers: int = 6
    text_dim: int = 384  # width of the text encoder's token states (MiniLM: 384, umT5-XXL: 4096)
    text_len: int = 64  # text tokens kept per caption (Wan: 512)
    freq_dim: int = 256  # sinusoidal timestep embedding width
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (t, h, w)
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    rope_theta: float = 10000.0
    # Streaming geometry (DESIGN.md section 1): chunk of latent frames, global-context budget.
    chunk_frames: int = 3
    context_frames: int = 6
    # RoPE discontinuity indicator: "rope" adds shot_flag * shot_phase to every temporal angle,
    # "none" is the ablation without it, "learned" adds a learned embedding to the target's
    # first chunk instead.
    shot_indicator: str = "rope"
    shot_phase: float = 1.0 / 6.0
    # Local cache size in latent frames (0 = whole shot) and attention-sink frames kept when
    # the window rolls; only long shots need them.
    local_window: int = 0
    sink_frames: int = 0
    # Cross-attention ignores the caption's padding tokens (True), or attends to all `text_len`
    # tokens, the zero padding included (False): Wan2.1 and the released ShotStream were trained
    # that way, and masking their padding changes a released model's velocity by ~25%.
    text_mask: bool = True
    # What the first shot is conditioned on. False: nothing (positions from 0, flag 0). True: as
    # the released ShotStream was trained, `context_frames` zero latents at positions 0..C-1 with
    # flag 0, the shot's own frames after them with flag 1 (DESIGN.md section 6). Later shots
    # are the same either way.
    first_shot_zero_context: bool = False

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def validate(self) -> None:
        _check_positive("model", self, "dim", "ffn_dim", "num_heads", "num_layers", "text_dim", "text_len", "freq_dim")
        if self.dim % self.num_heads:
            raise ValueError(f"model.dim={self.dim} is not divisible by model.num_heads={self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 8:
            raise ValueError(f"head dim {self.head_dim} must be even and >= 8 for 3D RoPE")
        if self.shot_indicator not in ("rope", "none", "learned"):
            raise ValueError(f"model.shot_indicator must be rope, none or learned, got {self.shot_indicator!r}")
        if self.chunk_frames < 1 or self.context_frames < 0:
            raise ValueError("model.chunk_frames must be >= 1 and model.context_frames >= 0")


@dataclass
class GuidanceConfig:
    """Classifier-free guidance of a bidirectional next-shot model, on the caption and on the
    earlier shots: the sampler's (SamplerConfig), and a training stage's for the teacher it runs
    (the real score, ODE pairs)."""

    guidance_scale: float = 3.0  # on the caption (1 = off)
    # ... and on the earlier shots (conditioning.unconditional; 1 = none): an "it" caption names no
    # character, the context does.
    context_scale: float = 1.0

    def validate(self, group: str = "stage") -> "GuidanceConfig":
        """Guidance on the earlier shots is relative to guidance on the caption (fm.unconditional_fn);
        `group` names the config section in the error."""
        if self.guidance_scale == 1.0 and self.context_scale != 1.0:
            raise ValueError(f"{group}.context_scale={self.context_scale} needs guidance on the caption "
                             f"({group}.guidance_scale != 1)")
        return self


@dataclass
class SamplerConfig(GuidanceConfig):
    """Flow-matching sampling. Timesteps are on Wan's 0..1000 scale before the shift; the teacher's
    guidance is GuidanceConfig's."""

    shift: float = 8.0  # timestep shift applied to sigma = t / 1000 (Wan: 8 for few-step students)
    student_timesteps: tuple[float, ...] = (1000.0, 740.0, 500.0, 260.0)
    teacher_steps: int = 50
    teacher_shift: float = 3.0
    # How a bidirectional teacher sees its context frames: "clean" at t = 0 (the tiny teacher, as
    # it was trained), or "target": noised to the target's level at every step, as the official
    # ShotStream teacher samples (DESIGN.md section 6), with one noise draw per shot.
    teacher_context_noise: str = "clean"
    # Which caption slots the unconditional branch of the teacher's guidance replaces by the
    # negative prompt: "target" (the shot's own; the tiny teacher, as text dropout trained it) or
    # "all" (every slot, the context's captions too: the official teacher).
    teacher_null_slots: str = "target"
    # The unconditional branch's caption; "" = the text encoder's null caption. The official
    # teacher uses Wan2.1's negative prompt (its `sample_neg_prompt`): set it here to match.
    negative_prompt: str = ""

    @property
    def teacher_forwards_per_step(self) -> int:
        """Conditional branch + unconditional ones: both only when the context's guidance lies
        strictly between none and the caption's (fm.unconditional_fn)."""
        if self.guidance_scale == 1.0:
            return 1
        return 2 if self.context_scale in (1.0, self.guidance_scale) else 3

    def validate(self) -> None:
        if self.teacher_context_noise not in ("clean", "target"):
            raise ValueError(f"sampler.teacher_context_noise must be clean or target, got {self.teacher_context_noise!r}")
        if self.teacher_null_slots not in ("target", "all"):
            raise ValueError(f"sampler.teacher_null_slots must be target or all, got {self.teacher_null_slots!r}")
        GuidanceConfig.validate(self, "sampler")


PROMPT_FIELDS = ("global_caption", "shot", "caption")  # the placeholders of PromptConfig.template


@dataclass
class PromptConfig:
    """How shot i's prompt (what the text encoder reads) is made from the story's global caption
    and the shot's own caption."""

    # Placeholders {global_caption}, {shot} (the shot's index from 0) and {caption}; the result
    # is stripped, so a story without a global caption reads the caption alone. The tiny models
    # were trained on "{global_caption} {caption}"; the released ShotStream on
    # global_caption + "shot{i}:" + caption, with no space at either join.
    template: str = "{global_caption} {caption}"
    # The global caption and each shot's caption are cut to this many characters (with a
    # warning) before the text encoder truncates to `model.text_len` tokens.
    max_chars: int = 2000
    # The release's text cleaning before its tokenizer: mojibake repaired (ftfy) and HTML
    # entities unescaped twice ("&amp;amp;" -> "&"), so a caption pasted from a web page reads
    # as it was meant. The tiny models were trained on prompts as typed.
    fix_text: bool = False

    def render(self, caption: str, shot: int, global_caption: str | None = None) -> str:
        text = self.template.format(global_caption=global_caption or "", shot=shot, caption=caption).strip()
        if self.fix_text:
            import html

            import ftfy

            text = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split())
        return text

    def validate(self) -> None:
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(self.template) if name is not None]
        except ValueError as e:  # e.g. an unmatched brace
            raise ValueError(f"prompt.template={self.template!r}: {e}") from None
        unknown = [n for n in names if n not in PROMPT_FIELDS]
        if unknown or "caption" not in names:
            allowed = ", ".join("{" + n + "}" for n in PROMPT_FIELDS)
            raise ValueError(f"prompt.template={self.template!r}: its placeholders must be among {allowed} "
                             "and include {caption}")
        _check_positive("prompt", self, "max_chars")


@dataclass
class ShotStreamConfig:
    preset: str = "tiny"
    video: VideoConfig = field(default_factory=VideoConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)

    def validate(self) -> "ShotStreamConfig":
        self.video.validate()
        self.model.validate()
        self.sampler.validate()
        self.prompt.validate()
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> "ShotStreamConfig":
        return from_dict(cls, data, where="config")

    @classmethod
    def load(cls, path: str | Path) -> "ShotStreamConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: config file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(data).validate()


def tiny() -> ShotStreamConfig:
    """Trains end to end on a 2-core CPU: 128x128, 33-frame shots, 16 latent channels (as Wan),
    a 6-layer width-256 DiT.

    The student keeps Wan's shift 8 (sigmas 1, .96, .89, .74) rather than SD3's sqrt-tokens rule,
    which would carry it to 1.6 at 64 patches a frame: distilled from the same teacher, that
    student drew the character far less often (docs/experiments.md, Student, "Levers tried").
    """
    return ShotStreamConfig(preset="tiny", video=VideoConfig(),
                            model=ModelConfig(text_mask=True, first_shot_zero_context=False),
                            prompt=PromptConfig(template="{global_caption} {caption}", max_chars=2000))


def wan21_1_3b() -> ShotStreamConfig:
    """Wan2.1-T2V-1.3B dimensions (480x832, 81 frames, umT5-XXL text states), with the released
    ShotStream's behaviour: the first shot after 6 zero latents, no text padding mask, the
    "shot{i}:" prompt template, and the official teacher's sampling for a bidirectional model.

    Its global captions run to ~2,100 characters and umT5 keeps 512 tokens (~2,300 characters of
    English): prompts are cut at 8,000 characters only to bound the tokenizer's work, so the
    encoder's own 512-token truncation is the one that applies."""
    return ShotStreamConfig(
        preset="wan2.1-1.3b",
        video=VideoConfig(height=480, width=832, fps=16, frames_per_shot=81, latent_channels=16),
        model=ModelConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, text_dim=4096, text_len=512,
                          text_mask=False, first_shot_zero_context=True),
        # A released bidirectional teacher as a baseline samples as the official one: shift 8,
        # guidance 6, context at the target's noise level, the negative prompt in every slot.
        sampler=SamplerConfig(teacher_shift=8.0, guidance_scale=6.0, teacher_context_noise="target",
                              teacher_null_slots="all"),
        prompt=PromptConfig(template="{global_caption}shot{shot}:{caption}", max_chars=8000, fix_text=True),
    )


PRESETS: dict[str, typing.Callable[[], ShotStreamConfig]] = {"tiny": tiny, "wan2.1-1.3b": wan21_1_3b}


def get_preset(name: str) -> ShotStreamConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}{_did_you_mean(name, PRESETS)}; choose from {sorted(PRESETS)}")
    return PRESETS[name]()


# ---------------------------------------------------------------------------------------------
# Loud, typed overrides and dict loading (shared by every config dataclass in the project).


def _did_you_mean(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(value, tp, where: str):
    """Convert `value` (str from a command line or JSON value) to the annotated type `tp`."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item_tp, *_rest) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        try:
            return tuple(_coerce(v, item_tp, where) for v in value)
        except TypeError:
            raise ValueError(f"{where}: expected a list, got {value!r}") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float, str):
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        if tp is not str and isinstance(value, bool):
            raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}")
        try:
            return tp(value) if not (tp is int and isinstance(value, str)) else int(value, 0)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    return value


def _field_types(cls) -> dict:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def from_dict(cls, data: dict, where: str = "config"):
    """Build dataclass `cls` from a (nested) dict; unknown keys raise with a suggestion."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    types = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in types:
            raise KeyError(f"{where}: unknown key {key!r}{_did_you_mean(key, types)}")
        tp = types[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, f"{where}.{key}")
        else:
            kwargs[key] = _coerce(value, tp, f"{where}.{key}")
    return cls(**kwargs)


def apply_overrides(cfg, overrides: typing.Iterable[str]):
    """Apply `a.b=value` strings to a nested dataclass in place; returns it for chaining."""
    for item in overrides or ():
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        target, parts = cfg, key.strip().split(".")
        for depth, part in enumerate(parts):
            types = _field_types(type(target))
            if part not in types:
                path = ".".join(parts[:depth] + [part])
                raise KeyError(f"unknown config key {path!r}{_did_you_mean(part, types)}")
            if depth == len(parts) - 1:
                if dataclasses.is_dataclass(types[part]):
                    raise ValueError(f"{key!r} is a group; set one of its fields, e.g. {key}.{fields(types[part])[0].name}=...")
                setattr(target, part, _coerce(raw, types[part], key))
            else:
                target = getattr(target, part)
    return cfg
