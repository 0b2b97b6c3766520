"""TextEncoder with the real all-MiniLM-L6-v2 weights (offline) and a tiny random T5 encoder."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from shotstream.text_encoder import NULL_CAPTION, TextEncoder, check_caption, text_dropout


@pytest.fixture(scope="module")
def enc():
    return TextEncoder(max_len=64)


def _mean_pool(states, mask):
    m = mask[..., None].float()
    return (states * m).sum(1) / m.sum(1)


def test_minilm_shapes_mask_and_zero_padding(enc):
    states, mask = enc.encode(["a red circle", "a blue square jumps over the green triangle"])
    assert enc.dim == 384
    assert states.shape == (2, 64, 384) and states.dtype == torch.float32
    assert mask.shape == (2, 64) and mask.dtype == torch.bool
    # [CLS] a red circle [SEP] = 5 tokens; the mask counts tokens and is a prefix.
    assert mask[0].sum() == 5 and mask[0, :5].all() and not mask[0, 5:].any()
    assert mask[1].sum() > mask[0].sum()
    assert (states[~mask] == 0).all() and (states[mask].abs().sum(-1) > 0).all()


def test_similar_captions_are_closer(enc):
    states, mask = enc.encode(
        ["a red circle moves to the left", "a red ball moving left", "the quarterly tax report is overdue"]
    )
    p = _mean_pool(states, mask)
    close = F.cosine_similarity(p[0], p[1], dim=0)
    far = F.cosine_similarity(p[0], p[2], dim=0)
    assert close > far + 0.2, (float(close), float(far))


def test_cache_hit_is_identical_and_free(enc):
    a, ma = enc.encode(["a small purple star spins"])
    misses, hits = enc.cache_misses, enc.cache_hits
    b, mb = enc.encode(["a small purple star spins", "a small purple star spins"])
    assert enc.cache_misses == misses and enc.cache_hits == hits + 2
    assert torch.equal(a[0], b[0]) and torch.equal(a[0], b[1]) and torch.equal(ma[0], mb[1])
    b.add_(1.0)  # callers get copies: mutating one does not corrupt the cache
    c, _ = enc.encode(["a small purple star spins"])
    assert torch.equal(a, c)


def test_states_do_not_depend_on_the_batch_a_caption_came_in():
    """Exact resume: a cold cache must rebuild the states a warm run encoded in another batch."""
    caption = "a tall orange triangle walks right in a snowy forest"
    others = [f"a {c} circle number {i} spins in the desert" for i, c in enumerate(["red", "blue"] * 9)]
    batched, _ = TextEncoder(max_len=64).encode(others + [caption])
    alone, _ = TextEncoder(max_len=64).encode([caption])
    assert torch.equal(batched[-1], alone[0])


def test_cache_is_bounded():
    small = TextEncoder(max_len=16, cache_size=2)
    for cap in ("one", "two", "three"):
        small.encode([cap])
    assert len(small._cache) == 2 and "one" not in small._cache


def test_long_caption_truncated_with_warning(enc):
    prompt = "a very long prompt " * 527  # ~10,000 characters
    assert len(prompt) > 10_000
    with pytest.warns(UserWarning, match=r"truncated from \d+ to 64 tokens \(\d+ dropped\)"):
        states, mask = enc.encode([prompt])
    assert states.shape == (1, 64, 384) and mask.all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc.encode([prompt])  # cached: no second warning, no work


def test_unread_is_the_text_past_the_tokens_the_encoder_reads():
    short = TextEncoder(max_len=8)  # [CLS] + 6 word pieces + [SEP]
    assert short.unread("a red circle walks left in the snow at night") == "the snow at night"
    assert short.unread("a red circle walks left in") == ""  # exactly 8 tokens: all read
    assert short.unread("a red circle") == ""


@pytest.mark.parametrize(
    "bad, exc, msg",
    [
        ("", ValueError, "empty prompt"),
        ("   \n\t", ValueError, "empty prompt"),
        (b"\xff\xfe caption", ValueError, "UTF-8"),
        ("bad \udcff surrogate", ValueError, "Unicode"),
        (42, TypeError, "got int"),
        (None, TypeError, "got NoneType"),
    ],
)
def test_bad_captions_raise(enc, bad, exc, msg):
    with pytest.raises(exc, match=msg):
        enc.encode([bad])


def test_bad_caption_lists_raise(enc):
    with pytest.raises(TypeError, match="list of str"):
        enc.encode("a bare string is not a list")
    with pytest.raises(ValueError, match="empty list"):
        enc.encode([])
    assert check_caption("caf\u00e9".encode("utf-8")) == "caf\u00e9"  # UTF-8 bytes are fine


def test_null_caption_and_text_dropout(enc):
    null, null_mask = enc.null_caption(batch_size=3)
    assert null.shape == (3, 64, 384) and null_mask.sum(1).tolist() == [2, 2, 2]  # [CLS] [SEP]
    ref, _ = enc._encode_texts([NULL_CAPTION])
    assert torch.equal(null[1], ref[0])
    states, mask = enc.encode(["a", "b", "c", "d"])
    out, out_mask, dropped = text_dropout(states, mask, *enc.null_caption(), p=0.5,
                                          generator=torch.Generator().manual_seed(0))
    assert 0 < int(dropped.sum()) < 4
    for i in range(4):
        want, want_mask = (null[0], null_mask[0]) if dropped[i] else (states[i], mask[i])
        assert torch.equal(out[i], want) and torch.equal(out_mask[i], want_mask)
    assert text_dropout(states, mask, *enc.null_caption(), p=0.0)[2].sum() == 0
    with pytest.raises(ValueError, match="probability"):
        text_dropout(states, mask, *enc.null_caption(), p=1.5)


def test_tiny_t5_encoder_loads_through_path(enc, tmp_path):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=enc.tokenizer.vocab_size, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                   num_decoder_layers=0, pad_token_id=0)
    T5EncoderModel(cfg).save_pretrained(tmp_path)
    enc.tokenizer.save_pretrained(tmp_path)  # reuse MiniLM's tokenizer for the random T5
    t5 = TextEncoder(path=tmp_path, max_len=16)
    assert type(t5.model).__name__ == "T5EncoderModel" and t5.dim == 32
    states, mask = t5.encode(["a red circle", "a blue square"])
    assert states.shape == (2, 16, 32) and mask.sum(1).tolist() == [5, 5]
    assert (states[~mask] == 0).all() and torch.isfinite(states).all()


def test_missing_path_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="text encoder folder not found"):
        TextEncoder(path=tmp_path / "nope")
    with pytest.raises(ValueError, match="positions"):
        TextEncoder(max_len=4096)
