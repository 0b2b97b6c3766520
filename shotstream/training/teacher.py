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

Four optional losses single out the main character's identity (IdentityReadout, `named_loss`,
`contrast_loss`, and in pixel space `shape_loss`); none taught the teacher to read the shape from
its earlier shots, and none is in the shipped recipe (docs/experiments.md, "Does it read its earlier
shots").
"""

from __future__ import annotations

import copy
import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from einops import reduce
from torch import nn

from shotstream import flow_matching as fm
from shotstream import paths
from shotstream.conditioning import next_shot_velocity
from shotstream.model.dit import WanDiT, num_parameters
from shotstream.model.loading import expand_blocks, expansion_plan, export_model, from_pretrained
from shotstream.session import to_model_video
from shotstream.training.data import IDENTITY, NextShotBatch, NextShotExample, collate, sample_image_example
from shotstream.training.next_shot import NextShotStage, build_config, sample_story_sheet
from shotstream.training.shape_classifier import ShapeClassifier, prediction_shape_logits
from shotstream.training.state import derive_seed
from shotstream.training.trainer import OptimizerSpec, TrainConfig
from shotstream.world import vocab
from shotstream.world.render import render_shot
from shotstream.world.story import with_main


@dataclass
class TeacherConfig:
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
    context_dropout: float = 0.1
    text_dropout: float = 0.1
    character_loss_weight: float = 1.0  # loss weight on the latent cells of the main character (data.character_weight)
    character_weight_from_step: int = 0  # ...applied after this step: scenes first, then the small characters
    pronoun_share: float = 0.0  # share of examples targeting an "it" shot (data.target_shot); 0 = uniform
    # Latent frames of each target shot trained on, from its opening (data.first_latent_frames);
    # 0 = the whole shot. 1 keeps the decision of who is drawn, from the same context, at 448
    # tokens an example against 960: some twice the examples a second.
    target_frames: int = 0
    # Weight of the auxiliary identity loss (IdentityReadout, training only); 0 = off.
    identity_loss_weight: float = 0.0
    # Weight of the named-caption loss on "it" targets (`named_loss`; needs an init); 0 = off.
    named_loss_weight: float = 0.0
    # lambda of the contrastive term on the character's cells (`shape_contrast`, < 1); 0 = off.
    shape_contrast: float = 0.0
    # Weight of the pixel-space shape loss (`shape_loss`): a frozen shape classifier (trained by
    # `shotstream train shape_classifier`) reads the decoded x0 prediction; 0 = off.
    shape_loss_weight: float = 0.0
    shape_classifier: str = paths.SHAPE_CLASSIFIER
    # Joint image training, as "after_step:size" entries (ascending): every step after `after_step`
    # adds `size` single frames (data.sample_image_example), until the next entry takes over.
    image_batches: tuple[str, ...] = ()
    max_shots: int = 6  # training stories have 2..max_shots shots
    # Train on a fixed pool of this many stories, each example encoded once and kept in host memory
    # (data.StoryPool; ~1 MB a story at the tiny preset): a batch whose examples are all encoded
    # already takes ~0.2 s instead of ~3.4 s (1 thread). 0 = a fresh story for every example.
    story_pool: int = 0
    # Folder of the on-disk latent cache (data.LatentCache): each example is rendered and encoded
    # once for every step, run and stage that draws it; "" = encode every batch's examples anew.
    latent_cache: str = ""
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
        self.image_schedule()
        if self.target_frames < 0:
            raise ValueError(f"stage.target_frames must be >= 0 (0 = the whole shot), got {self.target_frames}")
        if self.story_pool < 0:
            raise ValueError(f"stage.story_pool must be >= 0 (0 = no pool), got {self.story_pool}")
        if self.shift < 0:
            raise ValueError(f"stage.shift must be >= 0 (0 = the sampler's teacher_shift), got {self.shift}")
        if not 0 <= self.pronoun_share <= 1:
            raise ValueError(f"stage.pronoun_share must be in [0, 1], got {self.pronoun_share}")
        for name in ("identity_loss_weight", "named_loss_weight", "shape_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"stage.{name} must be >= 0 (0 = off), got {getattr(self, name)}")
        if not 0 <= self.shape_contrast < 1:
            raise ValueError(f"stage.shape_contrast must be in [0, 1) (0 = off), got {self.shape_contrast}")
        if self.named_loss_weight and not self.init:
            raise ValueError("stage.named_loss_weight needs stage.init: its targets are the init's predictions")
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
        # named_loss's reference: the init, frozen (the trained model could instead learn to
        # ignore the names, which would zero that loss too)
        self.negatives: dict[tuple[int, int], torch.Tensor] = {}  # shape_contrast's, with the story pool
        self.reference = copy.deepcopy(self.model).eval().requires_grad_(False) if config.named_loss_weight else None
        self.readout = IdentityReadout(self.config.model.dim, self.config.model.patch_size).to(self.device) if config.identity_loss_weight else None
        self.shape_classifier = (ShapeClassifier.from_pretrained(config.shape_classifier, self.device).requires_grad_(False)
                                 if config.shape_loss_weight else None)
        print(f"teacher: {num_parameters(self.model) / 1e6:.2f}M parameters")

    def modules(self):
        return {"model": self.model} | ({"readout": self.readout} if self.readout else {})

    def optimizers(self):
        scale = self.cfg.new_block_lr_scale
        new = tuple(f"blocks.{i}." for i in self.new_blocks) if scale != 1 else ()  # startswith(()) is False
        return {"model": OptimizerSpec(tuple(self.modules()), lr_scale={
            k: scale for k, _ in self.model.named_parameters() if k.startswith(new)})}

    def batch(self, step: int, shard: int, num_shards: int) -> list[NextShotBatch]:
        """The video batch, then (if the `image_batches` schedule says so) a batch of single frames."""
        examples = self.examples(step, shard)
        video = self.to_batch(examples, step, shard)
        if self.cfg.shape_contrast:
            frames = video.target.shape[1]  # the negative cut as the target (target_frames)
            video = dataclasses.replace(video, negative=torch.stack([self.negative(e)[:frames] for e in examples]).to(self.device))
        batches = [video]
        if size := self.cfg.image_batch_size(step):
            # The i-th frame's seed does not depend on the size: a grown batch keeps the earlier frames.
            seeds = [derive_seed(self.train.seed, step, shard, 0x1A6E, i) for i in range(size)]
            images = [self.image_example(s) for s in seeds]
            batches.append(collate(images, self.autoencoder, self.text_encoder, self.config, self.device,
                                   character_loss_weight=self.character_loss_weight(step), budget=0))
        return batches

    @torch.no_grad()
    def negative(self, e: NextShotExample) -> torch.Tensor:
        """Latents [f, C, h, w] of the example's target shot drawn with the main character in another
        shape (drawn per story and shot; everything else the same render). Kept with the story pool."""
        key = (e.story.seed, e.shot)
        if key not in self.negatives:
            shapes = [s for s in vocab.SHAPES if s != e.story.main_character.shape]
            shape = shapes[int(np.random.default_rng([e.story.seed, e.shot, 0x5A]).integers(len(shapes)))]
            frames, _ = render_shot(with_main(e.story, shape=shape), e.shot, self.config.video)
            latent = self.autoencoder.encode(to_model_video(frames, self.device)[None])[0].cpu()
            if self.pool is None:
                return latent
            self.negatives[key] = latent
        return self.negatives[key]

    def image_example(self, seed: int) -> NextShotExample:
        if self.pool is not None:
            return self.pool.image_example(seed)
        return sample_image_example(seed, self.config, self.cfg.max_shots)

    def loss(self, name: str, batches: list[NextShotBatch], step: int):
        video, fit = self.flow_matching_loss(batches[0])
        loss, logs = video, {"video_loss": video.item()}
        if self.readout is not None and batches[0].identity is not None:
            identity, readout_logs = self.readout.loss(fit.tokens, batches[0], fit.sigma)
            loss, logs = loss + self.cfg.identity_loss_weight * identity, logs | readout_logs
        if self.cfg.shape_contrast and batches[0].negative is not None:
            contrast = self.contrast_loss(batches[0], fit)
            loss, logs = loss - self.cfg.shape_contrast * contrast, logs | {"contrast_distance": contrast.item()}
        if self.shape_classifier is not None and batches[0].identity is not None:
            shape, shape_logs = self.shape_loss(batches[0], fit)
            loss, logs = loss + self.cfg.shape_loss_weight * shape, logs | shape_logs
        if self.cfg.named_loss_weight and batches[0].named_text is not None:
            named = self.named_loss(batches[0], fit)
            loss, logs = loss + self.cfg.named_loss_weight * named, logs | {"named_loss": named.item()}
        if len(batches) > 1:
            image = self.flow_matching_loss(batches[1])[0]
            loss, logs = loss + image, logs | {"image_loss": image.item()}
        return loss, logs

    def flow_matching_loss(self, batch: NextShotBatch) -> tuple[torch.Tensor, SimpleNamespace]:
        """The loss, and what the other losses reuse: the noisy target x_t, its noise, noise levels sigma [B],
        velocity v, the text after dropout (text, mask, text_kept [B]) and the last block's tokens
        of the target [B, F*n, D]."""
        shift = self.cfg.shift or self.config.sampler.teacher_shift
        sigma = fm.sample_training_sigmas(batch.target.shape[0], shift).to(self.device)
        noise = torch.randn_like(batch.target)
        text, mask, dropped = self.drop_target_text(batch, self.cfg.text_dropout)
        x_t = fm.add_noise(batch.target, noise, sigma)
        with block_output(self.model.blocks[-1]) as tokens:
            v = next_shot_velocity(self.model, batch.conditioning(self.model.cfg.chunk_frames, text, mask), x_t, sigma)
        n = batch.budget * math.prod(self.model.grid(*batch.target.shape[-2:]))  # the context's tokens come first
        fit = SimpleNamespace(x_t=x_t, noise=noise, sigma=sigma, v=v, text=text, mask=mask, text_kept=~dropped, tokens=tokens[0][:, n:])
        return fm.flow_matching_loss(v, batch.target, noise, self.cell_weight(batch)), fit

    def named_loss(self, batch: NextShotBatch, fit: SimpleNamespace) -> torch.Tensor:
        """On "it" targets (with their context and caption kept): the squared distance of the
        velocity to the init's (`reference`) at the same x_t with the caption that names the
        character.

        The model draws a character its caption names, and on "it" shots it takes only the colour
        from the context (`context_use`): the flow-matching target, x0 under heavy noise, barely
        rewards the shape. The named prediction holds what the caption would have added, noise-free:
        this asks the context to add the same."""
        C = batch.budget
        text, mask = fit.text.clone(), fit.mask.clone()
        text[:, C], mask[:, C] = batch.named_text, batch.named_mask
        with torch.no_grad():
            target = next_shot_velocity(self.reference, batch.conditioning(self.model.cfg.chunk_frames, text, mask),
                                        fit.x_t, fit.sigma)
        err = (fit.v.float() - target.float()) ** 2
        use = (batch.pronoun & fit.text_kept & batch.context_valid.any(1)).float()[:, None, None, None, None]
        cells = self.cell_weight(batch)
        weight = use.expand_as(err) if cells is None else use * cells
        return (err * weight).sum() / weight.sum().clamp_min(1e-12)

    def contrast_loss(self, batch: NextShotBatch, fit: SimpleNamespace) -> torch.Tensor:
        """Contrastive flow matching's distance to a negative (ΔFM, Stoica et al. 2025), whose
        subtraction (`shape_contrast` x this) pushes the velocity away from the one that would draw
        the character in another shape (batch.negative), on its cells only (elsewhere the two
        targets agree). The same weights and normaliser as the flow-matching loss, so lambda < 1
        keeps the sum convex: its optimum overshoots the true target by lambda / (1 - lambda) of
        the difference.

        The flow-matching error barely depends on the shape: a caption naming another one hardly
        moves the error on the character's cells (`context_use`'s caption_shape, docs/experiments.md).
        This term's gradient is that difference alone, noise-free, so learning it means knowing
        the shape: from the caption, or on "it" shots from the context."""
        err = (fit.v.float() - fm.velocity_target(batch.negative, fit.noise).float()) ** 2
        cells = batch.character[:, :, None].expand_as(err).float()
        weight = self.cell_weight(batch)
        weight = torch.ones_like(err) if weight is None else weight
        return (err * weight * cells).sum() / weight.sum().clamp_min(1e-12)

    def shape_loss(self, batch: NextShotBatch, fit: SimpleNamespace) -> tuple[torch.Tensor, dict]:
        """Cross-entropy of the frozen shape classifier on the x0 prediction's first latent frame,
        decoded (the autoencoder's lone-frame path) and cropped around the character's cells; over
        the examples whose caption was kept and whose character is in that frame. Logs it and the
        classifier's accuracy at noise >= 0.5.

        The flow-matching error barely depends on the shape (`contrast_loss`): a few latent cells
        whose squared error is nearly the same for every shape. The classifier sees the shape
        whole, in pixels, so its gradient says which way the cells must move to draw it."""
        use = fit.text_kept & batch.character[:, 0].flatten(1).any(1)
        if not use.any():
            return fit.v.sum() * 0, {}
        logits, _ = prediction_shape_logits(self.shape_classifier, self.autoencoder, fit.x_t[use], fit.v[use],
                                            fit.sigma[use], batch.character[use])
        shapes = batch.identity[use, 0]
        loss = F.cross_entropy(logits, shapes)
        logs = {"shape_loss": loss.item()}
        noisy = fit.sigma[use] >= 0.5
        if noisy.any():
            logs["shape_acc"] = (logits.argmax(1) == shapes)[noisy].float().mean().item()
        return loss, logs

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


class IdentityReadout(nn.Module):
    """An auxiliary head, for training only: linear readouts of the main character's shape, colour
    and pattern from the teacher's last-block tokens, averaged over the character's cells in the
    target.

    The teacher takes the colour from its earlier shots and ignores the shape (`context_use`): the
    flow-matching loss on a few cells barely rewards the shape. On an "it" shot at high noise
    the identity is only in the context, so this cross-entropy asks the model to carry it
    into the target's tokens, where the head (which renders them) can use it."""

    def __init__(self, dim: int, patch_size: tuple[int, int, int]):
        super().__init__()
        self.patch_size = patch_size
        self.norm = nn.LayerNorm(dim)
        self.heads = nn.ModuleDict({name: nn.Linear(dim, len(space)) for name, space in IDENTITY.items()})

    def forward(self, tokens: torch.Tensor, cells: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """tokens [B, F*n, D] of the target, cells [B, F, h, w] bool -> ({attribute: logits [B, k]},
        seen [B]: whether the character is on any token)."""
        pt, ph, pw = self.patch_size
        on = reduce(cells.float(), "b (f pt) (h ph) (w pw) -> b (f h w)", "max", pt=pt, ph=ph, pw=pw)
        pooled = (tokens * on[..., None]).sum(1) / on.sum(1).clamp(min=1)[:, None]
        h = self.norm(pooled)
        return {name: head(h) for name, head in self.heads.items()}, on.sum(1) > 0

    def loss(self, tokens: torch.Tensor, batch: NextShotBatch, sigma: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Summed cross-entropy over the examples whose character is in view; logs it and each
        attribute's accuracy at noise >= 0.5 (where the target's own latents barely show it)."""
        logits, seen = self(tokens, batch.character)
        identity = batch.identity
        ce = sum(F.cross_entropy(z, identity[:, i], reduction="none") for i, z in enumerate(logits.values()))
        loss = (ce * seen).sum() / seen.sum().clamp(min=1)
        logs = {"identity_loss": loss.item()}
        noisy = seen & (sigma >= 0.5)
        if noisy.any():
            logs |= {f"readout_{name}_acc": (z.argmax(1) == identity[:, i])[noisy].float().mean().item()
                     for i, (name, z) in enumerate(logits.items())}
        return loss, logs


@contextmanager
def block_output(block: nn.Module):
    """Collects `block`'s outputs while the context is open (a forward hook: the model's API stays
    that of inference)."""
    outputs: list[torch.Tensor] = []
    handle = block.register_forward_hook(lambda module, args, out: outputs.append(out))
    try:
        yield outputs
    finally:
        handle.remove()
