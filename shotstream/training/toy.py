"""Toy stages: tiny MLP regressions that exercise every trainer feature in milliseconds.

`toy` is the one-module, one-optimizer shape of the autoencoder / teacher / ODE stages;
`toy_distill` is the two-optimizer shape of the DMD stages (a critic updated every step, a
generator every k-th step against the frozen critic). Used by the tests and the smoke configs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shotstream.training.state import derive_seed
from shotstream.training.trainer import OptimizerSpec, TrainConfig


@dataclass
class ToyConfig:
    dim_in: int = 8
    hidden: int = 32
    dim_out: int = 4
    # Target noise drawn from the global torch RNG inside loss(): exact resume then depends on the
    # RNG states being checkpointed, as it does for diffusion noise in the real stages.
    noise: float = 0.05
    dropout: float = 0.0
    # Test hook: from this step on the loss is NaN ("nan_loss") or its gradient inf ("inf_grad"); 0 = never.
    diverge_at: int = 0
    diverge: str = "nan_loss"
    head_bias_lr_scale: float = 1.0  # OptimizerSpec.lr_scale of the output layer's bias

    def validate(self) -> None:
        if self.diverge not in ("nan_loss", "inf_grad"):
            raise ValueError(f"stage.diverge must be nan_loss or inf_grad, got {self.diverge!r}")


@dataclass
class ToyDistillConfig(ToyConfig):
    generator_every: int = 2  # DMD's generator/critic update ratio
    critic_lr: float = 0.0  # 0 = the run's lr


class _InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("inf"))


def _mlp(cfg: ToyConfig) -> nn.Module:
    return nn.Sequential(
        nn.Linear(cfg.dim_in, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, cfg.dim_out)
    )


class ToyStage:
    """Regress y = tanh(x A) (A fixed by the seed) with an MLP."""

    Config = ToyConfig

    def __init__(self, config: ToyConfig, train: TrainConfig):
        self.cfg, self.train = config, train
        self.device = torch.device(train.device)
        g = torch.Generator().manual_seed(derive_seed(train.seed, 7))
        self.A = torch.randn(config.dim_in, config.dim_out, generator=g) / config.dim_in**0.5  # [Din, Dout]
        self.model = _mlp(config).to(self.device)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"model": OptimizerSpec(("model",), lr_scale={"3.bias": self.cfg.head_bias_lr_scale})}

    def batch(self, step: int, shard: int, num_shards: int):
        # Examples are i.i.d. per (step, shard), so num_shards is not needed to split them.
        g = torch.Generator().manual_seed(derive_seed(self.train.seed, step, shard))
        x = torch.randn(self.train.batch_size, self.cfg.dim_in, generator=g)  # [B, Din]
        y = torch.tanh(3 * x @ self.A)  # [B, Dout]
        return x.to(self.device), y.to(self.device)

    def _fit(self, module: nn.Module, x, target, step: int) -> torch.Tensor:
        pred = module(x)
        if self.cfg.diverge_at and step >= self.cfg.diverge_at and self.cfg.diverge == "inf_grad":
            pred = _InfGrad.apply(pred)
        loss = F.mse_loss(pred.float(), target.float())
        if self.cfg.diverge_at and step >= self.cfg.diverge_at and self.cfg.diverge == "nan_loss":
            loss = loss * float("nan")
        return loss

    def loss(self, name: str, batch, step: int):
        x, y = batch
        y = y + self.cfg.noise * torch.randn_like(y)
        return self._fit(self.model, x, y, step), {}

    def sample(self, step: int, out_dir: Path) -> None:
        """Predictions vs targets on a fixed batch: eval.json and a scatter plot."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x, y = self.batch(0, 0, 1)
        result, fig = {}, plt.figure(figsize=(3.5 * len(self.modules()), 3.2))
        for i, (name, module) in enumerate(self.modules().items()):
            pred = module(x).float()
            result[f"{name}/mse"] = float(F.mse_loss(pred, y))
            ax = fig.add_subplot(1, len(self.modules()), i + 1)
            ax.scatter(y.flatten().cpu(), pred.flatten().cpu(), s=4)
            ax.set_title(f"{name} step {step}")
            ax.set_xlabel("target")
        fig.tight_layout()
        fig.savefig(out_dir / "predictions.png", dpi=80)
        plt.close(fig)
        (out_dir / "eval.json").write_text(json.dumps(result, indent=2), encoding="utf-8")


class ToyDistillStage(ToyStage):
    """DMD-shaped: the critic fits the data every step; every `generator_every` steps the
    generator regresses onto the frozen critic's predictions (critic under no_grad, as the fake
    score is in the DMD generator loss)."""

    Config = ToyDistillConfig

    def __init__(self, config: ToyDistillConfig, train: TrainConfig):
        super().__init__(config, train)
        self.critic = self.model
        self.generator = _mlp(config).to(self.device)

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "critic": self.critic}

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {
            "critic": OptimizerSpec(("critic",), lr=self.cfg.critic_lr or None, ema=False),
            "generator": OptimizerSpec(("generator",), every=self.cfg.generator_every, betas=(0.0, 0.999)),
        }

    def loss(self, name: str, batch, step: int):
        x, y = batch
        if name == "critic":
            y = y + self.cfg.noise * torch.randn_like(y)
            return self._fit(self.critic, x, y, step), {}
        with torch.no_grad():
            target = self.critic(x)
        loss = self._fit(self.generator, x, target, step)
        return loss, {"target_rms": float(target.float().pow(2).mean().sqrt())}
