"""The teacher with four auxiliary losses on the main character's identity: a readout of it from
the last block's tokens (IdentityReadout), the init told the character's name on "it" shots
(`named_loss`), contrastive flow matching against the target drawn in another shape
(`contrast_loss`), and in pixel space a frozen shape classifier on the decoded x0 prediction
(`shape_loss`). None taught the teacher to read the shape from its earlier shots, and none is in
the shipped recipe (docs/experiments.md, "Does it read its earlier shots").

    shotstream train identity_teacher --config teacher_phase3 --out runs/teacher_identity \
        --override stage.init=runs/teacher_phase3/final/teacher --override stage.export_to= \
        --override stage.identity_loss_weight=0.5      # or named_loss_weight, shape_contrast, shape_loss_weight
    shotstream train identity_teacher --config teacher_smoke --override stage.shape_contrast=0.2
"""

from __future__ import annotations

import copy
import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from einops import reduce
from torch import nn

from experiments.shape_classifier import ShapeClassifier, prediction_shape_logits
from experiments.stories import named_story_caption, with_main
from shotstream import flow_matching as fm
from shotstream import paths
from shotstream.conditioning import next_shot_velocity
from shotstream.training.data import NextShotBatch, NextShotExample, character_cells
from shotstream.training.teacher import TeacherConfig, TeacherStage
from shotstream.training.trainer import TrainConfig
from shotstream.video import to_model_video
from shotstream.world import vocab
from shotstream.world.render import render_shot
from shotstream.world.story import Character

IDENTITY = {"shape": vocab.SHAPES, "colour": vocab.COLOURS, "pattern": vocab.PATTERNS}


def identity_labels(character: Character) -> list[int]:
    """A character's identity as indices in IDENTITY's label spaces."""
    return [space.index(getattr(character, name)) for name, space in IDENTITY.items()]


@dataclass
class IdentityTeacherConfig(TeacherConfig):
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

    def validate(self) -> "IdentityTeacherConfig":
        super().validate()
        for name in ("identity_loss_weight", "named_loss_weight", "shape_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"stage.{name} must be >= 0 (0 = off), got {getattr(self, name)}")
        if not 0 <= self.shape_contrast < 1:
            raise ValueError(f"stage.shape_contrast must be in [0, 1) (0 = off), got {self.shape_contrast}")
        if self.named_loss_weight and not self.init:
            raise ValueError("stage.named_loss_weight needs stage.init: its targets are the init's predictions")
        return self


@dataclass
class IdentityBatch(NextShotBatch):
    """A teacher batch and what the identity losses read about its targets' main character."""

    # (Defaults only because a dataclass's fields after defaulted ones need one; always set.)
    character: torch.Tensor | None = None  # its latent cells [B, F, h, w] bool (character_cells)
    identity: torch.Tensor | None = None  # [B, 3]: indices in IDENTITY's label spaces
    # named_loss: the target's caption slot with the character named (`named_caption`; the caption
    # itself on named shots) [B, L, Dt] / [B, L], and which targets are "it" shots [B].
    named_text: torch.Tensor | None = None
    named_mask: torch.Tensor | None = None
    pronoun: torch.Tensor | None = None
    negative: torch.Tensor | None = None  # [B, F, C, h, w]: the target drawn with another shape (`negative`)


class IdentityTeacherStage(TeacherStage):
    Config = IdentityTeacherConfig

    def __init__(self, config: IdentityTeacherConfig, train: TrainConfig):
        super().__init__(config, train)
        # named_loss's reference: the init, frozen (the trained model could instead learn to
        # ignore the names, which would zero that loss too)
        self.reference = copy.deepcopy(self.model).eval().requires_grad_(False) if config.named_loss_weight else None
        self.readout = IdentityReadout(self.config.model.dim, self.config.model.patch_size).to(self.device) if config.identity_loss_weight else None
        self.shape_classifier = (ShapeClassifier.from_pretrained(config.shape_classifier, self.device).requires_grad_(False)
                                 if config.shape_loss_weight else None)
        self.negatives: dict[tuple[int, int], torch.Tensor] = {}  # shape_contrast's, with the story pool

    def modules(self):
        return super().modules() | ({"readout": self.readout} if self.readout else {})

    def to_batch(self, examples: list[NextShotExample], step: int, shard: int) -> IdentityBatch:
        batch = super().to_batch(examples, step, shard)
        extra = dict(
            character=torch.from_numpy(np.stack([character_cells(e.target_boxes, self.config) for e in examples])).to(self.device),
            identity=torch.tensor([identity_labels(e.story.shots[e.shot].labels.main) for e in examples], device=self.device))
        if self.cfg.named_loss_weight:
            named = [named_story_caption(e.story, e.shot) for e in examples]
            states, mask = self.text_encoder.encode(named)
            extra |= dict(named_text=states.to(self.device), named_mask=mask.to(self.device),
                          pronoun=torch.tensor([e.story.shots[e.shot].labels.pronoun for e in examples], device=self.device))
        if self.cfg.shape_contrast:
            frames = batch.target.shape[1]  # the negative cut as the target (target_frames)
            extra["negative"] = torch.stack([self.negative(e)[:frames] for e in examples]).to(self.device)
        return IdentityBatch(**{f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}, **extra)

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

    def flow_matching_loss(self, batch: NextShotBatch) -> tuple[torch.Tensor, SimpleNamespace]:
        """The teacher's, and what the readout reads: the last block's tokens of the target [B, F*n, D]."""
        with block_output(self.model.blocks[-1]) as tokens:
            loss, fit = super().flow_matching_loss(batch)
        n = batch.budget * math.prod(self.model.grid(*batch.target.shape[-2:]))  # the context's tokens come first
        fit.tokens = tokens[0][:, n:]
        return loss, fit

    def video_loss(self, batch: IdentityBatch) -> tuple[torch.Tensor, dict]:
        loss, fit = self.flow_matching_loss(batch)
        logs = {"video_loss": loss.item()}
        if self.readout is not None:
            identity, readout_logs = self.readout.loss(fit.tokens, batch, fit.sigma)
            loss, logs = loss + self.cfg.identity_loss_weight * identity, logs | readout_logs
        if self.cfg.shape_contrast:
            contrast = self.contrast_loss(batch, fit)
            loss, logs = loss - self.cfg.shape_contrast * contrast, logs | {"contrast_distance": contrast.item()}
        if self.shape_classifier is not None:
            shape, shape_logs = self.shape_loss(batch, fit)
            loss, logs = loss + self.cfg.shape_loss_weight * shape, logs | shape_logs
        if self.cfg.named_loss_weight:
            named = self.named_loss(batch, fit)
            loss, logs = loss + self.cfg.named_loss_weight * named, logs | {"named_loss": named.item()}
        return loss, logs

    def named_loss(self, batch: IdentityBatch, fit: SimpleNamespace) -> torch.Tensor:
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

    def contrast_loss(self, batch: IdentityBatch, fit: SimpleNamespace) -> torch.Tensor:
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

    def shape_loss(self, batch: IdentityBatch, fit: SimpleNamespace) -> tuple[torch.Tensor, dict]:
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

    def loss(self, tokens: torch.Tensor, batch: IdentityBatch, sigma: torch.Tensor) -> tuple[torch.Tensor, dict]:
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
