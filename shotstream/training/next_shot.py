"""What every next-shot training stage shares (the teacher, ODE pairs, self-forcing): the model
config, the frozen autoencoder and text encoder, next-shot batches, and sample sheets.

The stages themselves live beside it (teacher.py, ode.py, self_forcing.py); each subclasses
`NextShotStage` and adds its model and loss.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shotstream.autoencoder import TinyVideoAutoencoder
from shotstream.config import apply_overrides, get_preset
from shotstream.model.loading import read_config
from shotstream.text_encoder import TextEncoder, text_dropout
from shotstream.training.data import (LatentCache, NextShotBatch, NextShotExample, StoryPool, collate,
                                      first_latent_frames, sample_example)
from shotstream.training.state import derive_seed
from shotstream.training.trainer import TrainConfig


def build_config(preset: str, overrides=(), teacher: str | None = None):
    """The stage's model config: the preset's, or the teacher's (distillation), plus overrides."""
    cfg = read_config(teacher)[0] if teacher else get_preset(preset)
    return apply_overrides(cfg, overrides).validate()


class NextShotStage:
    """What every next-shot stage shares: the config, the frozen autoencoder and text encoder, data."""

    def __init__(self, config, train: TrainConfig):
        self.cfg, self.train = config, train
        self.device = torch.device(train.device)
        # Distillation stages inherit the teacher's geometry; the teacher stage starts from a preset.
        self.config = build_config(config.preset, config.model_overrides, getattr(config, "teacher", None))
        self.autoencoder = TinyVideoAutoencoder.from_pretrained(config.autoencoder, device=self.device).eval().requires_grad_(False)
        self.text_encoder = TextEncoder(max_len=self.config.model.text_len, device=self.device)
        null_states, null_mask = self.text_encoder.null_caption()
        self.null_states, self.null_mask = null_states.to(self.device), null_mask.to(self.device)
        cache = getattr(config, "latent_cache", "")  # teacher options (ode-pairs inherits them)
        self.latents = LatentCache(cache, config.autoencoder, self.autoencoder, self.config, self.device) if cache else None
        size = getattr(config, "story_pool", 0)
        self.pool = StoryPool(size, self.autoencoder, self.config, self.device, config.max_shots, self.latents) if size else None

    def batch(self, step: int, shard: int, num_shards: int) -> NextShotBatch:
        return self.to_batch(self.examples(step, shard), step, shard)

    def examples(self, step: int, shard: int) -> list[NextShotExample]:
        return [self.example(derive_seed(self.train.seed, step, shard, i)) for i in range(self.train.batch_size)]

    def to_batch(self, examples: list[NextShotExample], step: int, shard: int) -> NextShotBatch:
        rng = np.random.default_rng(derive_seed(self.train.seed, step, shard, 0x0D))
        return collate(examples, self.autoencoder, self.text_encoder, self.config, self.device,
                       context_dropout=getattr(self.cfg, "context_dropout", 0.0), rng=rng,
                       character_loss_weight=self.character_loss_weight(step),
                       named=getattr(self.cfg, "named_loss_weight", 0.0) > 0)  # teacher options

    def example(self, seed: int) -> NextShotExample:
        """A target shot with its context: from the story pool if there is one, else a fresh story."""
        share = getattr(self.cfg, "pronoun_share", 0.0)  # teacher options (ode-pairs inherits them, at 0)
        frames = getattr(self.cfg, "target_frames", 0)
        if self.pool is not None:
            e = self.pool.example(seed, share)
        elif self.latents is not None:
            e = self.latents.example(seed, self.cfg.max_shots, share)
        else:
            e = sample_example(seed, self.config, self.cfg.max_shots, share)
        return first_latent_frames(e, frames, self.config) if frames else e

    def character_loss_weight(self, step: int) -> float:
        if step <= getattr(self.cfg, "character_weight_from_step", 0):
            return 1.0
        return getattr(self.cfg, "character_loss_weight", 1.0)

    def drop_target_text(self, batch: NextShotBatch, p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Text dropout on the target's caption slot (the unconditional branch of CFG); also
        returns which examples lost it [B]."""
        C = batch.budget
        text, mask = batch.text.clone(), batch.text_mask.clone()
        text[:, C], mask[:, C], dropped = text_dropout(text[:, C], mask[:, C], self.null_states, self.null_mask, p)
        return text, mask, dropped


def sample_story_sheet(pipe, story_index: int, shots: int, out_dir: Path) -> Path:
    """Generate the first shots of an evaluation story and save its mp4 and contact sheet."""
    from shotstream.video import contact_sheet, save_png, write_mp4
    from shotstream.world.dataset import load_eval_suite

    story = load_eval_suite()[story_index]
    session = pipe.session(seed=0, global_caption=story.global_caption)
    for caption in story.captions[:shots]:
        session.submit(caption)
    for _ in session.stream():
        pass
    write_mp4(out_dir / "story.mp4", session.story_frames(), pipe.config.video.fps)
    return save_png(out_dir / "story.png", contact_sheet([s.frames for s in session.shots], [s.caption for s in session.shots]))
