"""`shotstream generate`: stream a multi-shot story to an mp4 (plus a contact sheet).

    shotstream generate --story suite:3 -o story.mp4                 # a story of the eval suite
    shotstream generate --model teacher --story stories.json:0 -o t.mp4
    shotstream generate -p "a red star walks left in the snow" -p "close-up of it spinning" -o s.mp4

Shipped models are named (`student`, `teacher`, ablations: checkpoints/tiny/index.json); any
model folder path works too, including one written by `shotstream import` (the released model).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from shotstream.model.loading import resolve_model
from shotstream.runtime import add_runtime_args, set_threads, torch_dtype


def resolve_story(spec: str):
    """`suite:N` (the committed evaluation suite) or `file.json[:N]` -> a Story."""
    from shotstream.world.dataset import load_eval_suite
    from shotstream.world.storage import load_stories

    source, _, index = spec.rpartition(":") if ":" in spec else (spec, "", "0")
    if not source:
        source, index = spec, "0"
    stories = load_eval_suite() if source == "suite" else load_stories(source)
    try:
        return stories[int(index)]
    except (ValueError, IndexError):
        raise ValueError(f"--story {spec}: index {index!r} is not in 0..{len(stories) - 1}") from None


def check_output(path: Path) -> None:
    """The mp4 (and the contact sheet beside it) can be written: its folder exists or can be made."""
    if path.is_dir():
        raise ValueError(f"-o {path}: is a folder; give a file name such as {path / 'story.mp4'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(path.parent, os.W_OK):
        raise ValueError(f"-o {path}: the folder {path.parent} is not writable")


def cmd_generate(args) -> int:
    from shotstream.session import ShotStreamPipeline, clean_prompt
    from shotstream.video import contact_sheet, save_png, write_mp4

    if bool(args.story) == bool(args.prompt):
        raise ValueError("give either --story or one or more --prompt")
    if args.story:
        story = resolve_story(args.story)
        prompts, global_caption = story.captions, story.global_caption
    else:
        prompts, global_caption = args.prompt, args.global_caption
    check_output(Path(args.output))  # before any work: a bad -o must not cost the story
    set_threads(args.threads)
    pipe = ShotStreamPipeline.from_pretrained(resolve_model(args.model), autoencoder=args.autoencoder,
                                              device=args.device, dtype=torch_dtype(args.dtype),
                                              text_device=args.text_device)
    for p in prompts:  # every prompt is checked before the first shot is generated
        clean_prompt(p, pipe.config.prompt.max_chars)
    session = pipe.session(seed=args.seed, global_caption=global_caption, max_queue=max(8, len(prompts)))
    if len(prompts) > session.max_shots:
        raise ValueError(f"{len(prompts)} prompts; a story has at most {session.max_shots} shots")
    print(f"{pipe.kind} model {args.model}: {len(prompts)} shots, seed {args.seed}", file=sys.stderr)
    t0 = time.perf_counter()
    for p in prompts:
        # Each prompt is submitted once the previous shot has streamed, as a user would type it, so
        # "first frames after" is that shot's own latency (submitted all at once, shot k's figure
        # would include the k shots it waited behind). The session prepares the next shot's
        # history as soon as a shot ends, so that work is not in the next shot's figure either.
        session.submit(p)
        for c in session.stream():
            if c.chunk == 0:
                print(f"shot {c.shot}: {c.caption}", file=sys.stderr)
                print(f"  first frames after {c.t_ready - c.t_submit:.2f} s", file=sys.stderr)
    wall = time.perf_counter() - t0
    frames = session.story_frames()
    out = write_mp4(args.output, frames, pipe.config.video.fps)
    sheet = save_png(out.with_suffix(".png"), contact_sheet([s.frames for s in session.shots], [s.caption for s in session.shots]))
    print(f"wrote {out} ({len(frames)} frames, {len(frames) / wall:.1f} FPS generated) and {sheet}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="stream a multi-shot story to an mp4",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="student", help="shipped model name or model folder (default: student)")
    p.add_argument("--autoencoder", help="autoencoder folder (default: the model's own: its index entry, or the one beside it)")
    p.add_argument("--story", help="suite:N for the evaluation suite, or stories.json[:N]")
    p.add_argument("-p", "--prompt", action="append", help="a shot's prompt (repeat for more shots)")
    p.add_argument("--global-caption", help="story caption prefixed to every shot (with --prompt)")
    p.add_argument("-o", "--output", default="story.mp4", help="output mp4 (a contact sheet .png is written beside it)")
    p.add_argument("--seed", type=int, default=0)
    add_runtime_args(p, text_device=True)
    p.set_defaults(func=cmd_generate)
