"""Distribution Matching Distillation (DMD2 form, as in CausVid / Self-Forcing).

The generator's samples x0 are noised to a random level; the frozen teacher (real score, with
CFG) and an online critic (fake score, trained by flow matching on the generator's samples)
both predict x0 from them. Their difference is the gradient of the KL between the generated
and the real distribution, normalised by the teacher's error:

    g = (x0_fake - x0_real) / mean|x0_gen - x0_real|,    loss = 0.5 * ||x0_gen - sg(x0_gen - g)||^2

so d loss / d x0_gen = g. The real and fake scores are bidirectional next-shot models and read
the same conditioning (context frames, captions) as the generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shotstream import flow_matching as fm
from shotstream.conditioning import next_shot_velocity, unconditional
from shotstream.config import GuidanceConfig
from shotstream.model.dit import WanDiT
from shotstream.training.data import NextShotBatch


@dataclass
class DMDConfig(GuidanceConfig):  # the real score's guidance
    min_sigma: float = 0.02  # timesteps clamped away from the ends (Self-Forcing: 20..980 of 1000)
    max_sigma: float = 0.98
    # Shift of the DMD and critic timesteps; 0 = the teacher's training shift. A lower shift puts
    # more of them at low noise, where the character's pattern is decided.
    timestep_shift: float = 0.0

    def validate(self) -> "DMDConfig":
        if not 0 <= self.min_sigma < self.max_sigma <= 1:
            raise ValueError(f"stage.min_sigma, max_sigma must satisfy 0 <= min < max <= 1, got {self.min_sigma}, {self.max_sigma}")
        super().validate()
        if self.timestep_shift < 0:
            raise ValueError(f"stage.timestep_shift must be >= 0 (0 = the teacher's shift), got {self.timestep_shift}")
        return self


class DMD:
    """Holds the three networks; the trainer only optimises what these losses return."""

    def __init__(self, generator: WanDiT, real_score: WanDiT, fake_score: WanDiT, cfg: DMDConfig,
                 null_text: tuple[torch.Tensor, torch.Tensor], shift: float):
        # `shift`: the teacher's training shift, so by default the DMD and critic timesteps are
        # those the real score learned on (drawn uniformly between min_sigma and max_sigma, then shifted).
        self.generator, self.real_score, self.fake_score, self.cfg = generator, real_score, fake_score, cfg
        self.shift = cfg.timestep_shift or shift
        self.null_states, self.null_mask = null_text
        real_score.requires_grad_(False).eval()

    def sample_sigma(self, batch_size: int, device) -> torch.Tensor:
        u = self.cfg.min_sigma + (self.cfg.max_sigma - self.cfg.min_sigma) * torch.rand(batch_size, device=device)
        return fm.shift_sigma(u, self.shift)

    def real_x0(self, batch: NextShotBatch, x_t, sigma) -> torch.Tensor:
        """Teacher x0 prediction with classifier-free guidance on the target caption (and the context)."""
        cond = batch.conditioning(self.real_score.cfg.chunk_frames)
        v = next_shot_velocity(self.real_score, cond, x_t, sigma)
        uncond = unconditional(self.real_score, cond, (self.null_states, self.null_mask), self.cfg.guidance_scale,
                               self.cfg.context_scale)
        if uncond is not None:
            v = fm.cfg(v, uncond(x_t, sigma), self.cfg.guidance_scale)
        return fm.predict_x0(x_t, v.float(), sigma)

    def fake_velocity(self, batch: NextShotBatch, x_t, sigma) -> torch.Tensor:
        return next_shot_velocity(self.fake_score, batch.conditioning(self.fake_score.cfg.chunk_frames), x_t, sigma)

    def generator_loss(self, x0_gen: torch.Tensor, batch: NextShotBatch) -> tuple[torch.Tensor, dict]:
        """DMD loss of generated latents x0_gen [B, F, C, h, w] (with grad through the rollout)."""
        B = x0_gen.shape[0]
        sigma = self.sample_sigma(B, x0_gen.device)
        with torch.no_grad():
            x_t = fm.add_noise(x0_gen.detach(), torch.randn_like(x0_gen), sigma)
            x0_real = self.real_x0(batch, x_t, sigma)
            x0_fake = fm.predict_x0(x_t, self.fake_velocity(batch, x_t, sigma).float(), sigma)
            normalizer = (x0_gen.detach() - x0_real).abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-6)
            grad = torch.nan_to_num((x0_fake - x0_real) / normalizer)
        loss = 0.5 * torch.mean((x0_gen.float() - (x0_gen.detach().float() - grad)) ** 2)
        return loss, {"dmd_grad_norm": grad.norm().item() / B ** 0.5, "sigma": sigma.mean().item()}

    def critic_loss(self, x0_gen: torch.Tensor, batch: NextShotBatch) -> tuple[torch.Tensor, dict]:
        """Flow matching of the fake score on the generator's (detached) samples."""
        x0 = x0_gen.detach()
        sigma = self.sample_sigma(x0.shape[0], x0.device)
        noise = torch.randn_like(x0)
        v = self.fake_velocity(batch, fm.add_noise(x0, noise, sigma), sigma)
        return fm.flow_matching_loss(v, x0, noise), {"sigma": sigma.mean().item()}
