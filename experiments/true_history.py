"""What does a bidirectional next-shot model draw after the *true* earlier shots? Label accuracy
of shots sampled with the ground-truth history as context, under several guidance settings.

    python -m experiments.true_history                                   # shipped teacher, "it" shots
    python -m experiments.true_history --subset named --settings 3 3:2 --limit 20

The benchmark's protocol conditions every shot on the model's own earlier shots, so an "it" shot
inherits the mistakes made before it. Here every shot k >= 1 of the evaluation suite is sampled
(same noise in every setting) after the frames `select_context_frames` picks from its
ground-truth shots, decoded, and read by the label probe. A setting is

    S      classifier-free guidance at scale S on the caption (1 = none)
    S:C    ... and at scale C on the earlier shots (sampler.context_scale)
    S:none no context at all, guidance S on the caption (what the caption alone gives)
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from benchmark.probe import load_probe, shot_labels
from experiments.context_use import load_bidirectional, shot_noise
from shotstream import paths
from shotstream import flow_matching as fm
from shotstream.conditioning import next_shot_velocity, unconditional
from shotstream.runtime import add_runtime_args, as_arg, positive_int, set_threads
from shotstream.training.data import collate, next_shot_example
from shotstream.video import to_uint8
from shotstream.world.dataset import load_eval_suite

LABELS = ("identity", "colour", "shape", "pattern", "framing", "action")


@dataclasses.dataclass(frozen=True)
class Setting:
    scale: float
    context_scale: float = 1.0
    hide_context: bool = False

    @classmethod
    def parse(cls, text: str) -> "Setting":
        scale, _, context = text.partition(":")
        try:
            setting = cls(float(scale), hide_context=True) if context == "none" else cls(float(scale), float(context or 1))
        except ValueError:
            raise ValueError(f"setting {text!r} is not S, S:C or S:none (S, C numbers)") from None
        if setting.scale == 1 and setting.context_scale != 1:
            raise ValueError(f"setting {text!r}: guidance on the context needs guidance on the caption (S != 1)")
        return setting

    def __str__(self) -> str:
        if self.hide_context:
            return f"{self.scale:g}:none"
        return f"{self.scale:g}" + (f":{self.context_scale:g}" if self.context_scale != 1 else "")


@torch.no_grad()
def measure(model, config, autoencoder, text_encoder, probe, stories, settings, subset="pronoun", steps=12,
            batch_size=4, seed=0, progress=True) -> pd.DataFrame:
    """One row per (shot, setting): the probe's answer and whether each label is right."""
    examples = [next_shot_example(story, k, config) for story in stories for k in range(1, story.num_shots)
                if subset == "all" or story.shots[k].labels.pronoun == (subset == "pronoun")]
    if not examples:
        raise ValueError(f"no {subset} shots with a history in these stories: use more (--limit)")
    null_states, null_mask = text_encoder.null_caption()
    null_states, null_mask = null_states.to(model.device), null_mask.to(model.device)
    sigmas = fm.teacher_sigmas(steps, config.sampler.teacher_shift)
    rows = []
    for start in tqdm(range(0, len(examples), batch_size), desc="true history", disable=not progress):
        group = examples[start:start + batch_size]
        batch = collate(group, autoencoder, text_encoder, config, model.device)
        noise = shot_noise(group, batch.target, seed)
        for s in settings:
            cond = batch.conditioning(model.cfg.chunk_frames)
            cond = cond.without_context() if s.hide_context else cond
            uncond = unconditional(model, cond, (null_states, null_mask), s.scale, s.context_scale)
            x0 = fm.euler_sample(lambda x, sigma: next_shot_velocity(model, cond, x, sigma), noise, sigmas, s.scale, uncond)
            video = autoencoder.decode(x0.float())
            answers = probe.predict_batch([to_uint8(video[i:i + 1]) for i in range(len(group))])
            for e, answer in zip(group, answers):
                truth = shot_labels(e.story.shots[e.shot].labels)
                rows.append({"story": e.story.seed, "shot": e.shot, "setting": str(s), "framing_label": truth["framing"],
                             **{f"{k}_acc": float(answer[k] == truth[k]) for k in LABELS},
                             **{f"{k}_answer": answer[k] for k in ("shape", "colour", "pattern")}})
    return pd.DataFrame(rows)


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per setting (in the order given) over all shots, then shape by the shot's framing."""
    table = rows.groupby("setting", sort=False)[[f"{k}_acc" for k in LABELS]].mean()
    by_framing = rows.pivot_table(index="setting", columns="framing_label", values="shape_acc", aggfunc="mean")
    table = table.join(by_framing.add_prefix("shape@"))  # (a left join keeps the settings' order)
    table.insert(0, "shots", rows.groupby("setting", sort=False).size())
    return table.reset_index()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=paths.TEACHER, help="a bidirectional model folder")
    ap.add_argument("--autoencoder", default=paths.AUTOENCODER)
    ap.add_argument("--probe", default=paths.PROBE, help="label probe folder")
    ap.add_argument("--limit", type=as_arg(positive_int), default=50,
                    help="the first N stories of the evaluation suite (default: all 50)")
    ap.add_argument("--subset", choices=("pronoun", "named", "all"), default="pronoun",
                    help='which shots: "it" shots (pronoun, default), named ones, or all')
    ap.add_argument("--settings", nargs="+", default=["1", "3", "3:3", "3:none"],
                    help="guidance settings S, S:C or S:none (default: 1 3 3:3 3:none)")
    ap.add_argument("--steps", type=as_arg(positive_int), default=12, help="Euler steps (default: 12, the ODE pairs')")
    ap.add_argument("--out", type=Path, default=None, help="also write the per-shot rows to this CSV")
    add_runtime_args(ap, dtype=None)
    args = ap.parse_args(argv)
    try:
        settings = [Setting.parse(s) for s in args.settings]
    except ValueError as e:
        ap.error(str(e))
    if args.out and not args.out.parent.is_dir():
        ap.error(f"--out: folder {args.out.parent} does not exist")
    set_threads(args.threads)
    model, config, autoencoder, text_encoder = load_bidirectional(ap, args, "true_history")
    try:
        probe = load_probe(args.probe, device=args.device)
    except (OSError, ValueError) as e:
        ap.exit(2, f"true_history: {e}\n")
    try:
        rows = measure(model, config, autoencoder, text_encoder, probe, load_eval_suite()[: args.limit], settings,
                       args.subset, args.steps)
    except ValueError as e:
        ap.exit(2, f"true_history: {e}\n")
    rows.insert(0, "model", args.model)
    if args.out:
        rows.to_csv(args.out, index=False)
    print(f"{args.model}: {args.subset} shots sampled after their true earlier shots, {args.steps} steps")
    print(summary(rows).to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
