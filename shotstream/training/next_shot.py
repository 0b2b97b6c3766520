"""What every next-shot training stage shares (the teacher, ODE pairs, self-forcing): the model
config, the frozen autoencoder and text encoder, the examples drawn from StoryWorld (NextShotData's
options, validated once), next-shot batches, and sample sheets.

The stages themselves live beside it (teacher.py, ode.py, self_forcing.py); each subclasses
`NextShotStage` and adds its model and loss.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class NextShotData:
    """The next-shot examples a stage draws from StoryWorld (the teacher, ODE pairs) and how its
    loss weighs them; a stage config inherits these options (self-forcing draws its own stories)."""

    max_shots: int = 6  # training stories have 2..max_shots shots
    context_dropout: float = 0.0  # share of examples whose context is masked out (CFG on the context)
    pronoun_share: float = 0.0  # share of examples targeting an "it" shot (data.target_shot); 0 = uniform
    # Latent frames of each target shot trained on, from its opening (data.first_latent_frames);
    # 0 = the whole shot. 1 keeps the decision of who is drawn, from the same context, at 448
    # tokens an example against 960: some twice the examples a second.
    target_frames: int = 0
    character_loss_weight: float = 1.0  # loss weight on the latent cells of the main character (data.character_weight)
    character_weight_from_step: int = 0  # ...applied after this step: scenes first, then the small characters
    # Train on a fixed pool of this many stories, each example encoded once and kept in host memory
    # (data.StoryPool; ~1 MB a story at the tiny preset): a batch whose examples are all encoded
    # already takes ~0.2 s instead of ~3.4 s (1 thread). 0 = a fresh story for every example.
    story_pool: int = 0
    # Folder of the on-disk latent cache (data.LatentCache): each example is rendered and encoded
    # once for every step, run and stage that draws it; "" = encode every batch's examples anew.
    latent_cache: str = ""

    def character_weight_at(self, step: int) -> float:
        """The loss weight on the character's cells at `step` (1 until character_weight_from_step)."""
        return 1.0 if step <= self.character_weight_from_step else self.character_loss_weight

    def validate(self) -> "NextShotData":
        if self.target_frames < 0:
            raise ValueError(f"stage.target_frames must be >= 0 (0 = the whole shot), got {self.target_frames}")
        if self.story_pool < 0:
            raise ValueError(f"stage.story_pool must be >= 0 (0 = no pool), got {self.story_pool}")
        if not 0 <= self.pronoun_share <= 1:
            raise ValueError(f"stage.pronoun_share must be in [0, 1], got {self.pronoun_share}")
        if not 0 <= self.context_dropout <= 1:
            raise ValueError(f"stage.context_dropout must be in [0, 1], got {self.context_dropout}")
        return self


class NextShotStage:
    """What every next-shot stage shares: the config, the frozen autoencoder and text encoder, and
    (a config with NextShotData's options) the examples and batches."""

    def __init__(self, config, train: TrainConfig, teacher: str | None = None):
        """`teacher`: distillation stages take its geometry; the teacher stage starts from a preset."""
        self.cfg, self.train = config, train
        self.device = torch.device(train.device)
        self.config = build_config(config.preset, config.model_overrides, teacher)
        self.autoencoder = TinyVideoAutoencoder.from_pretrained(config.autoencoder, device=self.device).eval().requires_grad_(False)
        self.text_encoder = TextEncoder(max_len=self.config.model.text_len, device=self.device)
        null_states, null_mask = self.text_encoder.null_caption()
        self.null_states, self.null_mask = null_states.to(self.device), null_mask.to(self.device)
        self.latents = self.pool = None
        if isinstance(config, NextShotData):  # (self-forcing draws its own stories)
            if config.latent_cache:
                self.latents = LatentCache(config.latent_cache, config.autoencoder, self.autoencoder, self.config, self.device)
            if config.story_pool:
                self.pool = StoryPool(config.story_pool, self.autoencoder, self.config, self.device, config.max_shots, self.latents)

    def batch(self, step: int, shard: int, num_shards: int) -> NextShotBatch:
        return self.to_batch(self.examples(step, shard), step, shard)

    def examples(self, step: int, shard: int) -> list[NextShotExample]:
        return [self.example(derive_seed(self.train.seed, step, shard, i)) for i in range(self.train.batch_size)]

    def to_batch(self, examples: list[NextShotExample], step: int, shard: int) -> NextShotBatch:
        rng = np.random.default_rng(derive_seed(self.train.seed, step, shard, 0x0D))
        return collate(examples, self.autoencoder, self.text_encoder, self.config, self.device,
                       context_dropout=self.cfg.context_dropout, rng=rng,
                       character_loss_weight=self.cfg.character_weight_at(step))

    def example(self, seed: int) -> NextShotExample:
        """A target shot with its context: from the story pool if there is one, else a fresh story."""
        share, frames = self.cfg.pronoun_share, self.cfg.target_frames
        if self.pool is not None:
            e = self.pool.example(seed, share)
        elif self.latents is not None:
            e = self.latents.example(seed, self.cfg.max_shots, share)
        else:
            e = sample_example(seed, self.config, self.cfg.max_shots, share)
        return first_latent_frames(e, frames, self.config) if frames else e

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
