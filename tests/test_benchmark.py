"""Benchmark harness: metrics with known answers, resume, scoring external mp4s, bad manifests,
atomic report, and the torchmetrics CLIPScore cross-check. CPU, no downloads."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import torch

from benchmark import report as report_mod
from benchmark.cli import main as bench_main
from benchmark.clip import ClipEncoder, load_clip
from benchmark.manifest import ManifestError, load_manifest
from benchmark.metrics import METRICS, STORY_LEVEL, StoryOutput, Value, get_metrics, register_metric, score_story
from benchmark.report import breakdown, build_leaderboard, confusions, write_report
from benchmark.rows import ADDED_COLUMNS, RowStore, RunMeta
from benchmark.runner import Generation, Scoring, run_benchmark, score_manifest
from benchmark.timing import ChunkRecord, StreamRecorder, measure_peak_memory
from benchmark.train_clip import train_clip
from benchmark.transitions import CUT_METRICS
from shotstream.world.vocab import LABEL_SPACES

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def solid(colour, frames=4, size=32, seed=0) -> np.ndarray:
    """uint8 [F, H, W, 3] of one colour with a little noise."""
    rng = np.random.default_rng(seed)
    base = np.array(COLOURS[colour] if isinstance(colour, str) else colour)
    return np.clip(base + rng.integers(-15, 16, (frames, size, size, 3)), 0, 255).astype(np.uint8)


def pixel_embed(images) -> torch.Tensor:
    """A deterministic embedding for tests: the image resized to 8x8, flattened, centred."""
    out = []
    for img in images:
        x = torch.from_numpy(np.asarray(img)).permute(2, 0, 1)[None].float()
        x = torch.nn.functional.interpolate(x, size=(8, 8), mode="area").flatten()
        out.append(x - 127.5)
    return torch.stack(out)


class WholeFrame:
    """A character localiser stub: the character fills the frame."""

    def locate(self, frames):
        return np.tile(np.float32([0, 0, frames.shape[2], frames.shape[1]]), (len(frames), 1))


def story(frames, captions=None, labels=None, records=None, peak=None, sid="s0") -> StoryOutput:
    n = len(frames)
    return StoryOutput(sid, captions or [f"shot {k}" for k in range(n)], list(frames), labels or [None] * n,
                       records=records, peak_mem_mb=peak)


def values(rows, metric):
    return {(r.shot, r.subset): r.value for r in rows if r.metric == metric}


META = RunMeta(suite="unit", encoder="pixels", steps="4", preset="tiny", device="cpu", dtype="float32",
               threads=1, seed=0, git_commit="abc", date="2025-01-01T00:00:00Z")


# --- registry -----------------------------------------------------------------------------------


def test_registry_documents_every_metric_and_refuses_duplicates():
    for m in METRICS.values():
        assert m.doc and m.unit and m.range[0] < m.range[1] and m.version >= 1
    with pytest.raises(ValueError, match="already registered"):
        register_metric("fps", higher_is_better=True, range=(0, 1), unit="x", doc="dup")(lambda s, c: [])
    with pytest.raises(ValueError, match="unknown metric"):
        get_metrics(["fps", "nope"])


# --- embedding metrics --------------------------------------------------------------------------


def test_identical_frames_give_identity_and_consistency_one():
    frames = np.repeat(solid("red", frames=1), 5, axis=0)
    rows = score_story(story([frames, frames, frames]), get_metrics(["inter_shot_identity", "intra_shot_consistency"]),
                       embed=pixel_embed, localiser=WholeFrame())
    ident, intra = values(rows, "inter_shot_identity"), values(rows, "intra_shot_consistency")
    assert set(ident) == {(1, ""), (2, "")}  # shot 0 has no earlier shot
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in ident.values())
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in intra.values())


def test_intra_shot_consistency_known_value():
    # frame f's embedding is a lookup by its pixel value: e0 = x, e1 = y, e2 = x.
    table = {0: [1.0, 0.0], 1: [0.0, 1.0], 2: [1.0, 0.0]}
    embed = lambda imgs: torch.tensor([table[int(np.asarray(i)[0, 0, 0])] for i in imgs])  # noqa: E731
    frames = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (0, 1, 2)])
    rows = score_story(story([frames]), get_metrics(["intra_shot_consistency"]), embed=embed, localiser=WholeFrame())
    # f=1: (cos(e1,e0)=0 + cos(e1,e0)=0)/2 = 0 ; f=2: (cos(e2,e0)=1 + cos(e2,e1)=0)/2 = 0.5 -> mean 0.25
    assert values(rows, "intra_shot_consistency")[(0, "")] == pytest.approx(0.25)


def test_inter_shot_identity_uses_the_labelled_box():
    # Same character (a white square), different backgrounds: identity is 1 on the crops only.
    def shot(bg):
        f = solid(bg, frames=3, size=32)
        f[:, 8:24, 8:24] = 255
        return f

    box = {"box": [8, 8, 24, 24], "pronoun": False}
    s = story([shot("red"), shot("blue")], labels=[dict(box), dict(box, pronoun=True)])
    with_box = values(score_story(s, get_metrics(["inter_shot_identity"]), embed=pixel_embed), "inter_shot_identity")
    assert with_box == {(1, "pronoun"): pytest.approx(1.0, abs=1e-6)}
    whole = values(score_story(story([shot("red"), shot("blue")]), get_metrics(["scene_similarity"]),
                               embed=pixel_embed), "scene_similarity")
    assert whole[(1, "")] < 0.9
    # shot 2 vs the mean of shots 0 and 1: a value per pair, averaged
    a, b, c = solid("red", 2), solid("blue", 2), solid("red", 2)
    three = values(score_story(story([a, b, c]), get_metrics(["inter_shot_identity"]), embed=pixel_embed,
                               localiser=WholeFrame()), "inter_shot_identity")
    emb = [torch.nn.functional.normalize(pixel_embed(x).mean(0), dim=0) for x in (a, b, c)]
    assert three[(2, "")] == pytest.approx(((emb[2] @ emb[0]) + (emb[2] @ emb[1])).item() / 2, abs=1e-5)


# --- timing metrics -----------------------------------------------------------------------------


def synthetic_records():
    # shot 0 submitted at 0, chunks ready at 0.5, 1.0, 1.5 ; shot 1 submitted early (0.25) and waits:
    # its chunks start at 1.5 and are ready at 2.0, 2.75, 3.5 ; shot 2 submitted at 4.0, chunks of
    # 0.9 s. 8 frames per chunk.
    return [ChunkRecord(0, 0, 0.0, 0.5, 8), ChunkRecord(0, 1, 0.0, 1.0, 8), ChunkRecord(0, 2, 0.0, 1.5, 8),
            ChunkRecord(1, 0, 0.25, 2.0, 8), ChunkRecord(1, 1, 0.25, 2.75, 8), ChunkRecord(1, 2, 0.25, 3.5, 8),
            ChunkRecord(2, 0, 4.0, 4.9, 8), ChunkRecord(2, 1, 4.0, 5.8, 8), ChunkRecord(2, 2, 4.0, 6.7, 8)]


def test_timing_metrics_are_exact_on_synthetic_records():
    frames = solid("red", frames=24)
    rows = score_story(story([frames] * 3, records=synthetic_records(), peak=123.5),
                       get_metrics(["latency_first_frame_s", "fps", "chunk_time_s", "chunk_time_growth", "peak_mem_mb"]))
    assert values(rows, "latency_first_frame_s") == {(0, ""): 0.5, (1, ""): 1.75, (2, ""): pytest.approx(0.9)}
    assert values(rows, "fps") == {(STORY_LEVEL, ""): pytest.approx(72 / 6.7)}
    assert values(rows, "chunk_time_s") == {(0, ""): 0.5, (1, ""): pytest.approx(2.0 / 3),  # (0.5 + .75 + .75)/3
                                            (2, ""): pytest.approx(0.9)}
    # the line through shot 1 (0.5, 0.75, 0.75 s) and shot 2 (0.9 s x3): median pairwise slope 0.15,
    # through (median shot, median time) = (1.5, 0.825): 0.75 s at shot 1, 0.9 s at shot 2
    assert values(rows, "chunk_time_growth") == {(STORY_LEVEL, ""): pytest.approx(0.9 / 0.75)}
    two_shots = score_story(story([frames] * 2, records=synthetic_records()[:6]), get_metrics(["chunk_time_growth"]))
    assert math.isnan(values(two_shots, "chunk_time_growth")[(STORY_LEVEL, "")])
    assert values(rows, "peak_mem_mb") == {(STORY_LEVEL, ""): 123.5}


def back_to_back(durations: list[list[float]]) -> list[ChunkRecord]:
    """Records of shots streamed back to back, each submitted as the previous one ends."""
    records, t = [], 0.0
    for shot, chunks in enumerate(durations):
        submit = t
        for j, d in enumerate(chunks):
            t += d
            records.append(ChunkRecord(shot, j, submit, t, 8))
    return records


def test_chunk_time_growth_reads_the_trend_from_the_second_shot_and_ignores_a_spike():
    # Shot 0 (no history) is cheap; from shot 1 on each chunk takes 1 + 0.05 (k - 1) s, and one
    # chunk of the last shot was slowed 3x by something else: the trend, not the spike, is growth.
    line = lambda k: 1.0 + 0.05 * (k - 1)  # noqa: E731
    durations = [[0.5] * 3] + [[line(k)] * 3 for k in range(1, 5)]
    durations[4][1] = 3.0
    frames = [solid("red", frames=24)] * 5
    growth = values(score_story(story(frames, records=back_to_back(durations)), get_metrics(["chunk_time_growth"])),
                    "chunk_time_growth")
    assert growth == {(STORY_LEVEL, ""): pytest.approx(line(4) / line(1))}
    flat = [[0.5] * 3] + [[1.0] * 3] * 4
    flat[4][1] = 3.0
    growth = values(score_story(story(frames, records=back_to_back(flat)), get_metrics(["chunk_time_growth"])),
                    "chunk_time_growth")
    assert growth == {(STORY_LEVEL, ""): pytest.approx(1.0)}


def test_stream_recorder_produces_records_with_its_clock():
    t = iter([0.0, 0.5, 1.0, 1.25, 2.0])
    rec = StreamRecorder(clock=lambda: next(t))
    rec.submit(0)
    rec.chunk_ready(0, 9)
    rec.chunk_ready(0, 8)
    rec.submit(1)
    rec.chunk_ready(1, 9)
    assert rec.records == [ChunkRecord(0, 0, 0.0, 0.5, 9), ChunkRecord(0, 1, 0.0, 1.0, 8), ChunkRecord(1, 0, 1.25, 2.0, 9)]
    with pytest.raises(ValueError, match="before the shot was submitted"):
        rec.chunk_ready(5, 1)


def test_busy_machine_threshold():
    from benchmark.timing import BUSY_LOAD_PER_CORE, is_busy

    assert BUSY_LOAD_PER_CORE == 0.5
    # 2 cores, the run's own 2 threads: others may hold up to 1 runnable process (0.5 per core)
    assert not is_busy(3.0, 2.0, threads=2, cores=2) and is_busy(3.1, 2.0, threads=2, cores=2)
    assert is_busy(0.0, 3.5, threads=2, cores=2)  # busy after is enough
    assert is_busy(float("nan"), 6.0, threads=1, cores=4) and not is_busy(float("nan"), float("nan"), 1, 4)


def test_latency_p95_in_leaderboard():
    lat = [0.1 * k for k in range(1, 21)]
    rows = pd.DataFrame({"method": "m", "story": [f"s{k}" for k in range(20)], "shot": 0,
                         "metric": "latency_first_frame_s", "value": lat, "subset": "", "note": "",
                         "metric_version": 1, "suite": "u", "encoder": "e", "steps": "4", "preset": "tiny",
                         "device": "cpu", "dtype": "f", "threads": 1, "seed": 0, "git_commit": "x", "date": "d"})
    board = build_leaderboard(rows)
    assert board.loc[0, "latency_first_frame_s"] == pytest.approx(np.mean(lat))
    assert board.loc[0, "latency_first_frame_s_p95"] == pytest.approx(np.percentile(lat, 95))


def test_missing_inputs_are_nan_and_failures_never_zero(tmp_path):
    frames = solid("red")
    # no records, memory, CLIP, embed, probe or labels: every metric but those of the frames alone
    needs_inputs = [m for m in get_metrics() if m.name not in CUT_METRICS]
    rows = score_story(story([frames, frames]), needs_inputs)
    assert rows and all(math.isnan(r.value) for r in rows)
    assert all(r.note.startswith("missing") for r in rows)
    store = RowStore(tmp_path)
    store.write_story("m", "s0", rows, META)
    board = pd.read_csv(write_report(tmp_path)["leaderboard.csv"])
    assert board.loc[0, "failures"] == len(rows)
    for name in (m.name for m in needs_inputs):
        assert math.isnan(board.loc[0, name]), name
    report = (tmp_path / "REPORT.md").read_text()
    assert "## Failures" in report and "no CLIP encoder" in report


def test_out_of_range_value_is_a_failure_not_clipped():
    register_metric("_test_bad_range", higher_is_better=True, range=(0, 1), unit="x", doc="test")(
        lambda s, c: [Value(0, 42.0)])
    try:
        (row,) = score_story(story([solid("red")]), get_metrics(["_test_bad_range"]))
        assert math.isnan(row.value) and "outside the declared range" in row.note
    finally:
        del METRICS["_test_bad_range"]


# --- label accuracy -----------------------------------------------------------------------------


class ColourProbe:
    """Predicts 'identity' and 'colour' from the mean colour; knows nothing about 'action'."""

    def predict(self, frames):
        mean = frames.reshape(-1, 3).mean(0)
        name = min(COLOURS, key=lambda c: np.abs(mean - np.array(COLOURS[c])).sum())
        return {"identity": name, "colour": name, "scene": "forest", "framing": "wide"}


def test_label_accuracy_with_probe_and_pronoun_subset(tmp_path):
    labels = [{"identity": "red", "scene": "forest", "framing": "wide", "action": "run", "pronoun": False},
              {"identity": "red", "scene": "desert", "framing": "wide", "action": "run", "pronoun": True},
              {"identity": "blue", "scene": "forest", "framing": "close-up", "action": "run", "pronoun": True}]
    s = story([solid("red"), solid("red"), solid("green")], labels=labels)
    rows = score_story(s, get_metrics(["identity_acc", "scene_acc", "framing_acc", "action_acc"]), probe=ColourProbe())
    assert values(rows, "identity_acc") == {(0, "named"): 1.0, (1, "pronoun"): 1.0, (2, "pronoun"): 0.0}
    assert values(rows, "scene_acc") == {(0, "named"): 1.0, (1, "pronoun"): 0.0, (2, "pronoun"): 1.0}
    assert all(math.isnan(v) for v in values(rows, "action_acc").values())
    RowStore(tmp_path).write_story("m", "s0", rows, META)
    board = build_leaderboard(RowStore(tmp_path).read())
    assert board.loc[0, "identity_acc"] == pytest.approx(2 / 3)
    assert board.loc[0, "identity_acc[named]"] == 1.0 and board.loc[0, "identity_acc[pronoun]"] == 0.5
    assert math.isnan(board.loc[0, "action_acc"])


def test_identity_parts_say_which_attribute_is_missed(tmp_path):
    labels = [{"identity": "red circle", "colour": "red", "shape": "circle", "pronoun": False},
              {"identity": "blue circle", "colour": "blue", "shape": "circle", "pronoun": True}]
    rows = score_story(story([solid("red"), solid("green")], labels=labels),
                       get_metrics(["colour_acc", "shape_acc"]), probe=ColourProbe())
    assert values(rows, "colour_acc") == {(0, "named"): 1.0, (1, "pronoun"): 0.0}
    assert all(math.isnan(v) for v in values(rows, "shape_acc").values())  # the probe gave no shape
    RowStore(tmp_path).write_story("m", "s0", rows, META)
    board = build_leaderboard(RowStore(tmp_path).read())
    assert board.loc[0, "colour_acc"] == 0.5 and "colour_acc[named]" not in board  # a diagnostic: no split


def test_label_rows_keep_the_probes_answer_for_confusion_matrices(tmp_path):
    labels = [{"colour": c, "pronoun": False} for c in ("red", "red", "blue")]
    rows = score_story(story([solid("red"), solid("green"), solid("green")], labels=labels),
                       get_metrics(["colour_acc"]), probe=ColourProbe())
    RowStore(tmp_path).write_story("m", "s0", rows, META)
    counts = confusions(RowStore(tmp_path).read(), "colour_acc")["m"]
    assert list(counts.index) == list(LABEL_SPACES["colour"]) == list(counts.columns)
    assert counts.loc["red", "red"] == 1 and counts.loc["red", "green"] == 1 and counts.loc["blue", "green"] == 1
    assert counts.to_numpy().sum() == 3
    assert "plots/confusion_colour.png" in write_report(tmp_path)



def test_breakdown_splits_identity_by_the_shots_true_framing(tmp_path):
    labels = [{"identity": i, "framing": f, "pronoun": False}
              for i, f in (("red", "wide"), ("red", "close_up"), ("blue", "wide"))]
    rows = score_story(story([solid("red"), solid("red"), solid("green")], labels=labels),
                       get_metrics(["identity_acc", "framing_acc"]), probe=ColourProbe())  # reads every shot as wide
    RowStore(tmp_path).write_story("m", "s0", rows, META)
    table = breakdown(RowStore(tmp_path).read(), "identity_acc", "framing_acc")
    assert list(table.columns) == ["wide", "close_up"]  # in the label space's order, present labels only
    assert table.loc["m", "close_up"] == 1.0 and table.loc["m", "wide"] == 0.5
    assert breakdown(RowStore(tmp_path).read(), "identity_acc", "pattern_acc").empty  # no pattern rows
    assert "plots/identity_breakdown.png" in write_report(tmp_path)
    assert "## identity_acc by the true framing" in (tmp_path / "REPORT.md").read_text()

# --- CLIP ---------------------------------------------------------------------------------------


def colour_pairs(n_per_colour=12):
    return [(solid(c, frames=1, size=32, seed=i)[0], f"a {c} square") for c in COLOURS for i in range(n_per_colour)]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> tuple[ClipEncoder, Path]:
    """The shipped ShotStream-CLIP-tiny config trained a few steps on solid colours."""
    out = tmp_path_factory.mktemp("clip") / "clip-tiny"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread avoids oversubscription on a busy 2-core box
    try:
        enc = train_clip(colour_pairs(), out, steps=25, batch_size=16, lr=2e-3, shuffle_buffer=48, log_every=0, seed=0)
    finally:
        torch.set_num_threads(threads)
    return enc, out


def test_clip_text_orders_matching_caption_above_other_captions(tiny_clip):
    enc, _ = tiny_clip
    for colour in COLOURS:
        frames = solid(colour, frames=3, seed=99)
        scores = {}
        for other in COLOURS:
            rows = score_story(story([frames], captions=[f"a {other} square"]), get_metrics(["clip_text"]), clip=enc)
            scores[other] = values(rows, "clip_text")[(0, "")]
        assert max(scores, key=scores.get) == colour, scores
        assert all(0 <= v <= 100 for v in scores.values())


def test_clip_checkpoint_reloads_identically_and_from_arch(tiny_clip, tmp_path):
    enc, folder = tiny_clip
    frames = solid("blue", frames=2)
    again = load_clip(folder)
    assert torch.equal(again.encode_images(frames), enc.encode_images(frames))
    by_arch = ClipEncoder.from_arch("ShotStream-CLIP-tiny", folder / "model.safetensors")
    assert torch.equal(by_arch.encode_texts(["a blue square"]), enc.encode_texts(["a blue square"]))
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        ClipEncoder.from_arch("ViT-B-32", tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        ClipEncoder.from_arch("No-Such-Arch", folder / "model.safetensors")


def test_clip_text_matches_torchmetrics_clipscore(tiny_clip):
    from torchmetrics.multimodal.clip_score import CLIPScore

    enc, _ = tiny_clip

    class OpenClipForTorchmetrics(torch.nn.Module):
        """The model half of torchmetrics' (model, processor) contract, over our open_clip model."""

        def __init__(self, enc):
            super().__init__()
            self.clip = enc.model
            self.config = SimpleNamespace()  # torchmetrics looks for config.text_config (HF CLIP)

        def get_image_features(self, pixel_values):
            return self.clip.encode_image(pixel_values)

        def get_text_features(self, input_ids, attention_mask=None):
            return self.clip.encode_text(input_ids)

    def processor(text=None, images=None, return_tensors="pt", padding=True):
        if images is not None:  # torchmetrics passes uint8 [3, H, W] tensors
            return {"pixel_values": enc.preprocess([img.permute(1, 2, 0).numpy() for img in images])}
        ids = enc.tokenizer(text)
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}

    metric = CLIPScore(model_name_or_path=lambda: (OpenClipForTorchmetrics(enc), processor))
    for colour, caption in [("red", "a red square"), ("green", "a red square"), ("yellow", "a yellow square")]:
        frames = solid(colour, frames=4, seed=5)
        metric.reset()
        with torch.no_grad():
            metric.update(torch.from_numpy(frames).permute(0, 3, 1, 2), [caption] * len(frames))
            expected = metric.compute().item()
        rows = score_story(story([frames], captions=[caption]), get_metrics(["clip_text"]), clip=enc)
        assert values(rows, "clip_text")[(0, "")] == pytest.approx(expected, abs=1e-4)


# --- memory -------------------------------------------------------------------------------------


def test_measure_peak_memory_sees_a_large_allocation():
    _, base = measure_peak_memory(lambda: None)

    def allocate():
        a = np.ones(150 * 2**20 // 8)  # 150 MB, touched
        return float(a[-1])

    result, peak = measure_peak_memory(allocate)
    assert result == 1.0 and peak >= base + 100


# --- run: resume --------------------------------------------------------------------------------


def make_stories(n):
    names = list(COLOURS)
    return [{"id": f"story-{i}", "global_caption": "a tale",
             "shots": [{"caption": f"a {names[(i + k) % 4]} square", "labels": {"identity": names[i % 4], "pronoun": k > 0}}
                       for k in range(3)]} for i in range(n)]


class FakeMethod:
    """Paints each shot the colour its caption names; deterministic chunk times; can crash."""

    def __init__(self, crash_after=None):
        self.calls, self.crash_after = [], crash_after

    def __call__(self, method, story, *, seed, device, dtype, steps, preset):
        if self.crash_after is not None and len(self.calls) >= self.crash_after:
            raise KeyboardInterrupt  # the process dies mid-run
        self.calls.append(story.id)
        clock = iter(np.arange(0, 100, 0.25).tolist())
        rec = StreamRecorder(clock=lambda: next(clock))
        frames = []
        for k, caption in enumerate(story.captions):
            rec.submit(k)
            shot = solid(caption.split()[1], frames=6, seed=seed + k)
            for chunk in np.split(shot, 2):
                rec.chunk_ready(k, len(chunk))
            frames.append(shot)
        return Generation(frames, rec.records, peak_mem_mb=512.0)


def test_resume_after_interrupted_run_matches_uninterrupted(tmp_path):
    stories = make_stories(5)
    scoring = Scoring(metrics=get_metrics(), embed=pixel_embed, probe=ColourProbe())
    crashed = FakeMethod(crash_after=2)
    store = RowStore(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(["fake"], stories, store, META, scoring, generate=crashed, progress=False)
    assert store.stories("fake") == ["story-0", "story-1"]  # finished stories survive the crash
    kept = store.read()
    resumed = FakeMethod()
    counts = run_benchmark(["fake"], stories, store, META, scoring, generate=resumed, progress=False)
    assert resumed.calls == ["story-2", "story-3", "story-4"] and counts == {"done": 3, "skipped": 2}
    assert kept.equals(store.read()[store.read()["story"].isin(["story-0", "story-1"])].reset_index(drop=True))

    full = RowStore(tmp_path / "full")
    run_benchmark(["fake"], stories, full, META, scoring, generate=FakeMethod(), progress=False)
    machine = ["load_before", "load_after"]  # the environment at the time, like the date: not a result
    pd.testing.assert_frame_equal(store.read().drop(columns=machine), full.read().drop(columns=machine))
    assert not full.read()[full.read()["metric"] == "fps"]["value"].isna().any()
    # A re-run of the finished command does nothing.
    again = FakeMethod()
    assert run_benchmark(["fake"], stories, full, META, scoring, generate=again, progress=False)["done"] == 0
    assert again.calls == []


class FakeModel(FakeMethod):
    """FakeMethod with a model folder, as StreamingGenerator has: its files key the resume."""

    def __init__(self, folder: Path):
        super().__init__()
        self.model = folder

    def folder(self, method):
        return self.model


def test_resume_regenerates_only_stories_whose_inputs_changed(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"steps": 4}')
    (model / "model.safetensors").write_bytes(b"weights v1")
    store, stories = RowStore(tmp_path / "results"), make_stories(3)
    scoring = Scoring(metrics=get_metrics(["fps", "identity_acc"]), probe=ColourProbe())
    run_benchmark(["fake"], stories, store, META, scoring, generate=FakeModel(model), progress=False)
    before = store.read()
    stories[1]["shots"][2]["caption"] = "a green square"  # shot 2 of story-1 edited (was red)
    edited = FakeModel(model)
    assert run_benchmark(["fake"], stories, store, META, scoring, generate=edited, progress=False) == {"done": 1, "skipped": 2}
    assert edited.calls == ["story-1"]
    after = store.read()
    assert len(after) == len(before)  # replaced, not appended
    changed = after[after["story"] == "story-1"]["inputs"].unique()
    assert len(changed) == 1 and changed[0] not in set(before["inputs"])
    kept = lambda df: df[df["story"] != "story-1"].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(kept(after), kept(before))
    stories[2]["shots"][0]["labels"]["identity"] = "green"  # a label edited: scored against new truth
    relabelled = FakeModel(model)
    run_benchmark(["fake"], stories, store, META, scoring, generate=relabelled, progress=False)
    assert relabelled.calls == ["story-2"]
    (model / "model.safetensors").write_bytes(b"weights v2")  # retrained in place: every story is stale
    retrained = FakeModel(model)
    run_benchmark(["fake"], stories, store, META, scoring, generate=retrained, progress=False)
    assert retrained.calls == ["story-0", "story-1", "story-2"]
    again = FakeModel(model)
    assert run_benchmark(["fake"], stories, store, META, scoring, generate=again, progress=False)["done"] == 0


def test_rows_written_before_the_inputs_column_still_load_and_are_scored_again(tmp_path):
    store = RowStore(tmp_path)
    scoring = Scoring(metrics=get_metrics(["fps"]))
    run_benchmark(["fake"], make_stories(1), store, META, scoring, generate=FakeMethod(), progress=False)
    path = store.story_file("fake", "story-0")
    old = pd.read_csv(path, dtype=str, keep_default_na=False).drop(columns=list(ADDED_COLUMNS))
    path.write_text(old.to_csv(index=False))  # a rows file as committed before the column existed
    rows = store.read()
    assert list(rows["inputs"]) == [""] and rows["value"].notna().all()
    write_report(tmp_path)
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert board.loc[0, "fps"] == pytest.approx(rows.loc[0, "value"])
    assert "busy_stories" not in board and "busy machine" not in (tmp_path / "REPORT.md").read_text()
    # its inputs were never recorded, so resume cannot vouch for them: scored again, now keyed
    rerun = FakeMethod()
    assert run_benchmark(["fake"], make_stories(1), store, META, scoring, generate=rerun, progress=False)["done"] == 1
    assert rerun.calls == ["story-0"] and store.read().loc[0, "inputs"] != ""


def test_timed_rows_record_the_machine_load_and_the_report_flags_busy_stories(tmp_path, monkeypatch):
    import benchmark.runner as runner_mod

    loads = iter([0.4, 0.6, 5.0, 4.0, 0.4, 0.5])  # (before, after) of story-0, story-1 (busy), the reference
    monkeypatch.setattr(runner_mod, "load_average", lambda: next(loads))
    monkeypatch.setattr(runner_mod, "cpu_cores", lambda: 2)
    store = RowStore(tmp_path)
    scoring = Scoring(metrics=get_metrics(["fps", "identity_acc"]), probe=ColourProbe())
    run_benchmark(["fake"], make_stories(2), store, META, scoring, generate=FakeMethod(), progress=False)

    def reference(method, story, **kw):  # untimed, as ground truth: no timing rows, no load
        return dataclasses.replace(FakeMethod()(method, story, **kw), records=None, timed=False)

    run_benchmark(["ref"], make_stories(1), store, META, scoring, generate=reference, progress=False)
    rows = store.read()
    load = lambda m, s: {tuple(r) for r in rows.query("method == @m and story == @s")[  # noqa: E731
        ["load_before", "load_after", "cores"]].itertuples(index=False)}
    assert load("fake", "story-0") == {(0.4, 0.6, 2)} and load("fake", "story-1") == {(5.0, 4.0, 2)}  # every row
    ref = rows[rows["method"] == "ref"]
    assert ref[["load_before", "load_after"]].isna().all().all() and (ref["cores"] == 0).all()
    write_report(tmp_path)
    board = pd.read_csv(tmp_path / "leaderboard.csv").set_index("method")
    assert board.loc["fake", "busy_stories"] == 1 and board.loc["ref", "busy_stories"] == 0
    report = (tmp_path / "REPORT.md").read_text()
    section = report.split("## Timed on a busy machine")[1].split("## Failures")[0]
    assert "above 0.5 per CPU core" in section and "| fake | story-1 |  | 5 | 4 | 1 | 2 |" in section
    assert "story-0" not in section


class CaptionReader:
    """Draws an "it" shot's character from the global caption ("a tale of a <colour> square"), else
    from nothing it remembers (always green): identity on pronoun shots comes from the caption alone."""

    def __init__(self):
        self.global_captions = []

    def __call__(self, method, story, **kw):
        self.global_captions.append(story.global_caption)
        named = story.global_caption.split()[-2] if story.global_caption else "green"
        first = story.captions[0].split()[1]  # the first shot names its character
        return Generation([solid(first if k == 0 else named, frames=6) for k in range(len(story.captions))], None,
                          timed=False)


def caption_stories(n=2):
    names = ["red", "blue"]
    return [{"id": f"story-{i}", "global_caption": f"a tale of a {names[i % 2]} square",
             "shots": [{"caption": f"a {names[i % 2]} square" if k == 0 else "it walks",
                        "labels": {"identity": names[i % 2], "pronoun": k > 0}} for k in range(3)]} for i in range(n)]


def test_memory_only_variant_runs_without_global_captions_beside_the_normal_run(tmp_path):
    from benchmark.rows import MEMORY_ONLY

    store, scoring = RowStore(tmp_path), Scoring(metrics=get_metrics(["identity_acc"]), probe=ColourProbe())
    normal, memory = CaptionReader(), CaptionReader()
    run_benchmark(["fake"], caption_stories(), store, META, scoring, generate=normal, progress=False)
    counts = run_benchmark(["fake"], caption_stories(), store, META, scoring, generate=memory, progress=False,
                           variant=MEMORY_ONLY)
    assert counts == {"done": 2, "skipped": 0}  # its own rows: the normal run's do not count as done
    assert normal.global_captions == ["a tale of a red square", "a tale of a blue square"]
    assert memory.global_captions == ["", ""]
    assert store.stories("fake") == store.stories("fake", MEMORY_ONLY) == ["story-0", "story-1"]
    write_report(tmp_path)
    board = pd.read_csv(tmp_path / "leaderboard.csv").set_index("method")
    assert board.loc["fake", "identity_acc[pronoun]"] == 1.0  # the caption named it
    assert board.loc["fake", "identity_acc[pronoun, memory-only]"] == 0.0  # nothing in memory did
    assert board.loc["fake", "identity_acc[named, memory-only]"] == 1.0 and board.loc["fake", "stories"] == 2
    assert board.loc["fake", "identity_acc"] == 1.0  # the normal columns hold the normal run only
    again = CaptionReader()
    assert run_benchmark(["fake"], caption_stories(), store, META, scoring, generate=again, progress=False,
                         variant=MEMORY_ONLY)["done"] == 0
    # a variant is comparable with the normal run, or refused: one protocol across both folders
    first = RowStore(tmp_path / "memory-first")
    run_benchmark(["fake"], caption_stories(1), first, META, scoring, generate=again, progress=False, variant=MEMORY_ONLY)
    with pytest.raises(ValueError, match="another protocol"):
        run_benchmark(["fake"], caption_stories(1), first, RunMeta(**{**META.__dict__, "seed": 1}), scoring,
                      generate=again, progress=False)


def test_run_memory_only_flag_reaches_the_runner(tmp_path, monkeypatch):
    import benchmark.runner as runner_mod

    seen = []
    monkeypatch.setattr(runner_mod, "run_benchmark", lambda *a, **k: seen.append(k["variant"]) or {"done": 0, "skipped": 0})
    for flag, variant in (([], ""), (["--memory-only"], "memory-only")):
        argv = ["run", "--method", "ground_truth", "--limit", "1", "--metrics", "fps", "--results", str(tmp_path),
                "--quiet", "--no-report", *flag]
        assert bench_main(argv) == 0
        assert seen[-1] == variant


@pytest.mark.parametrize("change", [{"steps": "8"}, {"seed": 1}, {"dtype": "bfloat16"}, {"device": "cuda"}])
def test_run_refuses_to_mix_protocols(tmp_path, change):
    store = RowStore(tmp_path)
    scoring = Scoring(metrics=get_metrics(["fps"]))
    run_benchmark(["fake"], make_stories(1), store, META, scoring, generate=FakeMethod(), progress=False)
    other = RunMeta(**{**META.__dict__, **change})
    with pytest.raises(ValueError, match="another protocol"):
        run_benchmark(["fake"], make_stories(2), store, other, scoring, generate=FakeMethod(), progress=False)


def test_rerun_regenerates_stories_scored_with_fewer_metrics_or_an_older_metric_version(tmp_path, monkeypatch):
    store, stories = RowStore(tmp_path), make_stories(2)
    run_benchmark(["fake"], stories, store, META, Scoring(metrics=get_metrics(["fps"])), generate=FakeMethod(),
                  progress=False)
    more = lambda: Scoring(metrics=get_metrics(["fps", "identity_acc"]), probe=ColourProbe())  # noqa: E731
    assert run_benchmark(["fake"], stories, store, META, more(), generate=FakeMethod(), progress=False)["done"] == 2
    assert set(store.read()["metric"]) == {"fps", "identity_acc"}
    # the definition of fps changes: every stored story is stale
    monkeypatch.setitem(METRICS, "fps", dataclasses.replace(METRICS["fps"], version=METRICS["fps"].version + 1))
    bumped = FakeMethod()
    assert run_benchmark(["fake"], stories, store, META, more(), generate=bumped, progress=False)["done"] == 2
    assert bumped.calls == ["story-0", "story-1"]
    assert set(store.read().query("metric == 'fps'")["metric_version"]) == {METRICS["fps"].version}
    # and now it is all current: nothing to do
    assert run_benchmark(["fake"], stories, store, META, more(), generate=FakeMethod(), progress=False)["done"] == 0


# --- score: external mp4s and manifests ---------------------------------------------------------


def write_video(path: Path, frames: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, frames, fps=8, codec="libx264")  # written outside the project's generator


@pytest.fixture
def external(tmp_path):
    return make_external(tmp_path)


def make_external(tmp_path: Path) -> Path:
    """Two stories of mp4s from 'another system': one mp4 per shot, and one mp4 per story."""
    root = tmp_path / "videos"
    write_video(root / "a" / "shot0.mp4", solid("red", frames=5, size=64))
    write_video(root / "a" / "shot1.mp4", solid("red", frames=5, size=64, seed=1))
    write_video(root / "b.mp4", np.concatenate([solid("blue", 4, 64), solid("yellow", 5, 64), solid("blue", 3, 64)]))
    (root / "b_prompts.json").write_text(json.dumps(
        {"global_caption": "colours", "shot1": "a blue square", "shot2": "a yellow square", "shot3": "a blue square"}))
    manifest = {"method": "other-system", "stories": [
        {"id": "a", "shots": [{"video": "a/shot0.mp4", "caption": "a red square", "labels": {"pronoun": False}},
                              {"video": "a/shot1.mp4", "caption": "it is a red square", "labels": {"pronoun": True}}]},
        {"id": "b", "video": "b.mp4", "shot_starts": [0, 4, 9], "prompts": "b_prompts.json"}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_score_external_mp4s_through_the_cli(tiny_clip, external, tmp_path, capsys):
    _, clip_dir = tiny_clip
    results = tmp_path / "results"
    code = bench_main(["score", "--manifest", str(external / "manifest.json"), "--results", str(results),
                       "--clip", str(clip_dir), "--metrics", "clip_text,inter_shot_identity,intra_shot_consistency",
                       "--quiet"])
    assert code == 0, capsys.readouterr().err
    rows = pd.read_csv(results / "rows.csv")
    assert set(rows["story"]) == {"a", "b"} and set(rows["method"]) == {"other-system"}
    b = rows[(rows["story"] == "b") & (rows["metric"] == "clip_text")]
    assert list(b["shot"]) == [0, 1, 2] and not b["value"].isna().any()
    assert set(rows[(rows["story"] == "a") & (rows["metric"] == "inter_shot_identity")]["subset"]) == {"pronoun"}
    board = pd.read_csv(results / "leaderboard.csv")
    assert list(board["method"]) == ["other-system"] and board.loc[0, "failures"] == 0
    assert board.loc[0, "encoder"].startswith("ShotStream-CLIP-tiny@")
    assert (results / "REPORT.md").is_file() and (results / "plots" / "clip_text.png").is_file()
    # Frames of shot 1 of story b are yellow: their caption beats the wrong one.
    m = load_manifest(external / "manifest.json")
    frames = m.stories[1].load_frames()
    assert [len(f) for f in frames] == [4, 5, 3]


BAD_MANIFESTS = {
    "missing file": ({"id": "x", "shots": [{"video": "nope.mp4", "caption": "c"}]}, r"stories\[\d\] \(id 'x'\).*nope.mp4.*not found"),
    "shot count vs prompts": ({"id": "x", "video": "b.mp4", "shot_starts": [0, 4], "prompts": "b_prompts.json"},
                              r"id 'x'.*2 shots but the prompts file has 3"),
    "shot count vs captions": ({"id": "x", "video": "b.mp4", "shot_starts": [0, 4], "captions": ["a", "b", "c"]},
                               r"id 'x'.*2 shots in shot_starts but 3 captions"),
    "starts past the video": ({"id": "x", "video": "b.mp4", "shot_starts": [0, 50], "captions": ["a", "b"]},
                              r"id 'x'.*go past the video's 12 frames"),
    "unreadable video": ({"id": "x", "shots": [{"video": "junk.mp4", "caption": "c"}]}, r"id 'x'.*junk.mp4: unreadable video"),
    "escaping with ..": ({"id": "x", "shots": [{"video": "../outside.mp4", "caption": "c"}]}, r"id 'x'.*escapes the manifest folder"),
    "escaping absolute": ({"id": "x", "shots": [{"video": "ABS", "caption": "c"}]}, r"id 'x'.*escapes the manifest folder"),
    "empty caption": ({"id": "x", "shots": [{"video": "a/shot0.mp4", "caption": "a"}, {"video": "a/shot1.mp4", "caption": " "}]},
                      r"id 'x'.*empty caption for shot\(s\) \[1\]"),
    "one-frame shot": ({"id": "x", "shots": [{"video": "a/shot0.mp4", "caption": "a"}, {"video": "one.mp4", "caption": "b"}]},
                       r"id 'x'.*shots\[1\]\.video 'one.mp4' has 1 frame\(s\); a shot needs at least 2"),
    "one-frame shot in shot_starts": ({"id": "x", "video": "b.mp4", "shot_starts": [0, 1, 4], "captions": ["a", "b", "c"]},
                                      r"id 'x'.*shot 0 of shot_starts \[0, 1, 4\] has 1 frame\(s\)"),
    "one-frame last shot": ({"id": "x", "video": "b.mp4", "shot_starts": [0, 4, 11], "captions": ["a", "b", "c"]},
                            r"id 'x'.*the last shot \(frames 11..11 of 'b.mp4'\) has 1 frame\(s\)"),
    "PNG renamed .mp4": ({"id": "x", "shots": [{"video": "shot0.mp4", "caption": "c"}]},
                         r"id 'x'.*shot0.mp4: unreadable video \(a PNG image named as a video\)"),
}


def write_bad_inputs(root: Path) -> None:
    """The broken files BAD_MANIFESTS points at, beside the good external videos."""
    (root / "junk.mp4").write_text("this is not a video")
    write_video(root / "one.mp4", solid("red", frames=1, size=64))
    (root / "shot0.mp4").write_bytes(iio.imwrite("<bytes>", solid("red", frames=1, size=64)[0], extension=".png"))


@pytest.fixture(scope="module")
def scored_results(tiny_clip, tmp_path_factory):
    """A results folder already holding rows + leaderboard of the external videos."""
    root = tmp_path_factory.mktemp("scored")
    videos = make_external(root)
    results = root / "results"
    argv = ["score", "--manifest", str(videos / "manifest.json"), "--results", str(results),
            "--clip", str(tiny_clip[1]), "--metrics", "clip_text", "--quiet"]
    assert bench_main(argv) == 0
    return results


@pytest.mark.parametrize("last", [False, True], ids=["bad-first", "bad-last"])
@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_bad_manifest_is_one_clear_error_and_leaves_results_untouched(case, last, tiny_clip, scored_results, external,
                                                                       tmp_path, capsys):
    _, clip_dir = tiny_clip
    results = tmp_path / "results"
    shutil.copytree(scored_results, results)
    args = ["--results", str(results), "--clip", str(clip_dir), "--metrics", "clip_text", "--quiet"]
    assert (results / "leaderboard.csv").is_file()
    before = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    write_video(tmp_path / "outside.mp4", solid("red", 3, 64))
    write_bad_inputs(external)
    entry, pattern = BAD_MANIFESTS[case]
    entry = json.loads(json.dumps(entry).replace("ABS", str(tmp_path / "outside.mp4")))
    good = json.loads((external / "manifest.json").read_text())["stories"]
    bad = external / "bad.json"
    # bad entry first, or last: after the good stories, which must not be scored before it is seen
    stories = [*good, entry] if last else [entry, *good]
    bad.write_text(json.dumps({"method": "other-system", "stories": stories}))
    capsys.readouterr()
    assert bench_main(["score", "--manifest", str(bad), "--method", "third", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(pattern, err), err
    assert f"stories[{len(good) if last else 0}]" in err  # names the entry by its position
    after = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    assert after == before


def test_bad_manifest_is_refused_before_any_row_when_a_later_entry_is_bad(external, tmp_path):
    good = json.loads((external / "manifest.json").read_text())["stories"]
    (external / "junk.mp4").write_text("not a video")
    bad = external / "late.json"
    bad.write_text(json.dumps({"stories": [*good, {"id": "z", "shots": [{"video": "junk.mp4", "caption": "c"}]}]}))
    store = RowStore(tmp_path / "results")
    with pytest.raises(ManifestError, match="id 'z'"):
        score_manifest(load_manifest(bad), "m", store, META, Scoring(metrics=get_metrics(["intra_shot_consistency"]),
                                                                      embed=pixel_embed), progress=False)
    assert store.read().empty


@pytest.mark.parametrize("change", ["video re-encoded", "caption edited", "labels edited"])
def test_score_rescores_only_the_story_whose_shot_4_changed_and_replaces_its_rows(change, tmp_path):
    root = tmp_path / "videos"
    colours = ["red", "green", "blue", "yellow", "red"]
    for k, c in enumerate(colours):
        write_video(root / "a" / f"shot{k}.mp4", solid(c, frames=3, size=32, seed=k))
    write_video(root / "b.mp4", np.concatenate([solid("blue", 3, 32), solid("red", 3, 32)]))
    manifest = {"method": "m", "stories": [
        {"id": "a", "shots": [{"video": f"a/shot{k}.mp4", "caption": f"a {c} square"} for k, c in enumerate(colours)]},
        {"id": "b", "video": "b.mp4", "shot_starts": [0, 3], "captions": ["a blue square", "it turns red"]}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    store = RowStore(tmp_path / "results")
    scoring = Scoring(metrics=get_metrics(["inter_shot_identity", "intra_shot_consistency"]), embed=pixel_embed,
                      localiser=WholeFrame())
    score = lambda: score_manifest(load_manifest(root / "manifest.json"), "m", store, META, scoring, progress=False)  # noqa: E731
    assert score() == {"done": 2, "skipped": 0}
    before, b_file = store.read(), store.story_file("m", "b").read_bytes()
    if change == "video re-encoded":
        write_video(root / "a" / "shot4.mp4", solid((255, 255, 255), frames=3, size=32, seed=9))
    elif change == "caption edited":
        manifest["stories"][0]["shots"][4]["caption"] = "it is a red square again"
    else:
        manifest["stories"][0]["shots"][4]["labels"] = {"pronoun": True}
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert score() == {"done": 1, "skipped": 1}
    after = store.read()
    assert store.story_file("m", "b").read_bytes() == b_file  # the unchanged story is untouched
    a_before, a_after = before[before["story"] == "a"], after[after["story"] == "a"]
    assert len(a_after) == len(a_before) and not a_after.duplicated(["shot", "metric"]).any()
    assert a_after["inputs"].nunique() == 1 and a_after["inputs"].iloc[0] != a_before["inputs"].iloc[0]
    shot4 = lambda df: df[(df["shot"] == 4) & (df["metric"] == "inter_shot_identity")].iloc[0]  # noqa: E731
    if change == "video re-encoded":  # the stored score is the new video's, and it moved
        fresh = score_story(StoryOutput("a", ["c"] * 5, load_manifest(root / "manifest.json").stories[0].load_frames(),
                                        [None] * 5), get_metrics(["inter_shot_identity"]), embed=pixel_embed,
                            localiser=WholeFrame())
        assert shot4(a_after)["value"] == pytest.approx(values(fresh, "inter_shot_identity")[(4, "")], abs=1e-6)
        assert shot4(a_after)["value"] != pytest.approx(shot4(a_before)["value"], abs=1e-2)
    if change == "labels edited":
        assert (shot4(a_before)["subset"], shot4(a_after)["subset"]) == ("", "pronoun")
    assert score() == {"done": 0, "skipped": 2}  # and nothing more to do


def test_official_prompt_json_empty_global_caption_and_list_form_in_every_command(tmp_path):
    """One reader (shotstream.world.load_stories) behind generate --story, run --suite, run --stories
    and a manifest's prompts: the same file means the same story everywhere."""
    from benchmark.cli import _load_stories
    from benchmark.runner import check_prompts, story_view
    from benchmark.suite import load_suite
    from shotstream.generate import resolve_story

    one = tmp_path / "one.json"
    one.write_text(json.dumps({"global_caption": "", "shot1": "a red square", "shot2": "it jumps"}))
    many = tmp_path / "many.json"
    many.write_text(json.dumps([{"global_caption": " ", "shot1": "a"}, {"global_caption": "a tale", "shot1": "b", "shot2": "c"}]))
    stories, suite = _load_stories(str(one))  # run --stories
    assert suite == "one" and stories == [{"id": "one", "global_caption": "",
                                           "shots": [{"caption": "a red square"}, {"caption": "it jumps"}]}]
    stories, _ = _load_stories(str(many))
    assert [(s["id"], s["global_caption"], len(s["shots"])) for s in stories] == [("many:0", "", 1), ("many:1", "a tale", 2)]
    for i, s in enumerate(stories):
        check_prompts(story_view(s, i))  # what run checks before generating: no empty global caption left
    views, _ = load_suite(str(many))  # run --suite
    assert [(v.global_caption, v.captions) for v in views] == [("", ["a"]), ("a tale", ["b", "c"])]
    assert resolve_story(str(one)).global_caption is None  # generate --story
    assert resolve_story(f"{many}:1").captions == ["b", "c"]
    write_video(tmp_path / "v.mp4", solid("red", 4, 32))  # score: a manifest entry's prompts
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"stories": [{"id": "s", "video": "v.mp4", "shot_starts": [0, 2], "prompts": "one.json"}]}))
    (story,) = load_manifest(manifest).stories
    assert (story.global_caption, story.captions) == ("", ["a red square", "it jumps"])
    manifest.write_text(json.dumps({"stories": [{"id": "s", "video": "v.mp4", "shot_starts": [0, 2], "prompts": "many.json"}]}))
    with pytest.raises(ManifestError, match=r"id 's'.*many.json: holds 2 stories"):
        load_manifest(manifest)
    many.write_text(json.dumps([{"global_caption": "g", "shot1": " "}]))  # the reader's own checks apply too
    manifest.write_text(json.dumps({"stories": [{"id": "s", "video": "v.mp4", "shot_starts": [0], "prompts": "many.json"}]}))
    with pytest.raises(ManifestError, match=r"id 's'.*many.json: \[0\]\.shot1: empty caption"):
        load_manifest(manifest)


# --- report -------------------------------------------------------------------------------------


def test_report_failure_leaves_previous_leaderboard_intact(tmp_path, monkeypatch):
    store = RowStore(tmp_path)
    scoring = Scoring(metrics=get_metrics(), embed=pixel_embed, probe=ColourProbe())
    run_benchmark(["fake", "fake-2"], make_stories(2), store, META, scoring, generate=FakeMethod(), progress=False)
    write_report(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.glob("*.*")}
    assert set(p.name for p in before) == {"rows.csv", "leaderboard.csv", "REPORT.md"}
    assert (tmp_path / "plots" / "chunk_time_vs_shot.png").is_file()
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert list(board["method"]) == ["fake", "fake-2"] and (board["suite"] == "unit").all()
    assert board.loc[0, "chunk_time_growth"] == pytest.approx(1.0)

    run_benchmark(["fake-3"], make_stories(1), store, META, scoring, generate=FakeMethod(), progress=False)

    def boom(*a, **k):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(report_mod, "make_plots", boom)
    with pytest.raises(RuntimeError):
        write_report(tmp_path)
    assert {p: p.read_bytes() for p in tmp_path.glob("*.*")} == before
    assert not list(tmp_path.glob(".report-*"))


def test_report_compares_speed_with_the_teacher_and_inlines_perf_pages(tmp_path):
    board = pd.DataFrame({"method": ["student", "teacher", "ground_truth"],
                          "latency_first_frame_s": [0.2, 10.0, np.nan], "fps": [30.0, 3.0, np.nan],
                          "chunk_time_growth": [1.01, 1.5, np.nan]})
    ratios = report_mod.speed_ratios(board)
    assert list(ratios["method"]) == ["student"]  # the reference and untimed rows are not compared
    assert ratios.iloc[0].tolist()[1:] == pytest.approx([50.0, 10.0, 1.01])
    assert report_mod.speed_ratios(board[board["method"] != "teacher"]).empty

    store = RowStore(tmp_path)
    run_benchmark(["fake"], make_stories(1), store, META, Scoring(metrics=get_metrics(["fps"])),
                  generate=FakeMethod(), progress=False)
    (tmp_path / "perf").mkdir()
    (tmp_path / "perf" / "profile.md").write_text("# Profile of one streamed shot\n\n| phase | ms |\n")
    report = write_report(tmp_path)["REPORT.md"].read_text()
    assert "\n## Profile of one streamed shot\n" in report and "| phase | ms |" in report


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_help_documents_every_metric(capsys):
    with pytest.raises(SystemExit):
        bench_main(["--help"])
    out = capsys.readouterr().out
    for m in METRICS.values():
        assert m.name in out


def test_cli_user_errors_are_one_line_exit_2(tmp_path, capsys):
    prompts = tmp_path / "story.json"
    prompts.write_text(json.dumps({"global_caption": "g", "shot1": "a", "shot2": "b"}))
    empty = tmp_path / "empty_shot.json"
    empty.write_text(json.dumps({"global_caption": "g", "shot1": "a", "shot2": "  "}))
    cases = [["run", "--method", "shotstream", "--stories", str(prompts), "--results", str(tmp_path / "r"), "--quiet",
              "--metrics", "fps"],
             ["run", "--method", "student", "--stories", str(empty), "--results", str(tmp_path / "r"), "--quiet"],
             ["run", "--method", "x", "--suite", "storyworld-test"],
             ["score", "--manifest", str(tmp_path / "none.json")],
             ["report", "--results", str(tmp_path / "empty")]]
    for argv in cases:
        assert bench_main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"shotstream-bench {argv[0]}: error:"), err
    assert not (tmp_path / "r" / "rows").exists()  # the failed generation wrote nothing


def test_streaming_generator_releases_a_methods_models():
    from benchmark.runner import StreamingGenerator

    gen = StreamingGenerator({"a": Path("models/a"), "codec": Path("models/ae")})
    gen._pipes = {("a", "cpu", "float32"): object(), ("a", "cpu", "bfloat16"): object(),
                  ("b", "cpu", "float32"): object(), ("models/ae", "cpu", "codec"): object()}
    gen.release("a")
    gen.release("codec")
    assert list(gen._pipes) == [("b", "cpu", "float32")]
