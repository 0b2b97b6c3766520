"""`shotstream-bench` (also `python -m benchmark`): run, score, report, train-clip, train-probe, train-localiser.

    shotstream-bench run --method student teacher ground_truth --limit 10  # eval suite: generate + score (resumable)
    torchrun --nproc-per-node 4 -m benchmark run --method student teacher --device cuda  # stories sharded by rank
    shotstream-bench score --manifest videos/manifest.json --method other  # score any system's mp4s
    shotstream-bench score --manifest films/manifest.json --clip-arch ViT-B-32-quickgelu --clip-weights ViT-B-32.pt \
        --identity-encoder dinov2-base/ --detector owlv2-base/ --detector-query "a woman" --device cuda  # real videos
    shotstream-bench report                                                # results/leaderboard.csv, REPORT.md
    shotstream-bench train-probe / train-clip / train-localiser            # the StoryWorld judges (checkpoints/)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shotstream import paths, runtime
from shotstream.cli import CLIError
from shotstream.runtime import add_runtime_args, set_threads

from benchmark.metrics import CHARACTER_METRICS, CLIP_METRICS, IDENTITY_PARTS, LABEL_KEYS, TIMING_METRICS, describe_metrics, get_metrics
from benchmark.suite import EVAL_SUITE

REPO = paths.REPO_ROOT
DEFAULT_CLIP, DEFAULT_PROBE, DEFAULT_LOCALISER = paths.CLIP_TINY, paths.PROBE, paths.LOCALISER


def build_parser() -> argparse.ArgumentParser:
    epilog = "metrics (from the registry):\n" + describe_metrics()
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="shotstream-bench", description=__doc__, epilog=epilog, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    run = sub.add_parser("run", help="generate stories with methods, score them, append rows (resumable)",
                         description="Generate each story with each method, score it and append its rows. "
                         "Re-running the same command skips (method, story) pairs already stored.",
                         epilog=epilog, formatter_class=fmt)
    run.add_argument("--method", nargs="+", required=True,
                     help="shipped model names (checkpoints/tiny/: student, teacher, ...), model folders, "
                     "name=folder, autoencoder (the ground truth through the codec: the ceiling of generated "
                     "methods), or ground_truth (the StoryWorld renders: the reference row)")
    src = run.add_mutually_exclusive_group()
    src.add_argument("--suite", default=None,
                     help=f"'{EVAL_SUITE}' (default: the committed 50-story evaluation suite), 'storyworld-long' "
                     "(4 stories of 20 shots: chunk time and memory over many shots) or a StoryWorld stories .json")
    src.add_argument("--stories", help="a scoring manifest or an official ShotStream prompt JSON "
                     "(global_caption, shot1..shotN) giving the captions (no labels: label metrics are missing)")
    run.add_argument("--limit", type=int, default=None, help="only the first N stories")
    run.add_argument("--memory-only", action="store_true",
                     help="the memory-only protocol: every story with its global caption removed, so an 'it' shot's "
                     "identity can only come from the earlier shots in memory; rows kept beside the normal run's "
                     "and reported as their own columns (identity_acc[pronoun, memory-only])")
    run.add_argument("--seed", type=int, default=0)
    add_runtime_args(run, dtype="float32", text_device=True)
    run.add_argument("--teacher-steps", type=int, default=None,
                     help="override a bidirectional model's sampler steps (recorded in the protocol's steps)")
    run.add_argument("--autoencoder", default=None,
                     help="codec folder that decodes every model method (default: the one each model names "
                     "in its folder's index.json, else the 'autoencoder' folder beside it; a training run's final/ folder has none; a folder from "
                     "`shotstream import` always uses the VAE it names)")
    _scoring_args(run, default_metrics="all")
    run.set_defaults(func=cmd_run)

    score = sub.add_parser("score", help="score videos produced by any system (manifest JSON)",
                           description="Score the mp4s listed in a manifest (format: benchmark/README.md). "
                           "Every entry is checked before any row is written.", epilog=epilog, formatter_class=fmt)
    score.add_argument("--manifest", required=True, help="manifest JSON (paths relative to its folder)")
    score.add_argument("--method", default=None, help="method name for the rows (default: the manifest's 'method')")
    score.add_argument("--suite", default=None, help="suite name recorded in the rows (default: manifest's 'suite' or file name)")
    score.add_argument("--seed", type=int, default=0)
    add_runtime_args(score, dtype=None)
    _scoring_args(score, default_metrics="all but timing")
    score.set_defaults(func=cmd_score)

    report = sub.add_parser("report", help="regenerate leaderboard.csv, plots and REPORT.md from the rows")
    report.add_argument("--results", default="results", help="results folder (default: results)")
    report.set_defaults(func=cmd_report)

    train = sub.add_parser("train-clip", help="train the in-domain CLIP on StoryWorld (frame, caption) pairs "
                           "(training seeds) or a manifest's videos")
    from benchmark.train_clip import add_arguments

    add_arguments(train)
    train.set_defaults(func=cmd_train_clip)

    probe = sub.add_parser("train-probe", help="train the StoryWorld label probe on ground-truth renders (training seeds)",
                           description="Train the label probe (benchmark/probe.py) on StoryWorld training renders, "
                           "then report its accuracy on the evaluation suite's ground-truth renders.")
    from benchmark.probe import add_arguments as probe_arguments

    probe_arguments(probe)
    probe.set_defaults(func=cmd_train_probe)

    loc = sub.add_parser("train-localiser", help="train the StoryWorld character localiser on ground-truth boxes "
                         "(training seeds)", description="Train the character localiser (benchmark/localiser.py) on "
                         "StoryWorld training renders, then report its IoU with the ground-truth boxes on the "
                         "evaluation suite's renders.")
    from benchmark.localiser import add_arguments as localiser_arguments

    localiser_arguments(loc)
    loc.set_defaults(func=cmd_train_localiser)
    return parser


def _scoring_args(p: argparse.ArgumentParser, default_metrics: str) -> None:
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.add_argument("--metrics", default=None, help=f"comma-separated metric names (default: {default_metrics})")
    p.add_argument("--clip", default=None, help=f"in-domain CLIP checkpoint folder (default: {DEFAULT_CLIP.relative_to(REPO)} if present)")
    p.add_argument("--clip-arch", default=None, help="any open_clip architecture, with --clip-weights")
    p.add_argument("--clip-weights", default=None, help="local weights file for --clip-arch (never downloaded)")
    p.add_argument("--probe", default=None, help=f"label probe folder (default: {DEFAULT_PROBE.relative_to(REPO)} if present)")
    p.add_argument("--localiser", default=None,
                   help="StoryWorld character localiser folder: the main character's box where the labels give none, "
                   f"for inter_shot_identity and intra_shot_consistency (default: {DEFAULT_LOCALISER.relative_to(REPO)} if present)")
    p.add_argument("--in-domain-clip", action="store_true",
                   help=f"score videos from outside StoryWorld with the in-domain CLIP ({DEFAULT_CLIP.relative_to(REPO)}) "
                   "anyway; without it (or --clip / --clip-arch) `score` refuses them")
    p.add_argument("--identity-encoder", default=None, metavar="FOLDER",
                   help="a local DINOv2 transformers folder: embeds the character crops of the identity metrics "
                   "(real videos; default: the CLIP)")
    p.add_argument("--detector", default=None, metavar="FOLDER",
                   help="a local OWLv2 transformers folder: the main character's box in every frame, the one that "
                   "best matches --detector-query (real videos; boxes in the labels come first)")
    p.add_argument("--detector-query", default="a person", help="what the main character is, for --detector "
                   "(default: 'a person')")
    p.add_argument("--no-report", action="store_true", help="do not regenerate the report afterwards")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _load_judge(load, path, default: Path, device, what: str, command: str, consequence: str):
    """A judge model from --<flag> or its shipped default folder; without either, a warning and None."""
    if path:
        return load(path, device=device)
    if default.is_dir():
        return load(default, device=device)
    print(f"shotstream-bench: warning: no {what} ({default} not found; train one with `shotstream-bench {command}`); "
          f"{consequence}", file=sys.stderr)
    return None


def _scoring(args, default_names: list[str] | None, device: str = "cpu"):
    """The metrics asked for, with the CLIP encoder and label probe they need, on `device`."""
    from benchmark.clip import ClipEncoder, load_clip
    from benchmark.runner import Scoring

    names = [n.strip() for n in args.metrics.split(",") if n.strip()] if args.metrics else default_names
    metrics = get_metrics(names)
    if args.clip_arch or args.clip_weights:
        if not (args.clip_arch and args.clip_weights):
            raise CLIError("--clip-arch and --clip-weights go together")
        clip = ClipEncoder.from_arch(args.clip_arch, args.clip_weights, device=device)
    elif args.clip:
        clip = load_clip(args.clip, device=device)
    elif DEFAULT_CLIP.is_dir():
        clip = load_clip(DEFAULT_CLIP, device=device)
    else:
        clip = None  # CLIP-based metrics are then NaN ("missing"), reported as failures
    if clip is None and any(m.name in CLIP_METRICS for m in metrics):
        print(f"shotstream-bench: warning: no CLIP encoder ({DEFAULT_CLIP} not found); CLIP-based metrics "
              "will be missing", file=sys.stderr)
    probe = localiser = None
    if any(m.name in LABEL_KEYS or m.name in IDENTITY_PARTS for m in metrics):
        from benchmark.probe import load_probe

        probe = _load_judge(load_probe, args.probe, DEFAULT_PROBE, device, "label probe", "train-probe",
                            "label metrics will be missing")
    if any(m.name in CHARACTER_METRICS for m in metrics):
        from benchmark.localiser import load_localiser

        localiser = _load_judge(load_localiser, args.localiser, DEFAULT_LOCALISER, device, "character localiser",
                                "train-localiser", "character metrics of shots without a labelled box will be missing")
    return (Scoring(metrics=metrics, clip=clip, probe=probe, localiser=localiser),
            (clip.name if clip is not None else "none"))


def _real_encoders(args, scoring, encoder: str, device: str):
    """--identity-encoder and --detector into `scoring`; each model's name (with its checksum) joins
    the rows' encoder."""
    from benchmark.encoders import CharacterDetector, IdentityEncoder

    names = [encoder]
    if args.identity_encoder:
        identity = IdentityEncoder.from_pretrained(args.identity_encoder, device=device)
        scoring.embed = identity.encode_images
        names.append(f"identity={identity.name}")
    if args.detector:
        detector = CharacterDetector.from_pretrained(args.detector, args.detector_query, device=device)
        scoring.localiser = detector  # (a CharacterLocator: frames -> one box per frame)
        names.append(f"detector={detector.name}")
    return scoring, " + ".join(names)


def _check_clip_domain(args, manifest, default_names: list[str]) -> None:
    """The in-domain CLIP knows StoryWorld only: on other videos its scores are noise (0-59 on correctly
    captioned test patterns), so it scores them only when asked for by name."""
    names = [n.strip() for n in args.metrics.split(",") if n.strip()] if args.metrics else default_names
    if args.clip or args.clip_arch or args.clip_weights or args.in_domain_clip or not set(names) & set(CLIP_METRICS):
        return
    if all(labels and set(LABEL_KEYS.values()) <= set(labels) for s in manifest.stories for labels in s.labels):
        return  # every shot carries StoryWorld's labels: the in-domain CLIP's own renders
    raise CLIError(f"{manifest.path}: these videos are not StoryWorld renders (their shots lack StoryWorld's labels) "
                   f"and the default CLIP ({DEFAULT_CLIP.relative_to(REPO)}) knows only StoryWorld: pass a real CLIP "
                   "with --clip-arch ARCH --clip-weights FILE, or --in-domain-clip to score them with it anyway")


def _load_stories(path: str) -> tuple[list[dict], str]:
    """Stories for `run`: a manifest's stories, or official prompt JSON (one story or a list, read by
    shotstream.world.load_stories like `generate --story`); returns (stories, suite)."""
    from benchmark.manifest import load_manifest
    from shotstream.world import load_stories

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: stories file not found")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from None
    if isinstance(data, dict) and "stories" in data:
        m = load_manifest(p)
        stories = [{"id": s.id, "global_caption": s.global_caption,
                    "shots": [{"caption": c, "labels": lab} for c, lab in zip(s.captions, s.labels)]}
                   for s in m.stories]
        return stories, m.suite or p.stem
    stories = load_stories(p)
    # one story is named after its file (as before); a list's stories as `generate --story file.json:N` names them
    ids = [p.stem] if len(stories) == 1 else [f"{p.stem}:{i}" for i in range(len(stories))]
    return [{"id": sid, "global_caption": s.global_caption or "", "shots": [{"caption": c} for c in s.captions]}
            for sid, s in zip(ids, stories)], p.stem


def cmd_run(args) -> int:
    """Under `torchrun`, rank r of W runs stories r, r+W, ...; each story's rows are their own file in
    the shared results folder, so the shards merge by construction and rank 0 writes the report."""
    from datetime import timedelta

    from shotstream.training.distributed import setup, teardown

    set_threads(args.threads)
    world = setup(args.device, timeout=timedelta(hours=24))  # ranks finish their shares at different times
    try:
        return _run_shard(args, world)
    finally:
        teardown(world)


def _run_shard(args, world) -> int:
    from benchmark.rows import MEMORY_ONLY, RowStore, RunMeta
    from benchmark.runner import (StreamingGenerator, check_prompts, check_protocol, is_autoencoder, method_protocol,
                                  parse_method, run_benchmark, story_view)
    from benchmark.suite import load_suite
    from benchmark.timing import cpu_threads
    from shotstream.training.distributed import barrier

    # Resolve every method before anything is generated: a typo fails at once, writing nothing.
    folders = dict(parse_method(m) for m in args.method)
    if args.autoencoder and not is_autoencoder(Path(args.autoencoder)):
        raise FileNotFoundError(f"--autoencoder {args.autoencoder}: not an autoencoder folder")
    if args.stories:
        stories, suite = _load_stories(args.stories)
    else:
        stories, suite = load_suite(args.suite or EVAL_SUITE)
    if args.limit is not None:
        stories = stories[: max(args.limit, 0)]
    # ids are fixed before sharding (a story without one is named by its position in the suite)
    stories = [story_view(s, i) for i, s in enumerate(stories)]
    if len({s.id for s in stories}) != len(stories):
        raise ValueError("story ids must be unique within a suite")
    for story in stories:
        check_prompts(story)
    stories = stories[world.rank::world.world_size]
    scoring, encoder = _scoring(args, None, device=str(world.device))
    scoring, encoder = _real_encoders(args, scoring, encoder, str(world.device))
    store = RowStore(args.results)
    metas = {}
    for name, folder in folders.items():
        metas[name] = RunMeta(suite=suite, encoder=encoder, **method_protocol(folder, args.teacher_steps),
                              # the flag ("cuda"): setup() made each rank's own GPU the current one
                              device=args.device, dtype=args.dtype, threads=cpu_threads(), seed=args.seed)
        check_protocol(store, name, metas[name])
    generate = StreamingGenerator(folders, teacher_steps=args.teacher_steps, autoencoder=args.autoencoder,
                                  text_device=args.text_device)
    done = skipped = 0
    for name in folders:  # each method records its own protocol (steps, preset)
        counts = run_benchmark([name], stories, store, metas[name], scoring, generate=generate,
                               progress=not args.quiet and world.is_main,
                               variant=MEMORY_ONLY if args.memory_only else "")
        done, skipped = done + counts["done"], skipped + counts["skipped"]
        generate.release(name)  # the next method's peak memory must not include this one's model
    shard = f" (rank {world.rank} of {world.world_size})" if world.world_size > 1 else ""
    print(f"run: {done} stories scored, {skipped} already done (resumed){shard}")
    barrier(world)  # every shard's rows are on disk before the report reads them
    return _maybe_report(args) if world.is_main else 0


def cmd_score(args) -> int:
    from benchmark.manifest import load_manifest
    from benchmark.rows import RowStore, RunMeta
    from benchmark.runner import score_manifest
    from benchmark.timing import cpu_threads

    manifest = load_manifest(args.manifest)
    method = args.method or manifest.method
    if not method:
        raise CLIError(f"{args.manifest}: no method name (pass --method or set 'method' in the manifest)")
    default = [n for n in (m.name for m in get_metrics()) if n not in TIMING_METRICS]
    _check_clip_domain(args, manifest, default)
    set_threads(args.threads)
    scoring, encoder = _scoring(args, default, device=args.device)
    scoring, encoder = _real_encoders(args, scoring, encoder, args.device)
    meta = RunMeta(suite=args.suite or manifest.suite or Path(args.manifest).stem, encoder=encoder, steps="",
                   preset="", device=args.device, dtype="", threads=cpu_threads(), seed=args.seed)
    counts = score_manifest(manifest, method, RowStore(args.results), meta, scoring, progress=not args.quiet)
    print(f"score: {counts['done']} stories scored, {counts['skipped']} already done (resumed)")
    return _maybe_report(args)


def cmd_report(args) -> int:
    from benchmark.report import write_report

    written = write_report(args.results)
    print(f"report: wrote {len(written)} files in {args.results} (leaderboard.csv, REPORT.md, plots/)")
    return 0


def cmd_train_clip(args) -> int:
    from benchmark.train_clip import run

    return run(args)


def cmd_train_probe(args) -> int:
    from benchmark.probe import run

    return run(args)


def cmd_train_localiser(args) -> int:
    from benchmark.localiser import run

    return run(args)


def _maybe_report(args) -> int:
    if not args.no_report:
        return cmd_report(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    from benchmark.runner import GenerationNotWired
    from shotstream.checkpoint import CheckpointError

    args = runtime.parse_args(build_parser(), argv)
    try:
        return args.func(args) or 0
    except (CLIError, ValueError, OSError, KeyError, CheckpointError, GenerationNotWired) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"shotstream-bench {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"shotstream-bench {args.command}: interrupted (finished stories are kept; re-run to resume)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
