"""Stages 3 and 4: self-forcing DMD, intra-shot then inter-shot.

    shotstream train intra --config intra      # history = ground-truth earlier shots
    shotstream train inter --config inter      # history = the student's own earlier shots

The student rolls a shot out chunk by chunk through `rollout.rollout_shot`, the very loop the
streaming session runs (4 steps, KV caches, t = 0 cache writes), stopping each chunk at a random
exit step where it keeps its gradient. The DMD losses (`dmd.py`) compare the frozen teacher and
the online critic on what it generated. The critic is updated every step, the generator every
`generator_every` steps.

Inter-shot: every training step generates the next shot of a batch of ongoing stories, whose
conditional frames come from the student's own decoded earlier shots, exactly as in the app.

`kind: rolling` trains the ablation without a global cache (Self-Forcing / LongLive style): the
student's history is only its rolling local window, kept across shot boundaries for the whole
story, positions continuing; the real and fake scores still see the selected history frames.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shotstream import flow_matching as fm
from shotstream import paths
from shotstream.model.loading import export_model, from_pretrained, read_config
from shotstream.model.memory import DualCache
from shotstream.rollout import GENERATIONS, rollout_shot, write_global_context
from shotstream.training.data import NextShotBatch, collate, example_from_history, next_shot_example
from shotstream.training.dmd import DMD, DMDConfig
from shotstream.training.next_shot import NextShotStage, sample_story_sheet
from shotstream.training.ode import init_student
from shotstream.training.state import derive_seed
from shotstream.training.trainer import OptimizerSpec, TrainConfig
from shotstream.video import to_uint8
from shotstream.world.dataset import training_seed
from shotstream.world.story import sample_story


@dataclass
class SelfForcingConfig(DMDConfig):
    preset: str = "tiny"
    model_overrides: tuple[str, ...] = ()  # ablations: model.shot_indicator=none|learned
    autoencoder: str = paths.AUTOENCODER
    teacher: str = paths.TEACHER  # real score; the critic starts from it too
    init: str = paths.ODE_STUDENT  # generator weights: the previous stage's fp32 run copy
    generator_every: int = 4  # critic updates per generator update
    generator_lr: float = 2e-5
    # The learned-indicator ablation's embedding starts at zero: at generator_lr its 300 updates
    # (intra + inter) left it at norm 0.008, and that ablation scored as the one without indicator.
    learned_indicator_lr_scale: float = 100.0
    critic_lr: float = 4e-5
    same_exit_across_chunks: bool = True  # Self-Forcing default: one random exit step per rollout
    kind: str = "causal"  # "rolling": the no-global-cache ablation (inter stage only; needs model.local_window)
    max_shots: int = 6
    sample_story: int = 0
    sample_shots: int = 3
    export_name: str = "student"
    export_to: str = ""


class IntraShotStage(NextShotStage):
    """Stage 3: history from ground-truth shots; one random target shot k per step."""

    Config = SelfForcingConfig

    def __init__(self, config: SelfForcingConfig, train: TrainConfig):
        super().__init__(config, train, teacher=config.teacher)
        gcfg, kind = read_config(config.init)
        if kind != "causal":
            raise ValueError(f"{config.init}: self-forcing starts from a causal student (ODE stage), got {kind}")
        # The memory settings (local window, sink) shape the cache, not the weights, and the
        # indicator ablations branch off a shared ODE student: those may change, nothing else.
        free = {k: getattr(self.config.model, k) for k in ("local_window", "sink_frames", "shot_indicator")}
        if dataclasses.replace(gcfg.model, **free) != self.config.model:
            raise ValueError(f"{config.init}: its model config differs from preset + model_overrides")
        generator = init_student(config.init, self.config, self.device)
        if config.kind not in ("causal", "rolling"):
            raise ValueError(f"stage.kind must be causal or rolling, got {config.kind!r}")
        self.generation = GENERATIONS[config.kind]
        if self.generation.rolling and not isinstance(self, InterShotStage):
            raise ValueError("stage.kind=rolling is trained by the inter-shot stage (its cache spans shots)")
        if self.generation.rolling and not self.config.model.local_window:
            raise ValueError("stage.kind=rolling needs a local window: add model.local_window=N to model_overrides")
        teacher, _, teacher_kind = from_pretrained(config.teacher, device=self.device)
        if teacher_kind != "bidirectional":
            raise ValueError(f"{config.teacher}: the real score must be the bidirectional teacher, got {teacher_kind}")
        critic, _, _ = from_pretrained(config.teacher, device=self.device)
        self.generator, self.critic = generator.train().float(), critic.train().float()
        self.dmd = DMD(self.generator, teacher.float(), self.critic, config, (self.null_states, self.null_mask),
                       shift=self.config.sampler.teacher_shift)
        self.sigmas = fm.student_sigmas(self.config.sampler.student_timesteps, self.config.sampler.shift)

    def modules(self):
        return {"generator": self.generator, "critic": self.critic}

    def optimizers(self):
        betas = (0.0, 0.999)  # DMD2 / Self-Forcing
        learned = self.config.model.shot_indicator == "learned"
        scale = {"shot_embedding": self.cfg.learned_indicator_lr_scale} if learned else {}
        return {"critic": OptimizerSpec(("critic",), lr=self.cfg.critic_lr, betas=betas, ema=False),
                "generator": OptimizerSpec(("generator",), every=self.cfg.generator_every, lr=self.cfg.generator_lr,
                                           betas=betas, lr_scale=scale)}

    def batch(self, step: int, shard: int, num_shards: int) -> NextShotBatch:
        # Every item of a step targets the same shot index k, so all have the same context size.
        k = int(np.random.default_rng(derive_seed(self.train.seed, step, 0xC)).integers(self.cfg.max_shots))
        examples = []
        for i in range(self.train.batch_size):
            story = sample_story(training_seed(derive_seed(self.train.seed, step, shard, i)), num_shots=k + 1,
                                 frames_per_shot=self.config.video.frames_per_shot)
            examples.append(next_shot_example(story, k, self.config))
        return collate(examples, self.autoencoder, self.text_encoder, self.config, self.device)

    def new_memory(self, batch_size: int, rolling: bool = False) -> DualCache:
        return DualCache(self.config.model, self.generator.grid(*self.config.video.latent_size),
                         self.config.video.latent_frames_per_shot, batch=batch_size, device=self.device, rolling=rolling)

    def rollout(self, batch: NextShotBatch, grad: bool, memory: DualCache | None = None, full: bool = False) -> torch.Tensor:
        """The student's streamed shot [B, F, C, h, w]; gradients at each chunk's exit step if `grad`.
        `full`: every chunk runs all steps (no random exit), as the app streams it.

        Default: a fresh dual cache whose global context holds the batch's conditional frames.
        Rolling ablation: `memory` is the story's rolling cache (no global context; the shot's
        positions continue from its last frame)."""
        B, F = batch.target.shape[:2]
        cond = batch.conditioning(self.config.model.chunk_frames)
        # The causal model reads every cached frame (no key mask): the batch's context when any is
        # valid (a step's items share k, so all of theirs are), none in the rolling ablation.
        n = cond.num_context if memory is None and cond.has_context else 0
        cond = dataclasses.replace(cond, context=cond.context[:, :n], context_shots=cond.context_shots[:, :n],
                                   context_slots=cond.context_slots[:, :n], context_valid=None,
                                   text=self.generator.embed_text(cond.text), text_embedded=True)
        if memory is None:
            memory = self.new_memory(B)
            write_global_context(self.generator, memory, cond)
        chunks = -(-F // self.config.model.chunk_frames)
        steps = len(self.sigmas)
        if full:
            exits = [steps - 1] * chunks
        else:
            exits = torch.randint(steps, (1 if self.cfg.same_exit_across_chunks else chunks,)).tolist()
            exits = exits * chunks if len(exits) == 1 else exits
        noise = torch.randn_like(batch.target)
        out = rollout_shot(self.generator, memory, cond, noise, self.sigmas, exit_steps=exits,
                           grad_chunks=set(range(chunks)) if grad else None)
        return torch.cat(list(out), dim=1)

    def loss(self, name: str, batch: NextShotBatch, step: int):
        x0 = self.rollout(batch, grad=name == "generator")
        return self.dmd.generator_loss(x0, batch) if name == "generator" else self.dmd.critic_loss(x0, batch)

    def pipeline(self):
        from shotstream.session import ShotStreamPipeline

        return ShotStreamPipeline(self.generator, self.config, self.autoencoder, self.text_encoder, kind=self.cfg.kind)

    def sample(self, step: int, out_dir: Path) -> None:
        sample_story_sheet(self.pipeline(), self.cfg.sample_story, self.cfg.sample_shots, out_dir)

    def export(self, out_dir: Path) -> list[Path]:
        return export_model(self.generator, self.config, out_dir / self.cfg.export_name, self.cfg.export_to, kind=self.cfg.kind)


class InterShotStage(IntraShotStage):
    """Stage 4: stories rolled out shot after shot; each step generates the next shot.

    The conditional frames of shot k are picked from the student's own decoded shots < k, so the
    real score, the critic and the generator all see the self-generated history. A shot joins the
    history as the app streams it: a full 4-step rollout without gradients, not the training
    rollouts, which stop at a random exit step. A resumed run starts fresh stories (the history of
    an interrupted story is not checkpointed).

    Rolling ablation: the story's cache lives across steps. Every rollout of a step (critic,
    generator) starts from a copy of the cache as the previous shot left it; the full rollout
    that makes the history shot leaves the cache that carries on.
    """

    def __init__(self, config: SelfForcingConfig, train: TrainConfig):
        if train.grad_accum != 1:
            raise ValueError("the inter-shot stage keeps one batch of stories per process: use grad_accum=1")
        super().__init__(config, train)
        self.stories, self.history, self.pending = [], [], None  # pending: the batch of the last step's shot
        self.rolling_memory, self.step_memory = None, None

    def batch(self, step: int, shard: int, num_shards: int) -> NextShotBatch:
        k = len(self.history[0]) + 1 if self.stories else 0  # the shot this step generates
        if self.stories and k < self.stories[0].num_shots:
            self.extend_history(self.pending)  # shot k - 1, generated last step
            if self.generation.rolling:
                self.rolling_memory = self.step_memory
        else:
            rng = np.random.default_rng(derive_seed(self.train.seed, step, shard, 0x1A))
            n = int(rng.integers(2, self.cfg.max_shots + 1))
            self.stories = [sample_story(training_seed(derive_seed(self.train.seed, step, shard, i)), num_shots=n,
                                         frames_per_shot=self.config.video.frames_per_shot)
                            for i in range(self.train.batch_size)]
            self.history, k = [[] for _ in self.stories], 0
            if self.generation.rolling:
                self.rolling_memory = self.new_memory(len(self.stories), rolling=True)
        examples = [example_from_history(s, k, h, None, cfg=self.config) for s, h in zip(self.stories, self.history)]
        self.pending = collate(examples, self.autoencoder, self.text_encoder, self.config, self.device)
        return self.pending

    @torch.no_grad()
    def extend_history(self, batch: NextShotBatch) -> None:
        """Stream `batch`'s shot in full, decode it and append it to each story's history."""
        video = self.autoencoder.decode(self.rollout(batch, grad=False, full=True))
        for b, h in enumerate(self.history):
            h.append(to_uint8(video[b:b + 1]))

    def rollout(self, batch: NextShotBatch, grad: bool, memory=None, full: bool = False) -> torch.Tensor:
        if not self.generation.rolling:
            return super().rollout(batch, grad, full=full)
        self.step_memory = copy.deepcopy(self.rolling_memory)
        return super().rollout(batch, grad, self.step_memory, full=full)
