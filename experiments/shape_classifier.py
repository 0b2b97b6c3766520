"""The shape classifier behind identity_teacher's pixel-space shape loss (`stage.shape_loss_weight`).

    shotstream train shape_classifier --config shape_classifier          # ~6 min on 2 CPU cores
    shotstream train shape_classifier --config shape_classifier_smoke    # a few steps (CI)

It reads the main character's shape from one decoded frame, cropped square around the
character's latent cells (`character_crop`), exactly what identity_teacher's loss gives it: the
first latent frame of its x0 prediction, decoded. It trains on autoencoder reconstructions of
frames of training stories (never the evaluation suite), blurred and noised like an x0
prediction at mid noise, and apart from the benchmark's label probe so the metric is not the
objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import gaussian_blur
from tqdm import tqdm

from shotstream import flow_matching as fm
from shotstream import paths
from shotstream.autoencoder import TinyVideoAutoencoder
from shotstream.checkpoint import CheckpointError, check_keys, load_checkpoint, save_checkpoint
from shotstream.config import get_preset
from shotstream.training.data import character_cells
from shotstream.training.state import derive_seed
from shotstream.training.trainer import OptimizerSpec, TrainConfig
from shotstream.video import to_model_video
from shotstream.world import vocab
from shotstream.world.dataset import load_eval_suite, training_seed
from shotstream.world.render import render_shot
from shotstream.world.story import sample_story

CROP = 32  # pixels (square) of the crop the classifier reads


def character_crop(frames: torch.Tensor, cells: torch.Tensor, size: int = CROP) -> tuple[torch.Tensor, torch.Tensor]:
    """frames [B, 3, H, W], the character's latent cells cells [B, h, w] bool -> crops [B, 3, size, size]
    of the smallest square holding the cells plus one cell of margin (zeros outside the frame), and
    seen [B]: whether any cell is set. Differentiable in `frames` (bilinear sampling)."""
    B, _, H, W = frames.shape
    h, w = cells.shape[-2:]
    seen = cells.flatten(1).any(1)
    rows, cols = cells.any(2).float(), cells.any(1).float()  # [B, h], [B, w]
    idx_h, idx_w = torch.arange(h, device=cells.device), torch.arange(w, device=cells.device)
    # the box in cell units, [lo, hi) with the margin; an empty mask gives the whole frame
    y0 = torch.where(seen, (idx_h + (1 - rows) * h).amin(1) - 1, torch.zeros_like(seen, dtype=torch.float))
    y1 = torch.where(seen, (idx_h * rows).amax(1) + 2, torch.full_like(y0, h))
    x0 = torch.where(seen, (idx_w + (1 - cols) * w).amin(1) - 1, torch.zeros_like(y0))
    x1 = torch.where(seen, (idx_w * cols).amax(1) + 2, torch.full_like(y0, w))
    # centre and half side in normalised [-1, 1] coordinates (align_corners=False)
    cy, cx = (y0 + y1) / h - 1, (x0 + x1) / w - 1
    side = torch.maximum(y1 - y0, x1 - x0)  # cells are square in pixels
    theta = torch.zeros(B, 2, 3, device=frames.device, dtype=frames.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = side / w, cx
    theta[:, 1, 1], theta[:, 1, 2] = side / h, cy
    grid = F.affine_grid(theta, [B, 3, size, size], align_corners=False)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=False), seen


def prediction_shape_logits(classifier, autoencoder, x_t, v, sigma, cells) -> tuple[torch.Tensor, torch.Tensor]:
    """What the classifier reads in a model's x0 prediction: x_t, v [B, F, C, h, w], sigma [B], the
    character's cells [B, F, h, w] -> (logits [B, len(vocab.SHAPES)], seen [B]) on the first latent
    frame, decoded (the lone-frame path) and cropped to the character's cells there. Differentiable in v."""
    x0 = fm.predict_x0(x_t[:, :1], v[:, :1], sigma)
    crops, seen = character_crop(autoencoder.decode(x0.float())[:, 0], cells[:, 0].bool())
    return classifier(crops), seen


class ShapeClassifier(nn.Module):
    """A small CNN: crop [B, 3, CROP, CROP] in [-1, 1] -> logits [B, len(vocab.SHAPES)]."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.width = width
        layers, cin = [], 3
        for cout in (width, 2 * width, 4 * width):  # 32 -> 16 -> 8 -> 4
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                       nn.Conv2d(cout, cout, 3, stride=2, padding=1), nn.SiLU()]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, len(vocab.SHAPES))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(crops).mean((2, 3)))

    def save_pretrained(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        config = {"class": type(self).__name__, "width": self.width, "shapes": list(vocab.SHAPES)}
        return save_checkpoint(folder, config, self.state_dict(), dtype=dtype)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> "ShapeClassifier":
        config, tensors = load_checkpoint(folder)
        source = Path(folder) / "config.json"
        if config.get("class") != cls.__name__ or config.get("shapes") != list(vocab.SHAPES):
            raise CheckpointError(f"{source}: not a ShapeClassifier over {list(vocab.SHAPES)}")
        model = cls(int(config.get("width", 32)))
        check_keys(model.state_dict(), tensors, source=str(folder))
        model.load_state_dict({k: v.float() for k, v in tensors.items()})
        return model.to(device).eval()


@dataclass
class ShapeClassifierConfig:
    preset: str = "tiny"
    autoencoder: str = paths.AUTOENCODER
    width: int = 32
    pool: int = 3000  # frames made once (frames_pool) that every batch draws from
    blur: float = 2.0  # Gaussian blur of std up to this (pixels): an x0 prediction is blurry
    noise: float = 0.1  # and noisy: Gaussian noise of std up to this
    eval_stories: int = 20  # evaluation-suite stories whose shots sample() scores
    export_to: str = ""  # also write the final model here (e.g. checkpoints/tiny/shape_classifier)

    def validate(self) -> "ShapeClassifierConfig":
        if self.width < 8 or self.width % 8:
            raise ValueError(f"stage.width must be a multiple of 8 (GroupNorm), got {self.width}")
        if self.pool < 1:
            raise ValueError(f"stage.pool must be >= 1, got {self.pool}")
        if self.blur < 0 or self.noise < 0:
            raise ValueError("stage.blur and stage.noise must be >= 0")
        return self


class ShapeClassifierStage:
    Config = ShapeClassifierConfig

    def __init__(self, config: ShapeClassifierConfig, train: TrainConfig):
        self.cfg, self.train = config.validate(), train
        self.device = torch.device(train.device)
        self.config = get_preset(config.preset)
        self.autoencoder = TinyVideoAutoencoder.from_pretrained(config.autoencoder, device=self.device).eval().requires_grad_(False)
        self.classifier = ShapeClassifier(config.width).to(self.device)
        self._pool = None

    def modules(self):
        return {"classifier": self.classifier}

    def optimizers(self):
        return {"classifier": OptimizerSpec(("classifier",))}

    @torch.no_grad()
    def frames(self, items) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(story, shot, frame index) items -> reconstructed frames [B, 3, H, W] (the first-frame
        path, as identity_teacher's loss decodes them), the character's cells [B, h, w], its shape [B]."""
        frames, cells, shapes = [], [], []
        for story, shot, i in items:
            video, boxes = render_shot(story, shot, self.config.video)
            frames.append(video[i])
            cells.append(character_cells(boxes[i:i + 1], self.config)[0])
            shapes.append(vocab.SHAPES.index(story.shots[shot].labels.main.shape))
        x = to_model_video(np.stack(frames), self.device)  # [B, 3, H, W]
        recon = self.autoencoder.decode(self.autoencoder.encode_image(x))[:, 0]
        return recon, torch.from_numpy(np.stack(cells)).to(self.device), torch.tensor(shapes, device=self.device)

    def batch(self, step: int, shard: int, num_shards: int):
        """Frames of the pool, each blurred and noised by its own random amount."""
        frames, cells, shapes = self.frames_pool()
        g = torch.Generator().manual_seed(derive_seed(self.train.seed, step, shard))
        pick = torch.randint(len(frames), (self.train.batch_size,), generator=g)
        x = frames[pick].to(self.device).float() / 127.5 - 1
        x = torch.cat([gaussian_blur(f[None], 9, float(s)) if s > 0.1 else f[None]
                       for f, s in zip(x, torch.rand(len(x), generator=g) * self.cfg.blur)])
        noise = torch.rand(len(x), 1, 1, 1, generator=g) * self.cfg.noise * torch.randn(x.shape, generator=g)
        return x + noise.to(self.device), cells[pick].to(self.device), shapes[pick].to(self.device)

    def frames_pool(self):
        """`stage.pool` reconstructed frames of training stories (uint8), their cells and shapes, made
        once: the autoencoder's round trip (~45 ms a frame) would otherwise be 95% of a step."""
        if self._pool is None:
            parts = []
            for start in tqdm(range(0, self.cfg.pool, 32), desc="shape classifier frames", unit_scale=32, leave=False):
                items = []
                for i in range(start, min(start + 32, self.cfg.pool)):
                    rng = np.random.default_rng(derive_seed(self.train.seed, -1, i))
                    story = sample_story(training_seed(int(rng.integers(2**31))), frames_per_shot=self.config.video.frames_per_shot)
                    shot = int(rng.integers(story.num_shots))
                    items.append((story, shot, int(rng.integers(story.shots[shot].num_frames))))
                frames, cells, shapes = self.frames(items)
                parts.append((((frames + 1) * 127.5).round().to(torch.uint8).cpu(), cells.cpu(), shapes.cpu()))
            self._pool = tuple(torch.cat(p) for p in zip(*parts))
        return self._pool

    def loss(self, name: str, batch, step: int):
        frames, cells, shapes = batch
        crops, seen = character_crop(frames, cells)
        logits = self.classifier(crops)
        ce = F.cross_entropy(logits, shapes, reduction="none")
        loss = (ce * seen).sum() / seen.sum().clamp(min=1)
        acc = ((logits.argmax(1) == shapes) & seen).sum() / seen.sum().clamp(min=1)
        return loss, {"acc": acc.item()}

    @torch.no_grad()
    def accuracy(self, stories) -> float:
        """Accuracy on the first frame of every shot of `stories` in which the character is seen."""
        items = [(s, k, 0) for s in stories for k in range(s.num_shots)]
        frames, cells, shapes = self.frames(items)
        crops, seen = character_crop(frames, cells)
        right = (self.classifier(crops).argmax(1) == shapes)[seen]
        return right.float().mean().item()

    def sample(self, step: int, out_dir: Path) -> None:
        acc = self.accuracy(load_eval_suite()[:self.cfg.eval_stories])
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "eval.txt").write_text(f"shape accuracy on the first frames of {self.cfg.eval_stories} "
                                          f"evaluation stories (autoencoder reconstructions): {acc:.3f}\n")
        print(f"shape classifier: eval accuracy {acc:.3f}")

    def export(self, out_dir: Path) -> list[Path]:
        targets = [out_dir / "shape_classifier"] + ([Path(self.cfg.export_to)] if self.cfg.export_to else [])
        return [self.classifier.save_pretrained(t, dtype=torch.float16) for t in targets]
