"""Does a bidirectional next-shot model read its earlier shots (their frames or their captions), and
its caption's action? A check in a few minutes, no sampling.

    python -m experiments.context_use                                       # shipped teacher, 20 stories, 3 min
    python -m experiments.context_use --model runs/teacher_finetune/final/teacher --limit 50

For every shot k >= 1 of the evaluation suite the model denoises the ground-truth shot, at fixed
noise levels and with the same noise in each of these conditions:

    true    its own earlier shots as context (select_context_frames, as in training)
    hidden  no context (every conditional frame masked out)
    other   the context of the same shot k of a story with another main character (the wrong
            one to copy; same k, so the frames sit at the same shot indices as the true ones)
    shape   its own earlier shots re-rendered with the main character in the next shape of
            vocab.SHAPES (colour, pattern, places and captions unchanged): is the shape read
            from the frames?
    colour  the same with the next colour of vocab.COLOURS: is the colour read from the frames?
    context_captions  its own earlier frames, but their captions describe the main character
            in the next shape and colour (the target's caption unchanged): is the character
            read from the earlier shots' captions?
    action  its own context, but its caption tells the next action (`with_other_action`:
            "jumps" -> "spins", the other words unchanged)
    caption_shape  its own context, its caption naming the main character in the next shape
            (an "it" caption first names it: `named_caption`): how much the error depends on the
            shape when the caption says it, the scale for `shape`

and the flow-matching error is measured on the latent cells of the main character
(`character_cells`; shots where it is never in view are left out). A model that carries its
character from shot to shot has hidden / true and other / true above 1, most of all on "it"
shots, whose caption does not name the character; one that copies its shape has shape / true
above 1; one that follows the caption's action has action / true above 1.

It also says which colour the x0 prediction draws in the first frame (`drawn_colour`), with the
true, the recoloured and the recaptioned context (COLOUR_COLUMNS), and with a shape classifier
(`--shape-classifier`, shipped) which shape, with the true, the reshaped and the recaptioned
context (SHAPE_COLUMNS): a model that copies the shape from its earlier shots draws another shape
after the reshaped ones (changed_reshaped), the reshaped context's shape more often than chance
(copied_reshaped, 1/6).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from experiments.shape_classifier import ShapeClassifier, prediction_shape_logits
from experiments.stories import description_pattern, named_story_caption, with_main
from shotstream import paths
from shotstream import flow_matching as fm
from shotstream.autoencoder import TinyVideoAutoencoder
from shotstream.conditioning import next_shot_velocity
from shotstream.model.loading import from_pretrained
from shotstream.text_encoder import TextEncoder
from shotstream.runtime import add_runtime_args, as_arg, positive_int, set_threads
from shotstream.training.data import (NextShotBatch, NextShotExample, character_cells, collate, next_shot_example,
                                      story_caption)
from shotstream.training.state import derive_seed
from shotstream.world import vocab
from shotstream.world.dataset import load_eval_suite
from shotstream.world.story import with_article

CONDITIONS = ("true", "hidden", "other", "shape", "colour", "context_captions", "action", "caption_shape")
# Each row says which colour the x0 prediction draws with the shot's own context (colour_true),
# the recoloured (colour_colour) and the recaptioned one (colour_context_captions); the summary
# gives the share of shots that draw the character's colour (colour_drawn), the recoloured
# context's colour (colour_copied_recoloured), and another colour than with their own context
# after the recoloured or the recaptioned one (colour_changed_recoloured, _recaptioned).
COLOUR_COLUMNS = ("colour_drawn", "colour_copied_recoloured", "colour_changed_recoloured", "colour_changed_recaptioned")
# With a shape classifier, the same for the shape: drawn_true, drawn_shape, drawn_context_captions
# in the rows; in the summary the share of shots that draw the character's shape (drawn,
# drawn_reshaped), the reshaped context's shape (copied_reshaped), and another shape than with
# their own context (changed_reshaped, changed_recaptioned).
SHAPE_COLUMNS = ("drawn", "drawn_reshaped", "copied_reshaped", "changed_reshaped", "changed_recaptioned")


def with_other_action(caption: str, action: str) -> str:
    """`caption` (of a shot whose action is `action`) telling the next action of vocab.ACTIONS
    instead: its action phrase becomes the other action's phrase of the same kind and synonym slot."""
    other = vocab.ACTIONS[(vocab.ACTIONS.index(action) + 1) % len(vocab.ACTIONS)]
    for table in (vocab.ACTION_VERBS, vocab.ACTION_GERUNDS):
        # longest first: "jumps up high" before "jumps"
        for i, phrase in sorted(enumerate(table[action]), key=lambda p: -len(p[1])):
            if phrase in caption:
                return caption.replace(phrase, table[other][min(i, len(table[other]) - 1)], 1)
    raise ValueError(f"no {action!r} phrase in caption {caption!r}")


def other_story_partners(examples: list[NextShotExample]) -> list[int]:
    """For each example, the index of the next one (cyclically) with the same target shot k from a
    story whose main character differs: its context shows the wrong character at the right shot
    indices. Raises ValueError when some example has none."""
    partners = []
    for i, e in enumerate(examples):
        order = [(i + d) % len(examples) for d in range(1, len(examples))]
        match = next((j for j in order if examples[j].shot == e.shot and examples[j].story.seed != e.story.seed
                      and examples[j].story.shots[0].labels.main != e.story.shots[0].labels.main), None)
        if match is None:
            raise ValueError(f"no story with another main character has a shot {e.shot}: use more stories (--limit)")
        partners.append(match)
    return partners


def with_context_of(batch: NextShotBatch, other: NextShotBatch) -> NextShotBatch:
    """`batch` with the conditional frames of `other` (latents and their captions; the same shot
    indices, as partners share the target shot)."""
    if not torch.equal(batch.context_shots, other.context_shots):
        raise ValueError("with_context_of: the other context comes from different shot indices")
    C = batch.budget
    text, mask = batch.text.clone(), batch.text_mask.clone()
    text[:, :C], mask[:, :C] = other.text[:, :C], other.text_mask[:, :C]
    return dataclasses.replace(batch, context=other.context, context_valid=other.context_valid, text=text, text_mask=mask)


def with_target_captions(batch: NextShotBatch, captions: list[str], text_encoder) -> NextShotBatch:
    """`batch` with the target's caption slot encoded from `captions` (one per example)."""
    C = batch.budget
    states, states_mask = text_encoder.encode(captions)
    text, mask = batch.text.clone(), batch.text_mask.clone()
    text[:, C], mask[:, C] = states.to(text), states_mask.to(mask.device)
    return dataclasses.replace(batch, text=text, text_mask=mask)


def shot_noise(examples: list[NextShotExample], target: torch.Tensor, seed: int) -> torch.Tensor:
    """Noise like `target` [B, ...] whose item i depends on example i's story and shot alone, not
    on how shots are grouped into batches (so every check and setting sees the same noise)."""
    return torch.stack([torch.randn(target.shape[1:], generator=torch.Generator().manual_seed(
        derive_seed(seed, e.story.seed, e.shot))) for e in examples]).to(target.device, target.dtype)


@torch.no_grad()
def character_error(v: torch.Tensor, target: torch.Tensor, noise: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Per example [B]: mean squared error of the velocity v to the true one over the character's
    latent cells [B, F, h, w] (NaN where there are none: the character is never in view)."""
    err = ((v - fm.velocity_target(target, noise)) ** 2).mean(2)  # [B, F, h, w]
    return (err * cells).sum((1, 2, 3)) / cells.sum((1, 2, 3))


@torch.no_grad()
def drawn_shape(classifier, autoencoder, x_t, v, sigma, cells) -> torch.Tensor:
    """Per example [B]: the shape index the classifier reads in the x0 prediction's first latent
    frame, decoded and cropped to the character's cells there (-1 where it is not in that frame)."""
    logits, seen = prediction_shape_logits(classifier, autoencoder, x_t, v, sigma, cells)
    return torch.where(seen, logits.argmax(1), -1)


# A decoded pixel counts for the palette colour (vocab.COLOUR_RGB, in [-1, 1]) within this distance
# of it: about 45 of 255, half the distance between the closest two (red and orange).
PALETTE_RADIUS = 0.35


@torch.no_grad()
def drawn_colour(autoencoder, x_t, v, sigma, boxes: np.ndarray) -> torch.Tensor:
    """Per example [B]: the index in vocab.COLOURS of the most common body colour inside the main
    character's frame-0 box (boxes [B, 4] pixels, NaN = not in view) of the decoded x0
    prediction's first frame; -1 where it is not in view or no pixel is near a body colour."""
    frames = autoencoder.decode(fm.predict_x0(x_t[:, :1], v[:, :1], sigma).float())[:, 0]
    palette = torch.tensor([vocab.COLOUR_RGB[c] for c in vocab.COLOURS], dtype=frames.dtype, device=frames.device) / 127.5 - 1
    out = []
    for frame, (x0, y0, x1, y1) in zip(frames, boxes):
        if np.isnan(x0):
            out.append(-1)
            continue
        pixels = frame[:, int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))].flatten(1).T  # [P, 3]
        distance = torch.cdist(pixels, palette)
        near = distance.argmin(1)[distance.amin(1) < PALETTE_RADIUS]
        out.append(int(torch.bincount(near, minlength=len(palette)).argmax()) if len(near) else -1)
    return torch.tensor(out)


def names(space: tuple[str, ...], indices: torch.Tensor) -> list[str]:
    """Label names of readings; "" for -1 (the character is not in the first frame, or no colour is)."""
    return [space[j] if j >= 0 else "" for j in indices.tolist()]


def measure(model, config, autoencoder, text_encoder, stories, sigmas=(0.6, 0.9), batch_size=4, seed=0,
            progress=True, shape_classifier=None) -> pd.DataFrame:
    """One row per (shot, sigma): the character-cell error in each condition, which colour its x0
    prediction draws (COLOUR_COLUMNS) and, with a `shape_classifier`, which shape (SHAPE_COLUMNS)."""
    examples = [next_shot_example(story, k, config) for story in stories for k in range(1, story.num_shots)]
    partners = other_story_partners(examples)
    device = model.device
    rows = []
    for start in tqdm(range(0, len(examples), batch_size), desc="context use", disable=not progress):
        group = examples[start:start + batch_size]
        batch = collate(group, autoencoder, text_encoder, config, device)
        others = [examples[j] for j in partners[start:start + batch_size]]
        def context_of(examples):
            return with_context_of(batch, collate(examples, autoencoder, text_encoder, config, device))
        variants = {"true": batch,
                    "hidden": dataclasses.replace(batch, context_valid=torch.zeros_like(batch.context_valid)),
                    "other": context_of(others),
                    "shape": context_of([reshaped(e, config) for e in group]),
                    "colour": context_of([recoloured(e, config) for e in group]),
                    "context_captions": context_of([recaptioned(e) for e in group]),
                    "action": with_target_captions(batch, [other_action_caption(e) for e in group], text_encoder),
                    "caption_shape": with_target_captions(batch, [other_shape_caption(e) for e in group], text_encoder)}
        cells = torch.from_numpy(np.stack([character_cells(e.target_boxes, config) for e in group]))
        cells = cells.to(device, batch.target.dtype)
        boxes = np.stack([e.target_boxes[0, 0] for e in group])  # frame 0, the main character
        noise = shot_noise(group, batch.target, seed)
        for sigma in sigmas:
            s = torch.full((len(group),), sigma, device=device)
            x_t = fm.add_noise(batch.target, noise, s)
            with torch.no_grad():
                v = {c: next_shot_velocity(model, b.conditioning(model.cfg.chunk_frames), x_t, s) for c, b in variants.items()}
            errors = {c: character_error(v[c], batch.target, noise, cells).cpu() for c in CONDITIONS}
            drawn = {f"colour_{c}": names(vocab.COLOURS, drawn_colour(autoencoder, x_t, v[c], s, boxes))
                     for c in ("true", "colour", "context_captions")}
            if shape_classifier is not None:
                drawn |= {f"drawn_{c}": names(vocab.SHAPES, drawn_shape(shape_classifier, autoencoder, x_t, v[c], s, cells))
                          for c in ("true", "shape", "context_captions")}
            for i, e in enumerate(group):
                rows.append({"story": e.story.seed, "shot": e.shot, "sigma": sigma,
                             "subset": "pronoun" if e.story.shots[e.shot].labels.pronoun else "named",
                             "main_shape": e.story.main_character.shape, "main_colour": e.story.main_character.colour,
                             **{c: float(errors[c][i]) for c in CONDITIONS}, **{c: d[i] for c, d in drawn.items()}})
    return pd.DataFrame(rows)


def following(space: tuple[str, ...], label: str) -> str:
    """The label after `label` in its label space (cyclically)."""
    return space[(space.index(label) + 1) % len(space)]


def next_shape(shape: str) -> str:
    """The shape after `shape` in vocab.SHAPES: what the shape conditions draw or name."""
    return following(vocab.SHAPES, shape)


def next_colour(colour: str) -> str:
    """The colour after `colour` in vocab.COLOURS: what the colour conditions draw or name."""
    return following(vocab.COLOURS, colour)


def reshaped(e: NextShotExample, config) -> NextShotExample:
    """The example after its story's main character took the next shape of vocab.SHAPES."""
    return next_shot_example(with_main(e.story, shape=next_shape(e.story.main_character.shape)), e.shot, config)


def recoloured(e: NextShotExample, config) -> NextShotExample:
    """The example after its story's main character took the next colour of vocab.COLOURS."""
    return next_shot_example(with_main(e.story, colour=next_colour(e.story.main_character.colour)), e.shot, config)


def recaptioned(e: NextShotExample) -> NextShotExample:
    """The example whose earlier shots' captions describe the main character in the next shape and
    colour (canonical words); its frames and its own caption unchanged."""
    main = e.story.main_character
    other = dataclasses.replace(main, shape=next_shape(main.shape), colour=next_colour(main.colour)).describe()
    phrase = description_pattern(main)

    def renamed(m: re.Match) -> str:  # with its article, if any: "a red ..." -> "an orange ..."
        if not m.group(1):
            return other
        new = with_article(other)
        return new[0].upper() + new[1:] if m.group(1)[0].isupper() else new
    shots = [dataclasses.replace(shot, caption=phrase.sub(renamed, shot.caption)) if i < e.shot else shot
             for i, shot in enumerate(e.story.shots)]
    if shots[0].caption == e.story.shots[0].caption:
        raise ValueError(f"no description of the main character in caption {shots[0].caption!r}")
    return dataclasses.replace(e, story=dataclasses.replace(e.story, shots=shots))


def other_action_caption(e: NextShotExample) -> str:
    """The caption the model reads for the example's shot, telling the next action instead."""
    shot, full = e.story.shots[e.shot], story_caption(e.story, e.shot)  # full = [global caption] + caption
    return full[: len(full) - len(shot.caption)] + with_other_action(shot.caption, shot.labels.action)


def other_shape_caption(e: NextShotExample) -> str:
    """The caption the model reads for the example's shot, naming the main character (also on an
    "it" shot) in the next shape of vocab.SHAPES instead."""
    main = e.story.shots[e.shot].labels.main
    other = next_shape(main.shape)
    caption = named_story_caption(e.story, e.shot)
    for word in sorted(vocab.SHAPE_WORDS[main.shape], key=len, reverse=True):  # "plus sign" before a shorter one
        changed, n = re.subn(rf"\b{re.escape(word)}\b", vocab.SHAPE_WORDS[other][0], caption, count=1)
        if n:
            return changed
    raise ValueError(f"no {main.shape!r} word in caption {caption!r}")


def read(column: pd.Series) -> pd.Series:
    """Which rows have a reading ("" in memory, NaN from a CSV: none)."""
    return column.astype("string").fillna("") != ""


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean error per (subset, sigma) and condition, and the ratios that say whether context (and
    the caption's action) is read.
    Shots where the character is never in view (NaN) are left out."""
    rows = rows.dropna(subset=list(CONDITIONS))
    table = rows.groupby(["subset", "sigma"])[list(CONDITIONS)].mean()
    table.insert(0, "shots", rows.groupby(["subset", "sigma"]).size())
    table["hidden/true"] = table["hidden"] / table["true"]
    table["other/true"] = table["other"] / table["true"]
    table["shape/true"] = table["shape"] / table["true"]
    table["colour/true"] = table["colour"] / table["true"]
    table["context_captions/true"] = table["context_captions"] / table["true"]
    table["action/true"] = table["action"] / table["true"]
    table["caption_shape/true"] = table["caption_shape"] / table["true"]
    if "drawn_true" in rows:
        seen = rows[read(rows["drawn_true"])]
        shapes = pd.DataFrame({
            "drawn": seen["drawn_true"] == seen["main_shape"],
            "drawn_reshaped": seen["drawn_shape"] == seen["main_shape"],
            "copied_reshaped": seen["drawn_shape"] == seen["main_shape"].map(next_shape),
            "changed_reshaped": seen["drawn_shape"] != seen["drawn_true"],
            "changed_recaptioned": seen["drawn_context_captions"] != seen["drawn_true"]}).join(seen[["subset", "sigma"]])
        table = table.join(shapes.groupby(["subset", "sigma"]).mean())
    if "colour_true" in rows:
        seen = rows[read(rows["colour_true"])]
        colours = pd.DataFrame({
            "colour_drawn": seen["colour_true"] == seen["main_colour"],
            "colour_copied_recoloured": seen["colour_colour"] == seen["main_colour"].map(next_colour),
            "colour_changed_recoloured": seen["colour_colour"] != seen["colour_true"],
            "colour_changed_recaptioned": seen["colour_context_captions"] != seen["colour_true"]}).join(seen[["subset", "sigma"]])
        table = table.join(colours.groupby(["subset", "sigma"]).mean())
    return table.reset_index()


def load_bidirectional(ap: argparse.ArgumentParser, args: argparse.Namespace, tool: str):
    """A check's --model, --autoencoder and text encoder on --device, or exit with one line (code 2)
    when they do not load, the model is not bidirectional or the codec does not fit it.
    Returns (model in eval mode, config, autoencoder, text encoder)."""
    try:
        model, config, kind = from_pretrained(args.model, device=args.device)
        autoencoder = TinyVideoAutoencoder.from_pretrained(args.autoencoder, device=args.device).eval()
    except (OSError, ValueError) as e:
        ap.exit(2, f"{tool}: {e}\n")
    if kind != "bidirectional":
        ap.exit(2, f"{tool}: {args.model} is a {kind} model; this check reads a bidirectional one\n")
    geometry = ("height", "width", "spatial_stride", "temporal_stride", "latent_channels")
    if any(getattr(autoencoder.cfg, g) != getattr(config.video, g) for g in geometry):
        ap.exit(2, f"{tool}: {args.autoencoder} does not encode the video geometry of {args.model}\n")
    return model.eval(), config, autoencoder, TextEncoder(max_len=config.model.text_len, device=args.device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=paths.TEACHER, help="a bidirectional model folder")
    ap.add_argument("--autoencoder", default=paths.AUTOENCODER)
    ap.add_argument("--limit", type=as_arg(positive_int), default=20,
                    help="the first N stories of the evaluation suite (default: 20)")
    ap.add_argument("--sigmas", default="0.6,0.9", help="noise levels, comma-separated, in (0, 1)")
    ap.add_argument("--out", type=Path, default=None, help="also write the per-shot rows to this CSV")
    ap.add_argument("--shape-classifier", default=paths.SHAPE_CLASSIFIER,
                    help="also say which shape the x0 prediction draws, as this classifier reads it ('' = off; "
                         "biased for a teacher trained with it, identity_teacher's stage.shape_loss_weight)")
    add_runtime_args(ap, dtype=None)
    args = ap.parse_args(argv)
    try:
        sigmas = tuple(float(s) for s in args.sigmas.split(","))
    except ValueError:
        ap.error(f"--sigmas: {args.sigmas!r} is not a comma-separated list of numbers")
    if not all(0 < s < 1 for s in sigmas):
        ap.error(f"--sigmas must lie in (0, 1), got {args.sigmas}")
    if args.out and not args.out.parent.is_dir():
        ap.error(f"--out: folder {args.out.parent} does not exist")
    set_threads(args.threads)
    model, config, autoencoder, text_encoder = load_bidirectional(ap, args, "context_use")
    try:
        classifier = ShapeClassifier.from_pretrained(args.shape_classifier, args.device) if args.shape_classifier else None
    except (OSError, ValueError) as e:
        ap.exit(2, f"context_use: {e}\n")
    try:
        rows = measure(model, config, autoencoder, text_encoder, load_eval_suite()[: args.limit], sigmas,
                       shape_classifier=classifier)
    except ValueError as e:
        ap.exit(2, f"context_use: {e}\n")
    rows.insert(0, "model", args.model)
    if args.out:
        rows.to_csv(args.out, index=False)
    print(f"{args.model}: flow-matching error on the main character's latent cells; the colour"
          + (f" and the shape ({args.shape_classifier})" if classifier else "") + " its x0 prediction draws")
    print(summary(rows).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
