"""ShotStreamSession: streaming chunks, next-shot prompts mid-stream, bounded memory, bad input."""

import dataclasses
import threading

import numpy as np
import pytest
import torch

from helpers import VIDEO, FakeTextEncoder, make_pipe
from shotstream import flow_matching as fm
from shotstream.config import VideoConfig
from shotstream.model.memory import select_context_frames
from shotstream.conditioning import generate_shot_bidirectional
from shotstream.session import ShotStreamPipeline, clean_prompt
from shotstream.video import to_model_video

def test_stream_yields_decoded_chunks_in_order():
    session = make_pipe().session(seed=1)
    session.submit("a red circle walks left in the forest")
    chunks = list(session.stream())
    assert [c.chunk for c in chunks] == [0, 1, 2]
    assert [len(c.frames) for c in chunks] == [1 + 4, 8, 4]  # first latent frame decodes to 1 frame
    assert chunks[-1].last and not chunks[0].last
    assert all(c.frames.dtype == np.uint8 and c.frames.shape[1:] == (32, 32, 3) for c in chunks)
    assert all(c.t_submit <= c.t_start <= c.t_ready for c in chunks)
    assert len(session.shots) == 1 and session.shots[0].frames.shape[0] == 17


def test_next_prompt_submitted_mid_stream_is_generated_without_regenerating_the_past():
    session = make_pipe().session(seed=1)
    session.submit("a red circle walks left in the forest")
    seen = []
    for chunk in session.stream():
        seen.append(chunk.shot)
        if chunk.shot == 0 and chunk.chunk == 0:
            session.submit("close-up of it spinning on the beach")
    assert seen == [0, 0, 0, 1, 1, 1]
    first = session.shots[0].frames.copy()
    session.submit("the same character jumps in the city")
    list(session.stream())
    assert np.array_equal(session.shots[0].frames, first)
    assert len(session.shots) == 3


def test_next_shots_history_is_prepared_when_a_shot_ends():
    """Once a shot ends, the next shot's conditional frames are encoded and its global cache written:
    a prompt submitted later starts from there, with the same result as a prompt queued early."""
    session = make_pipe().session(seed=2)
    calls = []
    encode = session.pipe.autoencoder.encode_image
    session.pipe.autoencoder.encode_image = lambda x: calls.append(len(x)) or encode(x)
    session.submit("a red circle walks left")
    list(session.stream())
    assert calls == [6]  # shot 1's 6 conditional frames (the budget), picked from shot 0 right after it
    assert session.memory.global_context.tokens == 6 * session.memory.tokens_per_frame
    session.submit("it jumps")
    list(session.stream())
    # nothing re-encoded for shot 1; shot 2's history prepared after it: frames 0, 8, 16 of each
    # earlier shot, of which shot 0's first and last were shot 1's context already
    assert calls == [6, 4]
    queued = make_pipe().session(seed=2)
    queued.submit("a red circle walks left")
    queued.submit("it jumps")
    list(queued.stream())
    assert np.array_equal(queued.story_frames(), session.story_frames())


def test_the_context_of_a_later_shot_is_its_frames_encoded_afresh():
    """Latents kept from earlier shots' context are the picked frames' own: the same as encoding
    every pick of shot 3's context now."""
    session = make_pipe().session(seed=2)
    for prompt in ["a red circle walks left", "it jumps", "it spins"]:
        session.submit(prompt)
    list(session.stream())
    picks = select_context_frames([len(s.frames) for s in session.shots], session.pipe.config.model.context_frames)
    images = torch.stack([to_model_video(session.shots[s].frames[f:f + 1], "cpu")[0] for s, f in picks])
    fresh = session.pipe.autoencoder.encode_image(images)[:, 0]
    assert {s for s, _ in picks} == {0, 1, 2}
    torch.testing.assert_close(session.prepare_context().context[0], fresh, atol=1e-5, rtol=1e-5)


def test_same_seed_same_story_and_seed_matters():
    def run(seed):
        s = make_pipe().session(seed=seed)
        s.submit("a red circle walks left")
        s.submit("it jumps")
        list(s.stream())
        return s.story_frames()

    a, b, c = run(3), run(3), run(4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_later_shots_see_the_global_context():
    session = make_pipe().session(seed=0)
    for p in ["a red circle walks left", "it jumps", "it spins"]:
        session.submit(p)
    list(session.stream())
    tpf = session.memory.tokens_per_frame
    assert session.memory.global_context.tokens == 6 * tpf  # budget C = 6 frames from shots 0 and 1
    # the history changes the next shot: same prompt and noise, different history
    other = make_pipe().session(seed=0)
    for p in ["a blue square jumps", "it jumps", "it spins"]:
        other.submit(p)
    list(other.stream())
    assert not np.array_equal(session.shots[2].frames, other.shots[2].frames)


def test_memory_and_attention_span_do_not_grow_with_shots():
    session = make_pipe().session(seed=0, max_queue=20)
    spans, original_extend = {}, session.memory.kv.extend

    def spy(layer, k, v):
        if layer == 0:
            spans.setdefault(len(session.shots), []).append(session.memory.kv.length + k.shape[2])
        return original_extend(layer, k, v)

    session.memory.kv.extend = spy
    capacity, nbytes = session.memory.kv.capacity, session.memory.nbytes
    for i in range(20):
        session.submit(f"shot {i} the same character walks")
    list(session.stream())
    assert len(session.shots) == 20
    assert session.memory.kv.capacity == capacity and session.memory.nbytes == nbytes
    # keys attended per forward (global + local + chunk) at shot 20 == at shot 2
    assert spans[19] == spans[1]
    assert max(spans[19]) <= capacity


def test_bidirectional_model_behind_the_same_interface():
    session = make_pipe(kind="bidirectional").session(seed=0)
    session.submit("a red circle walks left")
    session.submit("it jumps")
    chunks = list(session.stream())
    assert [c.shot for c in chunks] == [0, 0, 0, 1, 1, 1]
    assert sum(len(c.frames) for c in chunks if c.shot == 1) == 17


def test_rolling_window_baseline_keeps_history_without_global_cache():
    with pytest.raises(ValueError, match="local_window"):
        make_pipe(kind="rolling").session()
    session = make_pipe(kind="rolling", local_window=4).session(seed=0)
    for p in ["a red circle walks left", "it jumps", "it spins"]:
        session.submit(p)
    # what each chunk finds when it is staged: the frames in the window and its first position
    seen, stage = [], session.memory.stage
    session.memory.stage = lambda n: seen.append((session.memory.local_context.frames, session.memory.next_position)) or stage(n)
    chunks = list(session.stream())
    assert session.memory.global_context.tokens == 0
    assert session.memory.local_context.frames <= 4
    # the window runs on across shots (a new shot's first chunk reads the last shot's frames), and
    # so do the positions (shot k's first frame follows shot k - 1's last)
    F, c = session.pipe.config.video.latent_frames_per_shot, session.pipe.config.model.chunk_frames
    assert [p for _, p in seen] == [k * F + s for k in range(3) for s in range(0, F, c)]
    assert [seen[i][0] > 0 for i, chunk in enumerate(chunks) if chunk.chunk == 0] == [False, True, True]


def test_cancel_mid_shot_keeps_the_story_so_far():
    session = make_pipe().session(seed=0)
    session.submit("a red circle walks left")
    list(session.stream())
    session.submit("it jumps")
    session.submit("it spins")
    for chunk in session.stream():
        if chunk.shot == 1:
            session.cancel()
    assert len(session.shots) == 1 and session.pending == 0
    session.submit("it bounces")  # the session keeps working
    list(session.stream())
    assert len(session.shots) == 2


def test_stream_wait_receives_prompts_from_another_thread():
    session = make_pipe().session(seed=0)
    got = []

    def consume():
        for chunk in session.stream(wait=True):
            got.append(chunk.shot)

    t = threading.Thread(target=consume)
    t.start()
    session.submit("a red circle walks left")
    session.submit("it jumps")
    while len(session.shots) < 2:
        t.join(timeout=0.05)
    session.close()
    t.join(timeout=10)
    assert not t.is_alive() and got == [0, 0, 0, 1, 1, 1]


def test_bad_prompts_are_refused_or_truncated_clearly():
    session = make_pipe().session()
    for bad in ["", "   \n\t"]:
        with pytest.raises(ValueError, match="empty prompt"):
            session.submit(bad)
    with pytest.raises(ValueError, match="UTF-8"):
        session.submit(b"\xff\xfe bad bytes")
    with pytest.raises(TypeError, match="text"):
        session.submit(42)
    with pytest.raises(ValueError, match="not valid Unicode"):  # a lone surrogate (surrogateescape'd argv bytes)
        session.submit("caf\udce9")
    with pytest.warns(UserWarning, match="truncated"):
        session.submit("word " * 2000)  # 10,000 characters
    assert session.pending == 1
    assert clean_prompt("caf\u00e9 ok".encode()) == "caf\u00e9 ok"
    small = make_pipe().session(max_shots=2)
    small.submit("one")
    small.submit("two")
    with pytest.raises(ValueError, match="at most 2 shots"):
        small.submit("three")


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, "7", None, True])
def test_bad_seeds_are_refused(seed):
    with pytest.raises(ValueError, match="seed must be"):
        make_pipe().session(seed=seed)


def test_stream_can_be_resumed_from_other_threads_with_grad_enabled():
    """The Gradio app creates sessions and calls next() on their streams from whichever worker
    thread is free: no grad/inference mode may leak from one thread's chunk into another's."""
    from concurrent.futures import ThreadPoolExecutor
    from itertools import cycle

    def story(threads):
        call = (lambda fn, *a: next(threads).submit(fn, *a).result()) if threads else (lambda fn, *a: fn(*a))
        session = call(lambda: make_pipe().session(seed=2))
        session.submit("a red circle walks left")
        session.submit("it jumps")
        stream, frames = session.stream(), []
        while (chunk := call(next, stream, None)) is not None:
            frames.append(chunk.frames)
        return np.concatenate(frames)

    # no grad / inference mode may be left on in the thread that ran a chunk (it would leak
    # into whatever that worker thread runs next, e.g. the creation of another session's caches)
    worker = ThreadPoolExecutor(max_workers=1)
    session = make_pipe().session(seed=2)
    session.submit("a red circle walks left")
    stream = session.stream()
    while worker.submit(next, stream, None).result() is not None:
        assert worker.submit(lambda: torch.is_grad_enabled() and not torch.is_inference_mode_enabled()).result()
    worker.shutdown()

    reference = story(None)
    pools = [ThreadPoolExecutor(max_workers=1) for _ in range(2)]  # every call on another thread
    threads = cycle(pools)
    for _ in range(3):
        assert np.array_equal(story(threads), reference)
    for p in pools:
        p.shutdown()
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def test_a_model_refuses_an_autoencoder_it_was_not_trained_with(tmp_path):
    from shotstream.autoencoder import TinyVideoAutoencoder
    from shotstream.checkpoint import CheckpointError
    from shotstream.model.loading import save_pretrained

    pipe = make_pipe()
    save_pretrained(pipe.model, pipe.config, tmp_path / "m", kind="causal")
    other = VideoConfig(height=32, width=32, frames_per_shot=17, latent_channels=8)
    TinyVideoAutoencoder(other, base_channels=8).save_pretrained(tmp_path / "autoencoder")
    with pytest.raises(CheckpointError, match="does not match"):
        ShotStreamPipeline.from_pretrained(tmp_path / "m", text_encoder=FakeTextEncoder())
    TinyVideoAutoencoder(VIDEO, base_channels=8).save_pretrained(tmp_path / "autoencoder")
    assert ShotStreamPipeline.from_pretrained(tmp_path / "m", text_encoder=FakeTextEncoder()).kind == "causal"


def test_overlapped_decoding_streams_the_same_story():
    """overlap_decode runs the denoiser one chunk ahead in a worker thread: same frames, same
    order, and a cancelled shot's worker is joined before the session goes on."""
    def story(overlap, kind="causal"):
        pipe = make_pipe(kind, local_window=4) if kind == "rolling" else make_pipe(kind)
        session = pipe.session(seed=2, overlap_decode=overlap)
        for p in ["a red circle walks left", "it jumps", "it spins"]:
            session.submit(p)
        chunks = [(c.shot, c.chunk) for c in session.stream()]
        return chunks, session.story_frames()

    for kind in ("causal", "rolling"):
        (order, frames), (order_ov, frames_ov) = story(False, kind), story(True, kind)
        assert order_ov == order and np.array_equal(frames_ov, frames)

    session = make_pipe().session(seed=0, overlap_decode=True)
    session.submit("a red circle walks left")
    session.submit("it jumps")
    for chunk in session.stream():
        if chunk.shot == 1:
            session.cancel()
    assert len(session.shots) == 1
    assert not any(t.name == "shotstream-run-ahead" for t in threading.enumerate())
    session.submit("it bounces")
    list(session.stream())
    assert len(session.shots) == 2


def test_run_ahead_raises_the_workers_error_and_stops_when_closed():
    from shotstream.session import run_ahead

    def failing():
        yield 1
        raise RuntimeError("denoiser failed")

    it = run_ahead(failing)
    assert next(it) == 1
    with pytest.raises(RuntimeError, match="denoiser failed"):
        next(it)

    made = []

    def endless():
        while True:
            made.append(len(made))
            yield made[-1]

    it = run_ahead(endless, depth=1)
    assert [next(it), next(it)] == [0, 1]
    it.close()  # the consumer stops early: the worker is joined, at most a couple of items ahead
    assert len(made) <= 4 and not any(t.name == "shotstream-run-ahead" for t in threading.enumerate())
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("kind", ["causal", "bidirectional"])
def test_a_bf16_session_streams_the_same_story_as_fp32(kind):
    """Every tensor a session makes follows the model's dtype: bf16 runs end to end and stays
    close to fp32 (a hard-coded float32 somewhere would raise a dtype mismatch here)."""
    stories = []
    for dtype in (torch.float32, torch.bfloat16):
        pipe = make_pipe(kind)
        pipe.model.to(dtype)
        session = pipe.session(seed=3)
        for prompt in ("a red circle walks left", "it spins"):
            session.submit(prompt)
        chunks = list(session.stream())
        assert [c.shot for c in chunks] == [0] * 3 + [1] * 3
        stories.append(session.story_frames().astype(np.float32))
    assert np.abs(stories[0] - stories[1]).mean() < 2  # of 255 (measured 0.1-0.3; another seed: ~100)


def test_a_bf16_pipeline_runs_its_codec_in_bf16_too(tmp_path):
    """Decoding and context encoding are a third of a streamed shot on a CPU: in bf16 they take
    half the time (docs/experiments.md "bf16 inference"). A float32 left in the codec's path
    raises a dtype mismatch here."""
    from shotstream.autoencoder import TinyVideoAutoencoder
    from shotstream.model.loading import save_pretrained

    pipe = make_pipe()
    save_pretrained(pipe.model, pipe.config, tmp_path / "m", kind="causal")
    torch.manual_seed(0)
    TinyVideoAutoencoder(VIDEO, base_channels=8).save_pretrained(tmp_path / "autoencoder")
    stories = []
    for dtype in (torch.float32, torch.bfloat16):
        pipe = ShotStreamPipeline.from_pretrained(tmp_path / "m", text_encoder=FakeTextEncoder(), dtype=dtype)
        assert pipe.autoencoder.dtype == dtype
        conv = pipe.autoencoder.decoder[0].weight  # channels-last: oneDNN skips a reorder per call
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
        session = pipe.session(seed=3)
        for prompt in ("a red circle walks left", "it spins"):  # the second shot encodes the first's frames
            session.submit(prompt)
        list(session.stream())
        stories.append(session.story_frames().astype(np.float32))
    assert np.abs(stories[0] - stories[1]).mean() < 2  # of 255


@pytest.mark.parametrize("context_scale", [1.0, 0.0])
def test_guidance_on_the_context_hides_the_earlier_shots_from_the_unconditional_branch(context_scale):
    # At guidance scale 0 a sample is the unconditional branch's alone. With as much guidance on
    # the context, that branch must not see the context frames; with none (1), both branches do.
    pipe = make_pipe(kind="bidirectional")
    session = pipe.session(seed=0)
    session.submit("a red circle walks left")
    list(session.stream())
    cond = session.conditioning("it jumps")
    other = dataclasses.replace(cond, context=torch.randn_like(cond.context))
    noise, sigmas = torch.randn(1, 5, 12, 4, 4), fm.teacher_sigmas(3, 3.0)
    a, b = (generate_shot_bidirectional(pipe.model, c, noise, sigmas, 0.0, pipe.null_caption(), context_scale=context_scale)
            for c in (cond, other))
    assert torch.equal(a, b) == (context_scale == 0.0)
