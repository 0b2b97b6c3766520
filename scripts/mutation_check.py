"""Plant one-line bugs in the core, one at a time, and check that the test suite catches each.

    python scripts/mutation_check.py              # all of them (~15 min on 2 cores; not in CI)
    python scripts/mutation_check.py -k cache     # those whose name contains "cache"
    python scripts/mutation_check.py --list       # the list, and whether each still applies

A suite can be green while the wiring is wrong (how flags, caption slots, noise levels and cache
writes reach the model): these are the bugs it must not let through. Each mutation replaces one
fragment of one file, which must occur there exactly once (after a refactor moves the line,
the mutation fails loudly as "does not apply" instead of silently testing nothing). It is
planted in a copy of the working tree, the tests run there with -x, and the table names the
first test that failed, or NOT caught. The working tree is never touched. The unmutated copy
must pass first. Exit status 1 if any mutation is not caught or does not apply.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The tests that cover the core, fastest catchers first (pytest -x stops at the first failure).
CORE_TESTS = ("tests/test_wiring.py", "tests/test_flow_matching.py", "tests/test_session.py", "tests/test_distill.py",
              "tests/test_model.py")
# The DMD gradient's sign and the real score's guidance are pinned by test_distill.py alone.
DMD_TESTS = tuple(dict.fromkeys(("tests/test_distill.py", *CORE_TESTS)))
# The released model's behaviour (the wan2.1-1.3b preset's switches) is pinned there.
RELEASE_TESTS = ("tests/test_release_behaviour.py",)
# The official teacher's sampling options (sampler.teacher_null_slots, teacher_context_noise).
TEACHER_SAMPLING_TESTS = ("tests/test_teacher_sampling.py",)
# The character identity metrics (crops, localiser, superseded versions) are pinned there.
IDENTITY_TESTS = ("tests/test_identity.py",)


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...] = CORE_TESTS


M = Mutation
MUTATIONS = [
    # -- next-shot conditioning (streaming, teacher, ODE pairs, DMD scores) -----------------------
    M("conditioning: context frames flagged with the current shot", "shotstream/conditioning.py",
      "FrameInfo(pos.float(), self.context_shots.float(),",
      "FrameInfo(pos.float(), torch.as_tensor(self.shot, device=pos.device).float().reshape(-1, 1).expand(B, Cf),"),
    M("conditioning: context frames read the target's caption slot", "shotstream/conditioning.py",
      "self.context_shots.float(), self.context_slots.long(), cut)",
      "self.context_shots.float(), torch.full_like(self.context_slots, self.target_slot).long(), cut)"),
    M("conditioning: target frames read the first caption slot", "shotstream/conditioning.py",
      "torch.full((B, count), self.target_slot,", "torch.full((B, count), 0,"),
    M("conditioning: target positions do not advance chunk to chunk", "shotstream/conditioning.py",
      "first = (self.num_context if pos_offset is None else pos_offset) + start",
      "first = self.num_context if pos_offset is None else pos_offset"),
    M("conditioning: target positions start at 0, over the context's", "shotstream/conditioning.py",
      "first = (self.num_context if pos_offset is None else pos_offset) + start",
      "first = (0 if pos_offset is None else pos_offset) + start"),
    M("conditioning: learned indicator marks every chunk", "shotstream/conditioning.py",
      "cut=(idx[None] < self.chunk_frames) & (shot > 0),", "cut=(shot > 0) | (idx[None] < 0),"),
    M("conditioning: learned indicator marks first shots too", "shotstream/conditioning.py",
      "cut=(idx[None] < self.chunk_frames) & (shot > 0),", "cut=(idx[None] < self.chunk_frames) | (shot < 0),"),
    M("conditioning: padded context visible", "shotstream/conditioning.py",
      "return torch.cat([self.context_valid, torch.ones(B, count,",
      "return torch.cat([torch.ones_like(self.context_valid), torch.ones(B, count,"),
    M("conditioning: bidirectional context told the target's noise level (teacher, real score, critic)",
      "shotstream/conditioning.py",
      "ctx, ctx_sigma = cond.context.to(x.dtype), torch.zeros(B, Cf, device=x.device)",
      "ctx, ctx_sigma = cond.context.to(x.dtype), sigma[:, None].expand(B, Cf).float()"),
    M("conditioning: null caption in the first slot", "shotstream/conditioning.py",
      "text[:, self.target_slot], mask[:, self.target_slot] = null_text, null_mask",
      "text[:, 0], mask[:, 0] = null_text, null_mask"),
    M("conditioning: negative prompt only in the target's slot with all_slots", "shotstream/conditioning.py",
      "text[:], mask[:] = null_text[:, None], null_mask[:, None]",
      "text[:, self.target_slot], mask[:, self.target_slot] = null_text, null_mask", TEACHER_SAMPLING_TESTS),
    M("conditioning: guidance on the context leaves the context visible", "shotstream/conditioning.py",
      "context_valid=torch.zeros(B, Cf, dtype=torch.bool,", "context_valid=torch.ones(B, Cf, dtype=torch.bool,"),
    # -- the rollout loop (streaming and self-forcing) ------------------------------------------
    M("rollout: global cache written at t = 1000", "shotstream/rollout.py",
      "zero = torch.zeros(cond.context.shape[0], device=cond.context.device)",
      "zero = torch.ones(cond.context.shape[0], device=cond.context.device)"),
    M("rollout: global cache rebuilt every chunk", "shotstream/rollout.py",
      "cache = memory.stage(n)", "write_global_context(model, memory, cond); cache = memory.stage(n)"),
    M("rollout: local cache dropped every chunk", "shotstream/rollout.py",
      "cache = memory.stage(n)", "memory.local_context.reset(); cache = memory.stage(n)"),
    M("rollout: local cache not reset at the start of a shot", "shotstream/rollout.py",
      "    memory.start_shot()\n", "\n"),
    M("rollout: local cache written from the noisy chunk", "shotstream/rollout.py",
      "model_velocity(model, x0.detach(), torch.zeros(B, device=x0.device),",
      "model_velocity(model, noise[:, start:start + n], torch.zeros(B, device=x0.device),"),
    M("rollout: local cache written at the last sigma, not t = 0", "shotstream/rollout.py",
      "x0.detach(), torch.zeros(B, device=x0.device),", "x0.detach(), torch.full((B,), float(sigmas[-1]), device=x0.device),"),
    M("rollout: local cache write not committed", "shotstream/rollout.py",
      "cache_only=True)\n            memory.commit()", "cache_only=True)\n            pass"),
    M("rollout: the shot's last chunk written to the cache", "shotstream/rollout.py",
      "if start + n < F or memory.carries_over:", "if True:"),
    M("rollout: a rolling memory drops each shot's last chunk", "shotstream/rollout.py",
      "if start + n < F or memory.carries_over:", "if start + n < F:"),
    M("rollout: exit step always 0", "shotstream/rollout.py",
      "exit_step=None if exit_steps is None else exit_steps[start // chunk],",
      "exit_step=None if exit_steps is None else 0,"),
    M("rollout: gradients kept on every chunk", "shotstream/rollout.py",
      "grad_chunks is not None and start // chunk in grad_chunks", "grad_chunks is not None"),
    # -- the memory -------------------------------------------------------------------------------
    M("memory: commit forgets the prefix", "shotstream/model/memory.py",
      "self.length += self.staged", "self.length = self.staged"),
    M("memory: local reset also clears the global context", "shotstream/model/memory.py",
      "self.kv.truncate(self.global_cache.tokens)", "self.kv.truncate(0)"),
    M("memory: global context sealed empty", "shotstream/model/memory.py",
      "self.tokens = self.kv.length", "self.tokens = 0"),
    M("memory: rolling window reset at every shot", "shotstream/model/memory.py",
      "        if not self.rolling:\n            self.local_context.reset()", "        self.local_context.reset()"),
    M("memory: rolling positions restart at every shot", "shotstream/model/memory.py",
      "self.frames_written += self.kv.staged // self.tokens_per_frame", "self.frames_written = 0"),
    M("memory: context remainder to the oldest shots", "shotstream/model/memory.py",
      "counts[n - 1 - i] += 1", "counts[i] += 1"),
    # -- sampling ----------------------------------------------------------------------------------
    M("sampling: teacher sigmas without the shift", "shotstream/flow_matching.py",
      "return shift_sigma(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)",
      "return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)"),
    M("sampling: student sigmas without the shift", "shotstream/flow_matching.py",
      "return shift_sigma(t / TIMESTEP_SCALE, shift)", "return t / TIMESTEP_SCALE"),
    M("sampling: few-step re-noises to the current sigma", "shotstream/flow_matching.py",
      "x = add_noise(x0, fresh, float(s[i + 1]))", "x = add_noise(x0, fresh, float(s[i]))"),
    M("sampling: CFG on the wrong side", "shotstream/flow_matching.py",
      "return v_uncond + scale * (v_cond - v_uncond)", "return v_cond + scale * (v_uncond - v_cond)"),
    # -- the session -----------------------------------------------------------------------------
    M("session: context frames flagged with the current shot", "shotstream/session.py",
      "shots = torch.tensor([[s for s, _ in picks]],", "shots = torch.tensor([[k for s, _ in picks]],"),
    M("session: context frames read the first caption slot", "shotstream/session.py",
      "slots = torch.tensor([[sources.index(s) for s, _ in picks]],", "slots = torch.tensor([[0 for s, _ in picks]],"),
    M("session: target reads the first caption slot", "shotstream/session.py",
      "target_slot=len(sources), shot=k,", "target_slot=0, shot=k,"),
    M("session: earlier captions without the global caption", "shotstream/session.py",
      "[self.prompt(self.shots[s].caption, s) for s in sources]", "[self.shots[s].caption for s in sources]"),
    M("session: context frames all from each shot's first frame", "shotstream/session.py",
      "to_model_video(self.shots[s].frames[f:f + 1], pipe.device)", "to_model_video(self.shots[s].frames[0:1], pipe.device)"),
    M("generation: student sigmas without the shift", "shotstream/rollout.py",
      "fm.student_sigmas(sampler.student_timesteps, sampler.shift)", "fm.student_sigmas(sampler.student_timesteps, 1.0)"),
    M("generation: teacher sigmas without the shift", "shotstream/rollout.py",
      "fm.teacher_sigmas(sampler.teacher_steps, sampler.teacher_shift)", "fm.teacher_sigmas(sampler.teacher_steps, 1.0)"),
    M("session: release first shot without its zero context", "shotstream/session.py",
      "            if self._zero_first_context():\n                # The released",
      "            if False:\n                # The released", RELEASE_TESTS),
    M("session: release first shot's frames flagged 0", "shotstream/session.py",
      "                target_flag = 1\n", "                target_flag = None\n", RELEASE_TESTS),
    M("session: release prompt template ignored", "shotstream/session.py",
      "return self.pipe.config.prompt.render(caption, shot, self.global_caption)",
      "return f\"{self.global_caption} {caption}\" if self.global_caption else caption", RELEASE_TESTS),
    M("session: release global caption cut at 2000 characters", "shotstream/session.py",
      "clean_prompt(global_caption, cfg.prompt.max_chars)", "clean_prompt(global_caption)", RELEASE_TESTS),
    M("session: the codec left in fp32 in a bf16 pipeline", "shotstream/session.py",
      "to(device=device, dtype=dtype, memory_format", "to(device=device, memory_format", ("tests/test_session.py",)),
    M("session: the codec's convolutions left channels-first", "shotstream/session.py",
      ", memory_format=torch.channels_last).eval()", ").eval()", ("tests/test_session.py",)),
    M("session: chunks decoded from fp32 latents", "shotstream/session.py",
      "decode_chunk(x0.to(pipe.autoencoder.dtype)", "decode_chunk(x0.to(torch.float32)", ("tests/test_session.py",)),
    M("session: context frames re-encoded every shot", "shotstream/session.py",
      "if f not in self.shots[s].context_latents]", "]", ("tests/test_session.py",)),
    M("session: a kept context latent read for the wrong frame", "shotstream/session.py",
      "torch.stack([self.shots[s].context_latents[f] for", "torch.stack([self.shots[s].context_latents[min(self.shots[s].context_latents)] for",
      ("tests/test_session.py",)),
    M("model: cross-attention reads one caption for frames of different captions", "shotstream/model/dit.py",
      "if len(slots) == 1:", "if len(slots) >= 1:"),
    M("model: cross-attention of a one-caption chunk reads the caption's padding", "shotstream/model/dit.py",
      "k[:, 0], v[:, 0], mask[:, 0] if mask is not None else None", "k[:, 0], v[:, 0], None"),
    M("model: a cache-only pass writes no keys for the last block", "shotstream/model/dit.py",
      "self.blocks[-1].stage(tokens, e6, rope, layers[-1])", "pass"),
    M("model: a cache-only pass stages the last block's keys with the feed-forward's modulation",
      "shotstream/model/dit.py", "(self.modulation[:, None, :2] + e[:, :, :2])", "(self.modulation[:, None, 3:5] + e[:, :, 3:5])"),
    M("model: LayerNorm returns fp32 for a bf16 input", "shotstream/model/dit.py",
      "return super().forward(x).to(x.dtype)", "return super().forward(x.float())"),
    M("model: cross-attention projects the caption every pass under a cache", "shotstream/model/dit.py",
      "e.shape[1], cache)", "e.shape[1])"),
    M("model: the caption cache serves another caption's K/V", "shotstream/model/memory.py",
      "self._caption_of[0] is not text or", "False or"),
    M("model: the caption cache serves K/V of a caption edited in place", "shotstream/model/memory.py",
      "read = (text._version, int(slots[0]))", "read = (0, int(slots[0]))"),
    M("model: the caption cache serves K/V without gradients to training", "shotstream/model/memory.py",
      "len(slots) != 1 or torch.is_grad_enabled() or", "len(slots) != 1 or"),
    M("model: a new shot keeps the caption K/V of the last", "shotstream/model/memory.py",
      "        self.kv.forget_captions()\n", ""),
    M("model: the caption cache keys inference tensors by a version they lack", "shotstream/model/memory.py",
      " or text.is_inference():", ":"),
    M("model: RoPE turns the pairs the wrong way", "shotstream/model/rope.py",
      "(x.float().unflatten(-1, (-1, 2))) * phasors", "(x.float().unflatten(-1, (-1, 2))) * phasors.conj()",
      ("tests/test_model.py",)),
    M("model: release DiT masks the text padding", "shotstream/model/dit.py",
      "text_mask = text_mask if self.cfg.text_mask else None", "text_mask = text_mask", RELEASE_TESTS),
    # -- training batches --------------------------------------------------------------------------
    M("batch: target reads the first caption slot", "shotstream/training/data.py",
      "target_slot=C, shot=self.shot,", "target_slot=0, shot=self.shot,"),
    M("batch: context frames read the target's caption slot", "shotstream/training/data.py",
      "self.context, self.context_shots, torch.arange(C, device=self.context.device)",
      "self.context, self.context_shots, torch.full((C,), C, device=self.context.device)"),
    M("batch: padding and dropout not passed on", "shotstream/training/data.py",
      "context_valid=self.context_valid,", "context_valid=None,"),
    M("collate: context slots hold the target's caption", "shotstream/training/data.py",
      "captions += [story_caption(e.story, s) for s in e.context_shots]", "captions += [own for s in e.context_shots]"),
    M("collate: context frames flagged with the target's shot", "shotstream/training/data.py",
      "shots[b, :n] = torch.tensor(e.context_shots, device=device)", "shots[b, :n] = e.shot"),
    # -- training stages -----------------------------------------------------------------------------
    M("ode: teacher forcing's clean chunks noised", "shotstream/training/ode.py",
      "s = torch.cat([torch.zeros(B, cond.num_context + F, device=noisy.device), sigma], 1)",
      "s = torch.cat([torch.zeros(B, cond.num_context, device=noisy.device), sigma, sigma], 1)"),
    M("ode: teacher forcing's noisy chunks placed after the clean ones", "shotstream/training/ode.py",
      "frames = concat_frames(cond.frames(F), cond.target_frames(0, F))",
      "frames = concat_frames(cond.frames(F), cond.target_frames(F, F))"),
    M("ode: a noisy chunk sees its own clean chunk", "shotstream/training/ode.py",
      "mask[noisy, clean] = block[None, :] < block[:, None]", "mask[noisy, clean] = block[None, :] <= block[:, None]"),
    M("ode: loss regresses onto the noisy state", "shotstream/training/ode.py",
      "torch.mean((x0_pred.float() - nb.target) ** 2)", "torch.mean((x0_pred.float() - noisy.float()) ** 2)"),
    M("ode: every chunk at the first step's sigma", "shotstream/training/ode.py",
      "sigma = self.sigmas.to(self.device)[step_idx]", "sigma = self.sigmas.to(self.device)[torch.zeros_like(step_idx)]"),
    M("self-forcing: exit step always 0", "shotstream/training/self_forcing.py",
      "exits = torch.randint(steps,", "exits = torch.randint(1,"),
    M("self-forcing: critic trained on ground truth", "shotstream/training/self_forcing.py",
      "else self.dmd.critic_loss(x0, batch)", "else self.dmd.critic_loss(batch.target, batch)"),
    M("self-forcing: rollout's context flagged with the target's shot", "shotstream/training/self_forcing.py",
      "context_shots=cond.context_shots[:, :n],", "context_shots=batch.shot[:, None].expand(B, n),"),
    M("self-forcing: rollout's target reads the first caption slot", "shotstream/training/self_forcing.py",
      "text_embedded=True)", "text_embedded=True, target_slot=0)"),
    M("self-forcing: the rolling ablation's rollouts start from a fresh cache", "shotstream/training/self_forcing.py",
      "        if not self.generation.rolling:\n            return super().rollout(batch, grad, full=full)",
      "        if True:\n            return super().rollout(batch, grad, full=full)", ("tests/test_stages.py",)),
    M("self-forcing: inter-shot history is the ground truth", "shotstream/training/self_forcing.py",
      "examples = [example_from_history(s, k, h, None, cfg=self.config) for s, h in zip(self.stories, self.history)]",
      "examples = [next_shot_example(s, k, self.config) for s, h in zip(self.stories, self.history)]"),
    M("dmd: gradient with the wrong sign", "shotstream/training/dmd.py",
      "grad = torch.nan_to_num((x0_fake - x0_real) / normalizer)", "grad = torch.nan_to_num((x0_real - x0_fake) / normalizer)",
      DMD_TESTS),
    M("dmd: real score without CFG", "shotstream/training/dmd.py",
      "        if uncond is not None:\n            v = fm.cfg(", "        if False:\n            v = fm.cfg(", DMD_TESTS),
    # -- the profile page (issue #34) ------------------------------------------------------------
    M("profile: attention FLOPs not counted", "benchmark/profile.py",
      "        elif e.name == ATTENTION_OP:", "        elif False:", ("tests/test_profile.py",)),
    M("profile: a shot's short last chunk counted as a full one", "benchmark/flops.py",
      "n = min(chunk_frames, shot_frames - chunk * chunk_frames) * tpf", "n = chunk_frames * tpf", ("tests/test_profile.py",)),
    M("flops: a cache write counted after the shot's last chunk", "benchmark/flops.py",
      "return ChunkTokens(n, keys, (chunk + 1) * chunk_frames < shot_frames)", "return ChunkTokens(n, keys, True)",
      ("tests/test_flops.py",)),
    M("flops: a streamed chunk projects its caption at every forward", "benchmark/flops.py",
      "denoise = forward_flops(cfg, c.tokens, c.keys, text_kv=False)",
      "denoise = forward_flops(cfg, c.tokens, c.keys, text_embedded=True)", ("tests/test_flops.py",)),
    M("profile: the denoiser counted as projecting its caption at every forward", "benchmark/profile.py",
      "forward_flops(cfg, c.tokens, c.keys, text_kv=False)", "forward_flops(cfg, c.tokens, c.keys, text_embedded=True)",
      ("tests/test_profile.py",)),
    M("flops: a cache write counted as a whole forward", "benchmark/flops.py",
      "layers = full * per_layer + (kv if cache_only else 0)", "layers = m.num_layers * per_layer",
      ("tests/test_flops.py",)),
    # -- benchmark judges (issue #30): real encoders, transition control, the report -------------------
    M("bench judges: a cut two frames off the shot start is missed", "benchmark/transitions.py",
      "abs(c - s) <= tolerance", "abs(c - s) < tolerance", ("tests/test_transitions.py",)),
    M("bench judges: cuts by a fixed threshold (ContentDetector)", "benchmark/transitions.py",
      "(AdaptiveDetector if adaptive else ContentDetector)", "(ContentDetector if adaptive else AdaptiveDetector)",
      ("tests/test_transitions.py",)),
    M("bench judges: cut time read at the given start", "benchmark/transitions.py",
      "f = lo + int(np.argmax(t.scores[lo : hi + 1]))", "f = s", ("tests/test_transitions.py",)),
    M("bench judges: OWLv2 boxes scaled by the width, not the padded square", "benchmark/encoders.py",
      "side = max(h, w)", "side = w", ("tests/test_real_encoders.py",)),
    M("bench judges: OpenAI's TorchScript CLIP read as a state dict", "benchmark/clip.py",
      "    if is_torchscript(file):\n", "    if False:\n", ("tests/test_real_encoders.py",)),
    M("bench judges: the in-domain CLIP used silently on other videos", "benchmark/cli.py",
      "    if args.clip or args.clip_arch", "    if True or args.clip or args.clip_arch", ("tests/test_real_encoders.py",)),
    M("bench judges: the detector's boxes never reach the metrics", "benchmark/cli.py",
      "        scoring.localiser = detector", "        pass", ("tests/test_real_encoders.py",)),
    M("bench judges: the cut metrics never registered", "benchmark/__init__.py",
      "from benchmark import copies, transitions  # noqa: F401", "from benchmark import copies  # noqa: F401",
      ("tests/test_benchmark.py", "tests/test_transitions.py")),
    M("bench judges: character_copies never registered", "benchmark/__init__.py",
      "from benchmark import copies, transitions  # noqa: F401", "from benchmark import transitions  # noqa: F401",
      ("tests/test_copies.py",)),
    M("bench judges: a body cut in two by a line counted as two copies", "benchmark/copies.py",
      "r = max(1, round(MERGE_RADIUS * side))", "r = 0", ("tests/test_copies.py",)),
    M("bench judges: one stray frame counted as a copy", "benchmark/copies.py",
      ">= COPY_FRAMES", ">= 1", ("tests/test_copies.py",)),
    M("bench judges: character_copies on every framing", "benchmark/copies.py",
      'elif labels["framing"] == "wide":', "else:", ("tests/test_copies.py",)),
    M("bench judges: one leaderboard table for every suite", "benchmark/report.py",
      "for suite, suite_board in suite_leaderboards(rows).items():",
      "for suite, suite_board in {s: board for s in sorted(set(rows['suite']))}.items():", ("tests/test_report.py",)),
    # -- character identity (benchmark/: the localiser, the crops, the superseded versions) -------------
    M("identity: whole frames embedded instead of the character's crops", "benchmark/metrics.py",
      "crops = character_crops(self.story.frames[shot], self.story.labels[shot], self.localiser)",
      "crops = list(self.story.frames[shot])", IDENTITY_TESTS),
    M("identity: scene_similarity on the crops", "benchmark/metrics.py",
      "_earlier_shot_cosines([ctx.frame_embeddings(k) for k in range(len(story.frames))])",
      "_earlier_shot_cosines([ctx.character_embeddings(k) for k in range(len(story.frames))])", IDENTITY_TESTS),
    M("identity: the labelled box ignored", "benchmark/metrics.py",
      'if labels.get("box") is not None:', "if False:", IDENTITY_TESTS),
    M("identity: crops not square", "benchmark/metrics.py",
      "side = min(max(x1 - x0, y1 - y0), height, width)",
      "side = min(x1 - x0, height, width)", IDENTITY_TESTS),
    M("identity localiser: decode drops the regressed offset", "benchmark/localiser.py",
      "cx = (cx0.to(out.device)[cell] + pick[:, 1]) * size / G", "cx = cx0.to(out.device)[cell] * size / G",
      IDENTITY_TESTS),
    M("identity localiser: zoom_shift leaves the boxes where they were", "benchmark/localiser.py",
      "moved = (norm - shift.repeat(1, 2)) * zoom[:, None]", "moved = norm", IDENTITY_TESTS),
    M("identity report: superseded versions averaged with the current one", "benchmark/report.py",
      'stale = current.notna() & (rows["metric_version"] != current)', "stale = current.isna()", IDENTITY_TESTS),
    # -- runtime: the dtype a run picks (issue #34) ------------------------------------------------------
    M("runtime: --dtype auto never resolved by the benchmark", "benchmark/cli.py",
      "args = runtime.parse_args(build_parser(), argv)", "args = build_parser().parse_args(argv)",
      ("tests/test_runtime.py",)),
    M("runtime: a GPU that emulates bf16 counted as native", "shotstream/runtime.py",
      "return torch.cuda.get_device_properties(index).major >= 8", "return True", ("tests/test_runtime.py",)),
]


def working_tree_copy(dest: Path) -> None:
    """The tracked and untracked (not ignored) files of the working tree, as they are now."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():  # (deleted but still in the index)
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def applies(m: Mutation, root: Path = ROOT) -> str | None:
    """Why the mutation cannot be planted, or None."""
    path = root / m.file
    if not path.is_file():
        return f"{m.file} does not exist"
    n = path.read_text().count(m.old)
    return None if n == 1 else f"its line occurs {n} times in {m.file}"


def run_tests(root: Path, tests: tuple[str, ...], timeout: int) -> tuple[int, str]:
    # The copy's packages shadow the editable install: the copy is on sys.path first.
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header",
                           "-o", "addopts=", f"--timeout={timeout}", *tests],
                          cwd=root, env=env, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def first_failure(output: str) -> str:
    match = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.M)
    return match.group(1) if match else "(pytest failed without naming a test)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-k", default="", help="only the mutations whose name contains this text")
    p.add_argument("--list", action="store_true", help="list the mutations and whether each applies, then stop")
    p.add_argument("--timeout", type=int, default=600, help="per-test timeout in seconds (a hang counts as caught)")
    args = p.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.k.lower() in m.name.lower()]
    if not chosen:
        p.error(f"no mutation name contains {args.k!r}")
    if args.list:
        for m in chosen:
            print(f"{m.name:70s} {applies(m) or 'applies'}")
        return 0

    rows, failed = [], 0
    with tempfile.TemporaryDirectory(prefix="shotstream-mutants-") as tmp:
        copy = Path(tmp)
        working_tree_copy(copy)
        suites = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        code, out = run_tests(copy, suites, args.timeout)
        if code != 0:
            print(f"the unmutated tree fails its tests ({first_failure(out)}): fix that first\n{out[-3000:]}")
            return 1
        for i, m in enumerate(chosen, 1):
            start = time.perf_counter()
            if reason := applies(m, copy):
                verdict, failed = f"DOES NOT APPLY ({reason})", failed + 1
            else:
                path = copy / m.file
                original = path.read_text()
                path.write_text(original.replace(m.old, m.new))
                try:
                    code, out = run_tests(copy, m.tests, args.timeout)
                finally:
                    path.write_text(original)
                if code == 0:
                    verdict, failed = "NOT caught", failed + 1
                elif code == 1:
                    verdict = first_failure(out)
                else:  # collection error, interrupted: the mutant broke something other than behaviour
                    verdict, failed = f"BROKEN (pytest exit {code}: {first_failure(out)})", failed + 1
            rows.append((m.name, verdict))
            print(f"[{i}/{len(chosen)}] {m.name}: {verdict} ({time.perf_counter() - start:.0f} s)", flush=True)

    width = max(len(name) for name, _ in rows)
    print(f"\n| {'mutation':{width}s} | caught by |\n|{'-' * (width + 2)}|-----------|")
    for name, verdict in rows:
        print(f"| {name:{width}s} | {verdict} |")
    print(f"\n{len(rows) - failed} of {len(rows)} caught")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
