"""`shotstream world ...`: preview a story as video, regenerate the eval suite, check a story file,
measure render speed."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from shotstream.config import VideoConfig


def _video_cfg(args) -> VideoConfig:
    cfg = VideoConfig(height=args.height, width=args.width, fps=args.fps, frames_per_shot=args.frames)
    cfg.validate()
    return cfg


def _describe(story) -> list[str]:
    lines = [f"global caption: {story.global_caption}"] if story.global_caption else []
    for k, shot in enumerate(story.shots):
        lab = shot.labels
        tag = ""
        if lab is not None:
            chars = " + ".join(f"{c.colour} {c.pattern} {c.shape}" for c in lab.characters)
            tag = f"  [{chars} | {lab.scene} | {lab.framing} | {lab.action}{' | pronoun' if lab.pronoun else ''}]"
        lines.append(f"shot {k + 1} ({shot.num_frames} frames): {shot.caption}{tag}")
    return lines


def cmd_preview(args) -> int:
    from shotstream.video import contact_sheet, save_png, write_mp4
    from shotstream.world.render import render_story
    from shotstream.world.story import sample_story

    cfg = _video_cfg(args)
    story = sample_story(args.seed, args.shots, frames_per_shot=cfg.frames_per_shot)
    shots = [frames for frames, _ in render_story(story, cfg)]
    out = Path(args.output)
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"{out}: output must be an .mp4 path")
    write_mp4(out, np.concatenate(shots), cfg.fps)
    sheet = save_png(out.with_suffix(".png"), contact_sheet(shots, story.captions, n_per_shot=5))
    print(f"story seed {args.seed}, {story.num_shots} shots")
    print("\n".join(_describe(story)))
    print(f"wrote {out} and {sheet}")
    return 0


def cmd_suite(args) -> int:
    from shotstream.world.dataset import EVAL_SEEDS, EVAL_SUITE_PATH, LONG_SEEDS, LONG_SUITE_PATH, write_eval_suite
    from shotstream.world.storage import load_stories

    output = args.output or (LONG_SUITE_PATH if args.long else EVAL_SUITE_PATH)
    path = write_eval_suite(output, long=args.long)
    seeds = LONG_SEEDS if args.long else EVAL_SEEDS
    stories = load_stories(path)
    shots = [s for st in stories for s in st.shots]
    pronouns = sum(s.labels.pronoun for s in shots)
    print(f"wrote {path}: {len(stories)} stories (seeds {seeds.start}..{seeds.stop - 1}), "
          f"{len(shots)} shots, {pronouns} pronoun shots")
    return 0


def cmd_check(args) -> int:
    from shotstream.world.storage import load_stories

    stories = load_stories(args.file, frames_per_shot=args.frames)
    for i, story in enumerate(stories):
        print(f"story {i}" + (f" (seed {story.seed})" if story.seed is not None else "") + ("" if story.has_labels else " [captions only]"))
        print("  " + "\n  ".join(_describe(story)))
    print(f"{args.file}: {len(stories)} stories OK")
    return 0


def cmd_speed(args) -> int:
    from shotstream.world.render import render_story
    from shotstream.world.story import sample_story

    cfg = _video_cfg(args)
    stories = [sample_story(1_000_000 + i, frames_per_shot=cfg.frames_per_shot) for i in range(args.stories)]
    wall, cpu, frames = time.perf_counter(), time.process_time(), 0
    for story in stories:
        frames += sum(len(f) for f, _ in render_story(story, cfg))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    # CPU time too: on a busy machine wall time measures the neighbours, not the renderer.
    print(f"rendered {frames} frames at {cfg.height}x{cfg.width}: {frames / wall:.0f} frames/s wall, "
          f"{frames / cpu:.0f} frames per CPU-second (one process)")
    return 0


def _add_video_args(p):
    d = VideoConfig()
    p.add_argument("--height", type=int, default=d.height, help=f"frame height (default {d.height})")
    p.add_argument("--width", type=int, default=d.width, help=f"frame width (default {d.width})")
    p.add_argument("--fps", type=int, default=d.fps, help=f"frames per second (default {d.fps})")
    p.add_argument("--frames", type=int, default=d.frames_per_shot, help=f"frames per shot, 4k+1 (default {d.frames_per_shot})")


def add_parser(sub) -> None:
    world = sub.add_parser("world", help="StoryWorld: procedural multi-shot stories with labels")
    wsub = world.add_subparsers(dest="world_command", metavar="<world command>", required=True)

    p = wsub.add_parser("preview", help="render one story to an mp4 plus a contact-sheet PNG beside it")
    p.add_argument("--seed", type=int, default=0, help="story seed (eval suite: 0..49, training: >= 1000000)")
    p.add_argument("--shots", type=int, default=None, help="number of shots (default: drawn from the seed)")
    p.add_argument("-o", "--output", default="story.mp4", help="output .mp4 (the PNG goes beside it)")
    _add_video_args(p)
    p.set_defaults(func=cmd_preview)

    p = wsub.add_parser("suite", help="regenerate the fixed evaluation suite JSON (or the long suite)")
    p.add_argument("--long", action="store_true", help="the long suite: 4 stories of 20 shots (seeds 100..103)")
    p.add_argument("-o", "--output", default=None, help="output path (default: the packaged suite file)")
    p.set_defaults(func=cmd_suite)

    p = wsub.add_parser("check", help="validate a story file (ours or the official shot1..shotN format) and print it")
    p.add_argument("file")
    p.add_argument("--frames", type=int, default=None, help="frames per shot for shots that do not say")
    p.set_defaults(func=cmd_check)

    p = wsub.add_parser("speed", help="measure rendering frames/s")
    p.add_argument("--stories", type=int, default=20)
    _add_video_args(p)
    p.set_defaults(func=cmd_speed)
