"""Stage 0: the tiny causal video autoencoder, trained on StoryWorld clips by reconstruction.

    shotstream train autoencoder --config autoencoder            # ~35 min on 2 CPU cores
    shotstream train autoencoder --config autoencoder_smoke      # a few steps (CI)

A clip is frame s of a shot (encoded alone, like a shot's first frame) followed by groups of 4
frames, so both encoder paths train on every batch. The codec is fully convolutional, so it
trains on random crops (4x cheaper at half size) and runs on whole frames. The export fits the
per-channel latent statistics on whole training clips and writes a model folder the pipeline
loads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from shotstream.autoencoder import TinyVideoAutoencoder, reconstruction_loss
from shotstream.config import get_preset
from shotstream.training.state import derive_seed
from shotstream.training.trainer import OptimizerSpec, TrainConfig
from shotstream.video import to_model_video, to_uint8
from shotstream.world.dataset import load_eval_suite, training_seed
from shotstream.world.render import render_shot
from shotstream.world.story import sample_story


@dataclass
class AutoencoderConfig:
    preset: str = "tiny"  # video geometry (size, strides, latent channels) comes from the preset
    # 0 = the preset's; 4 gives the DiT twice the tokens per side (docs/experiments.md, the #32 study)
    spatial_stride: int = 0
    init: str = ""  # a model folder to continue from (its architecture wins over the fields below)
    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    clip_frames: int = 9  # 4k+1 frames per training clip
    crop_size: int = 64  # train on random crops of this size (0 = whole frames)
    latent_noise: float = 0.1  # decoder sees z + latent_noise * std(z) * N(0, 1): see reconstruction_loss
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    grad_weight: float = 0.5  # L1 on spatial/temporal finite differences: keeps edges and patterns sharp
    stats_clips: int = 64  # clips used to fit the latent mean/std at export
    export_to: str = ""  # also write the final model folder here (e.g. checkpoints/tiny/autoencoder)

    def validate(self) -> None:
        if self.clip_frames < 1 or (self.clip_frames - 1) % 4:
            raise ValueError(f"stage.clip_frames must be 4k+1, got {self.clip_frames}")
        if self.crop_size < 0 or self.crop_size % 8:
            raise ValueError(f"stage.crop_size must be 0 or a multiple of 8, got {self.crop_size}")
        if self.spatial_stride < 0:
            raise ValueError(f"stage.spatial_stride must be 0 (the preset's) or a power of 2, got {self.spatial_stride}")


def training_clip(seed: int, video_cfg, clip_frames: int, crop_size: int = 0) -> np.ndarray:
    """`clip_frames` consecutive frames of a random shot of a random training story, optionally a
    random crop_size x crop_size window of them (aligned to the 8-pixel latent grid)."""
    rng = np.random.default_rng(seed)
    story = sample_story(training_seed(int(rng.integers(2**31))), frames_per_shot=video_cfg.frames_per_shot)
    frames, _ = render_shot(story, int(rng.integers(story.num_shots)), video_cfg)
    start = int(rng.integers(len(frames) - clip_frames + 1))
    clip = frames[start:start + clip_frames]
    if crop_size and crop_size < min(clip.shape[1:3]):
        y, x = (int(rng.integers((n - crop_size) // 8 + 1)) * 8 for n in clip.shape[1:3])
        clip = clip[:, y:y + crop_size, x:x + crop_size]
    return clip


class AutoencoderStage:
    Config = AutoencoderConfig

    def __init__(self, config: AutoencoderConfig, train: TrainConfig):
        self.cfg, self.train = config, train
        self.device = torch.device(train.device)
        if config.init:
            # weights in fp32 whatever the folder's dtype: the optimizer keeps fp32 masters
            self.ae = TinyVideoAutoencoder.from_pretrained(config.init, self.device).float().train()
            self.video = self.ae.cfg
        else:
            self.video = get_preset(config.preset).video
            if config.spatial_stride:
                self.video = replace(self.video, spatial_stride=config.spatial_stride)
            self.ae = TinyVideoAutoencoder(self.video, base_channels=config.base_channels,
                                           channel_mults=config.channel_mults,
                                           num_res_blocks=config.num_res_blocks).to(self.device)

    def modules(self):
        return {"autoencoder": self.ae}

    def optimizers(self):
        return {"autoencoder": OptimizerSpec(("autoencoder",))}

    def batch(self, step: int, shard: int, num_shards: int) -> torch.Tensor:
        clips = [training_clip(derive_seed(self.train.seed, step, shard, i), self.video, self.cfg.clip_frames,
                               self.cfg.crop_size) for i in range(self.train.batch_size)]
        return torch.stack([to_model_video(c, self.device) for c in clips])  # [B, F, 3, H, W]

    def loss(self, name: str, batch: torch.Tensor, step: int):
        return reconstruction_loss(self.ae, batch, self.cfg.l1_weight, self.cfg.mse_weight, self.cfg.grad_weight,
                                   self.cfg.latent_noise)

    def sample(self, step: int, out_dir: Path) -> None:
        """Originals over reconstructions of the first shot of three evaluation stories, with PSNR."""
        from shotstream.video import contact_sheet, save_png

        originals, recons, captions = [], [], []
        for story in load_eval_suite()[:3]:
            frames, _ = render_shot(story, 0, self.video)
            video = to_model_video(frames, self.device)[None]
            recon = self.ae.decode_raw(self.ae.encode_raw(video))
            mse = torch.mean((recon.clamp(-1, 1) - video) ** 2).item()
            psnr = 10 * np.log10(4.0 / max(mse, 1e-10))
            originals.append(frames)
            recons.append(to_uint8(recon))
            captions += [f"story {story.seed} original", f"reconstruction, PSNR {psnr:.1f} dB"]
        sheet = contact_sheet([x for pair in zip(originals, recons) for x in pair], captions, n_per_shot=6)
        save_png(out_dir / "reconstructions.png", sheet)

    def export(self, out_dir: Path) -> list[Path]:
        """Fit latent statistics and write the model folder(s) the pipeline loads."""
        clips = (to_model_video(training_clip(derive_seed(self.train.seed, -1, i), self.video, self.cfg.clip_frames),
                                self.device)[None] for i in range(self.cfg.stats_clips))
        self.ae.fit_latent_stats(clips)
        targets = [out_dir / "autoencoder"] + ([Path(self.cfg.export_to)] if self.cfg.export_to else [])
        # fp16 halves the file; reconstructions match fp32 weights to 1e-4 dB on the eval suite
        return [self.ae.save_pretrained(t, dtype=torch.float16) for t in targets]
