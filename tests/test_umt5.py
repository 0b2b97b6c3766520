"""Wan's umT5 text encoder through transformers' UMT5EncoderModel, from both download layouts,
on tiny random weights and a tokenizer built offline."""

import math

import pytest
import torch
import torch.nn.functional as F

from shotstream.text_encoder import TextEncoder, umt5_from_wan

WORDS = "a red blue striped star circle walks runs to the left right in snowy field wide shot close up of same character".split()
LAYERS, HEADS, D_KV, D_MODEL, D_FF, BUCKETS = 2, 4, 8, 32, 48, 32


def write_tokenizer(folder):
    """A T5TokenizerFast (umT5's class) over a few words: unigram, metaspace, '</s>' appended."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"\u2581{w}", -1.0) for w in WORDS]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                    extra_ids=0).save_pretrained(folder)
    return len(vocab)


def random_wan_umt5(vocab: int, seed=0) -> dict:
    """Encoder-only umT5 in Wan's names (models_t5_umt5-xxl-enc-bf16.pth), random weights."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, s=0.3: s * torch.randn(*shape, generator=g)  # noqa: E731
    state = {"token_embedding.weight": r(vocab, D_MODEL, s=1.0), "norm.weight": 1 + r(D_MODEL, s=0.1)}
    for n in range(LAYERS):
        p = f"blocks.{n}."
        state |= {p + "norm1.weight": 1 + r(D_MODEL, s=0.1), p + "norm2.weight": 1 + r(D_MODEL, s=0.1),
                  p + "pos_embedding.embedding.weight": r(BUCKETS, HEADS, s=1.0),
                  p + "ffn.gate.0.weight": r(D_FF, D_MODEL), p + "ffn.fc1.weight": r(D_FF, D_MODEL),
                  p + "ffn.fc2.weight": r(D_MODEL, D_FF)}
        state |= {p + f"attn.{a}.weight": r(HEADS * D_KV, D_MODEL) for a in "qkv"}
        state[p + "attn.o.weight"] = r(D_MODEL, HEADS * D_KV)
    return state


def reference_umt5(state: dict, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """umT5's encoder written from the paper, on Wan's names: RMS norms, unscaled attention with a
    per-layer bidirectional bucketed relative bias (32 buckets, max distance 128), gated-GELU FFN.
    ids, mask [B, L] -> states [B, L, D]."""

    def rms(x, w):
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    L = ids.shape[1]
    rel = torch.arange(L)[None, :] - torch.arange(L)[:, None]  # key - query
    half = BUCKETS // 2  # one half of the buckets per direction
    exact = half // 2
    far = exact + (torch.log(rel.abs().clamp_min(1).float() / exact) / math.log(128 / exact) * (half - exact)).long()
    bucket = (rel > 0).long() * half + torch.where(rel.abs() < exact, rel.abs(), far.clamp_max(half - 1))  # [L, L]
    x = state["token_embedding.weight"][ids]  # [B, L, D]
    for n in range(LAYERS):
        w = {k[len(f"blocks.{n}."):]: v for k, v in state.items() if k.startswith(f"blocks.{n}.")}
        h = rms(x, w["norm1.weight"])
        q, k, v = (torch.einsum("bld,ed->ble", h, w[f"attn.{a}.weight"]).unflatten(-1, (HEADS, D_KV)) for a in "qkv")
        logits = torch.einsum("bqhc,bkhc->bhqk", q, k) + w["pos_embedding.embedding.weight"][bucket].permute(2, 0, 1)
        logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        out = torch.einsum("bhqk,bkhc->bqhc", logits.softmax(-1), v).flatten(2)
        x = x + out @ w["attn.o.weight"].T
        h = rms(x, w["norm2.weight"])
        x = x + (F.gelu(h @ w["ffn.gate.0.weight"].T, approximate="tanh") * (h @ w["ffn.fc1.weight"].T)) @ w["ffn.fc2.weight"].T
    return rms(x, state["norm.weight"])


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    """Wan2.1's original layout: models_t5_umt5-xxl-enc-bf16.pth beside google/umt5-xxl/."""
    root = tmp_path_factory.mktemp("Wan2.1-T2V-tiny")
    vocab = write_tokenizer(root / "google" / "umt5-xxl")
    state = random_wan_umt5(vocab)
    torch.save(state, root / "models_t5_umt5-xxl-enc-bf16.pth")
    return root, state


CAPTIONS = ["a red striped star walks to the left", "close up of the same character"]


def test_wan_umt5_matches_the_reference_encoder(wan_folder):
    """The renamed Wan weights in transformers' UMT5EncoderModel compute umT5 as written down:
    the name map (gate vs fc1, per-layer position bias, norms) is right."""
    root, state = wan_folder
    enc = TextEncoder(root / "models_t5_umt5-xxl-enc-bf16.pth", max_len=16)
    assert type(enc.model).__name__ == "UMT5EncoderModel" and enc.dim == D_MODEL
    states, mask = enc.encode(CAPTIONS)
    assert states.shape == (2, 16, D_MODEL) and mask.sum(1).tolist() == [9, 7]  # words + </s>
    ids = enc.tokenizer(CAPTIONS, padding="max_length", max_length=16, return_tensors="pt")["input_ids"]
    ref = reference_umt5(state, ids, mask)
    torch.testing.assert_close(states[mask], ref[mask], rtol=1e-4, atol=1e-4)
    assert (states[~mask] == 0).all()  # zero padding, as Wan pads its text states


def test_both_layouts_give_the_same_states(wan_folder, tmp_path):
    """The Diffusers layout (text_encoder/ + tokenizer/) and Wan's .pth hold the same model."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    root, state = wan_folder
    config, renamed = umt5_from_wan(state)
    model = UMT5EncoderModel(config)
    model.load_state_dict(renamed)
    model.save_pretrained(tmp_path / "text_encoder")
    AutoTokenizer.from_pretrained(root / "google" / "umt5-xxl").save_pretrained(tmp_path / "tokenizer")
    diffusers_layout = TextEncoder(tmp_path / "text_encoder", max_len=512)  # tokenizer/ found beside it
    original = TextEncoder(root / "models_t5_umt5-xxl-enc-bf16.pth", max_len=512)
    a, mask = diffusers_layout.encode(CAPTIONS)
    b, _ = original.encode(CAPTIONS)
    assert a.shape == (2, 512, D_MODEL)  # padded to Wan's 512 tokens
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_weight_dtype_and_device(wan_folder):
    root, _ = wan_folder
    fp32 = TextEncoder(root / "models_t5_umt5-xxl-enc-bf16.pth", max_len=16, weight_dtype=torch.float32)
    bf16 = TextEncoder(root / "models_t5_umt5-xxl-enc-bf16.pth", max_len=16, weight_dtype=torch.bfloat16, device="cpu")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16 and bf16.model.device.type == "cpu"
    a, mask = fp32.encode(CAPTIONS)
    b, _ = bf16.encode(CAPTIONS)
    assert b.dtype == torch.float32  # the states' dtype is separate from the weights'
    assert F.cosine_similarity(a[mask], b[mask], dim=-1).min() > 0.98  # bf16 rounding, not another model


def test_bad_umt5_inputs_are_clear(wan_folder, tmp_path):
    root, state = wan_folder
    torch.save(state, tmp_path / "alone.pth")  # the .pth without google/umt5-xxl/ beside it
    with pytest.raises(FileNotFoundError, match=r"alone.pth: no tokenizer found \(looked in .*google/umt5-xxl\); pass tokenizer="):
        TextEncoder(tmp_path / "alone.pth")
    assert TextEncoder(tmp_path / "alone.pth", tokenizer=root / "google" / "umt5-xxl", max_len=16).dim == D_MODEL
    broken = dict(state)
    del broken["blocks.1.ffn.fc2.weight"]
    torch.save(broken, root / "broken.pth")
    from shotstream.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match=r"missing keys \[encoder.block.1.layer.1.DenseReluDense.wo.weight\]"):
        TextEncoder(root / "broken.pth")
    torch.save({"something": torch.zeros(1)}, root / "other.pth")
    with pytest.raises(CheckpointError, match="not Wan's umT5 encoder weights"):
        TextEncoder(root / "other.pth")
