"""Stage 1: the bidirectional next-shot teacher.

    shotstream train teacher --config teacher              # ~4.6 h on 2 CPU cores (last 62 min: the cooldown)
    shotstream train teacher --config teacher_finetune     # then from it: a story pool, 32 frames a step
    shotstream train teacher --config teacher_phase3       # then: half the targets "it" shots, 8 frames a step
    shotstream train teacher --config teacher_smoke        # a few steps (CI)

Target: one shot of a story. Condition: the clean latents of the frames `select_context_frames`
picks from the ground-truth earlier shots, concatenated in time before the noisy target, each
with its shot's caption and shot flag (RoPE indicator). Flow-matching loss on the target frames
only; 10% context dropout and 10% text dropout (the target's caption -> null, for CFG).
Optionally (`image_batches`) each step also trains on single frames, as Wan trains on images
and videos jointly: at 64 tokens a frame against 960 for a shot with context, images are the cheap
way to teach what a caption's character looks like.

`target_frames` cuts each target to its opening latent frames: who is drawn is decided there,
from the same context, at about half the tokens an example.

The teacher with four more losses on the main character's identity, none of which taught it to
read the shape from its earlier shots, is an experiment (experiments/identity_teacher.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from shotstream import flow_matching as fm
from shotstream import paths
from shotstream.conditioning import next_shot_velocity
from shotstream.model.dit import WanDiT, num_parameters
from shotstream.model.loading import expand_blocks, expansion_plan, export_model, from_pretrained
from shotstream.training.data import NextShotBatch, NextShotExample, collate, sample_image_example
from shotstream.training.next_shot import NextShotData, NextShotStage, build_config, sample_story_sheet
from shotstream.training.state import derive_seed
from shotstream.training.trainer import OptimizerSpec, TrainConfig


@dataclass
class TeacherConfig(NextShotData):  # and the examples it trains on
    preset: str = "tiny"
    model_overrides: tuple[str, ...] = ()  # e.g. model.shot_indicator=none (same syntax as the CLI)
    autoencoder: str = paths.AUTOENCODER
    # Model folder to start from (a fine-tuning phase, teacher_finetune.json); "" = from scratch. With
    # model.num_layers above the init's, its blocks are expanded (loading.expand_blocks).
    init: str = ""
    # lr multiplier of the blocks that expansion adds: their outputs start at zero, and at a phase's
    # lr (1e-4, Adam) they grow to ~1% of the old blocks' in 700 steps, adding almost nothing.
    new_block_lr_scale: float = 1.0
    # Shift of the training noise levels; 0 = the sampler's teacher_shift. A lower shift trains more
    # at low noise, where a 16x16 latent decides the character's shape and pattern.
    shift: float = 0.0
    context_dropout: float = 0.1  # (NextShotData's 0 is ODE pairs': the teacher learns CFG on the context)
    text_dropout: float = 0.1
    # Joint image training, as "after_step:size" entries (ascending): every step after `after_step`
    # adds `size` single frames (data.sample_image_example), until the next entry takes over.
    image_batches: tuple[str, ...] = ()
    sample_story: int = 0  # evaluation-suite story drawn by sample()
    sample_shots: int = 3
    sample_steps: int = 20
    export_to: str = ""  # also write the final model folder here (e.g. checkpoints/tiny/teacher)

    def image_schedule(self) -> list[tuple[int, int]]:
        """`image_batches` as (after_step, size) pairs; a malformed entry raises ValueError."""
        schedule = []
        for entry in self.image_batches:
            try:
                after, size = (int(v) for v in entry.split(":"))
            except ValueError:
                raise ValueError(f"stage.image_batches: {entry!r} is not 'after_step:size'") from None
            if size < 0 or after < 0 or (schedule and after <= schedule[-1][0]):
                raise ValueError(f"stage.image_batches: {entry!r} needs size, step >= 0 and steps ascending")
            schedule.append((after, size))
        return schedule

    def image_batch_size(self, step: int) -> int:
        """Single frames that `step` adds to its video batch (0 before the schedule's first entry)."""
        return next((size for after, size in reversed(self.image_schedule()) if step > after), 0)

    def validate(self) -> "TeacherConfig":
        NextShotData.validate(self)
        self.image_schedule()
        if self.shift < 0:
            raise ValueError(f"stage.shift must be >= 0 (0 = the sampler's teacher_shift), got {self.shift}")
        if self.new_block_lr_scale <= 0:
            raise ValueError(f"stage.new_block_lr_scale must be > 0, got {self.new_block_lr_scale}")
        return self


class TeacherStage(NextShotStage):
    Config = TeacherConfig

    def __init__(self, config: TeacherConfig, train: TrainConfig):
        super().__init__(config, train)
        self.model = WanDiT(self.config.model, self.config.video.latent_channels).to(self.device)
        self.new_blocks: list[int] = []  # blocks added to the init by expansion
        if config.init:
            start, _, kind = from_pretrained(config.init)
            layers = self.config.model.num_layers
            if dataclasses.replace(start.cfg, num_layers=layers) == self.config.model and start.cfg.num_layers < layers:
                # model.num_layers=N in model_overrides: a deeper phase
                self.new_blocks = [i for i, (_, new) in enumerate(expansion_plan(start.cfg.num_layers, layers)) if new]
                start = expand_blocks(start, layers)
            if kind != "bidirectional" or start.cfg != self.config.model:
                raise ValueError(f"{config.init}: not a teacher of this config ({kind}); the fine-tuning phase "
                                 "starts from the bidirectional teacher it continues (or a shallower one)")
            self.model.load_state_dict(start.state_dict())
        print(f"teacher: {num_parameters(self.model) / 1e6:.2f}M parameters")

    def modules(self):
        return {"model": self.model}

    def optimizers(self):
        scale = self.cfg.new_block_lr_scale
        new = tuple(f"blocks.{i}." for i in self.new_blocks) if scale != 1 else ()  # startswith(()) is False
        return {"model": OptimizerSpec(tuple(self.modules()), lr_scale={
            k: scale for k, _ in self.model.named_parameters() if k.startswith(new)})}

    def batch(self, step: int, shard: int, num_shards: int) -> list[NextShotBatch]:
        """The video batch, then (if the `image_batches` schedule says so) a batch of single frames."""
        examples = self.examples(step, shard)
        batches = [self.to_batch(examples, step, shard)]
        if size := self.cfg.image_batch_size(step):
            # The i-th frame's seed does not depend on the size: a grown batch keeps the earlier frames.
            seeds = [derive_seed(self.train.seed, step, shard, 0x1A6E, i) for i in range(size)]
            images = [self.image_example(s) for s in seeds]
            batches.append(collate(images, self.autoencoder, self.text_encoder, self.config, self.device,
                                   character_loss_weight=self.cfg.character_weight_at(step), budget=0))
        return batches

    def image_example(self, seed: int) -> NextShotExample:
        if self.pool is not None:
            return self.pool.image_example(seed)
        return sample_image_example(seed, self.config, self.cfg.max_shots)

    def loss(self, name: str, batches: list[NextShotBatch], step: int):
        loss, logs = self.video_loss(batches[0])
        if len(batches) > 1:
            image = self.flow_matching_loss(batches[1])[0]
            loss, logs = loss + image, logs | {"image_loss": image.item()}
        return loss, logs

    def video_loss(self, batch: NextShotBatch) -> tuple[torch.Tensor, dict]:
        loss, _ = self.flow_matching_loss(batch)
        return loss, {"video_loss": loss.item()}

    def flow_matching_loss(self, batch: NextShotBatch) -> tuple[torch.Tensor, SimpleNamespace]:
        """The loss, and what other losses can reuse: the noisy target x_t, its noise, noise levels
        sigma [B], velocity v and the text after dropout (text, mask, text_kept [B])."""
        shift = self.cfg.shift or self.config.sampler.teacher_shift
        sigma = fm.sample_training_sigmas(batch.target.shape[0], shift).to(self.device)
        noise = torch.randn_like(batch.target)
        text, mask, dropped = self.drop_target_text(batch, self.cfg.text_dropout)
        x_t = fm.add_noise(batch.target, noise, sigma)
        v = next_shot_velocity(self.model, batch.conditioning(self.model.cfg.chunk_frames, text, mask), x_t, sigma)
        fit = SimpleNamespace(x_t=x_t, noise=noise, sigma=sigma, v=v, text=text, mask=mask, text_kept=~dropped)
        return fm.flow_matching_loss(v, batch.target, noise, self.cell_weight(batch)), fit

    @staticmethod
    def cell_weight(batch: NextShotBatch) -> torch.Tensor | None:
        """The flow-matching weight of each target latent [B, F, C, h, w] (character_weight), or None."""
        return None if batch.loss_weight is None else batch.loss_weight[:, :, None].expand_as(batch.target)

    def pipeline(self):
        from shotstream.session import ShotStreamPipeline

        config = build_config(self.cfg.preset, self.cfg.model_overrides)
        config.sampler.teacher_steps = self.cfg.sample_steps
        return ShotStreamPipeline(self.model, config, self.autoencoder, self.text_encoder, kind="bidirectional")

    def sample(self, step: int, out_dir: Path) -> None:
        sample_story_sheet(self.pipeline(), self.cfg.sample_story, self.cfg.sample_shots, out_dir)

    def export(self, out_dir: Path) -> list[Path]:
        return export_model(self.model, self.config, out_dir / "teacher", self.cfg.export_to, kind="bidirectional")
