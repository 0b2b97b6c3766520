"""Parity: the project's WanDiT against diffusers' WanTransformer3DModel, the same random weights
(diffusers' names renamed to Wan's by `wan_state_from_diffusers`), bidirectional forward in fp32."""

import pytest
import torch

from shotstream.checkpoint import CheckpointError
from shotstream.config import ModelConfig
from shotstream.model.dit import FrameInfo, WanDiT
from shotstream.model.loading import load_official, wan_state_from_diffusers

diffusers = pytest.importorskip("diffusers")

HEADS, HEAD_DIM, TEXT_DIM, CHANNELS = 2, 24, 12, 4


def random_diffusers_transformer(seed: int = 0, num_layers: int = 2):
    """A tiny WanTransformer3DModel, every weight random (Wan's init zeroes the output head)."""
    torch.manual_seed(seed)
    model = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=CHANNELS,
        out_channels=CHANNELS, text_dim=TEXT_DIM, freq_dim=256, ffn_dim=80, num_layers=num_layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def wan_dit(num_layers: int = 2) -> WanDiT:
    cfg = ModelConfig(dim=HEADS * HEAD_DIM, ffn_dim=80, num_heads=HEADS, num_layers=num_layers, text_dim=TEXT_DIM,
                      text_len=7, text_mask=False)
    return WanDiT(cfg, CHANNELS).eval()


# Wan (and WanDiT) take the timestep's sinusoid in fp64, diffusers in fp32: at t = 900 its angles
# are off by ~900 * 6e-8, which moves the output by ~4e-5. Small timesteps isolate the network.
@pytest.mark.parametrize("timesteps, tol", [((0.0, 1.0), 1e-5), ((900.0, 250.0), 1e-4)])
def test_wandit_matches_diffusers_wan_transformer(timesteps, tol):
    theirs = random_diffusers_transformer()
    ours = load_official(wan_dit(), "diffusers", wan_state_from_diffusers(theirs.state_dict()))  # strict on names and shapes
    g = torch.Generator().manual_seed(1)
    B, F, H, W = 2, 3, 6, 8
    x, text = torch.randn(B, F, CHANNELS, H, W, generator=g), torch.randn(B, 7, TEXT_DIM, generator=g)
    t = torch.tensor(timesteps)
    with torch.no_grad():
        expected = theirs(x.transpose(1, 2), t, text, return_dict=False)[0].transpose(1, 2)  # [B, C, F, H, W] there
        got = ours(x, t[:, None].expand(B, F), text[:, None], torch.ones(B, 1, 7, dtype=torch.bool),
                   FrameInfo.build(range(F), [0] * F, batch=B))
    assert expected.abs().mean() > 0.1  # (a zero head would match anything)
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


def test_every_diffusers_name_maps_to_a_wan_name_and_back():
    state = random_diffusers_transformer(num_layers=3).state_dict()
    renamed = wan_state_from_diffusers(state)
    assert set(renamed) == set(wan_dit(3).state_dict())
    assert all(renamed[k] is v for k, v in zip(renamed, state.values()))  # renamed, not copied or changed


def test_an_unknown_diffusers_name_is_reported():
    state = wan_state_from_diffusers(random_diffusers_transformer().state_dict() | {"condition_embedder.extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="condition_embedder.extra.weight"):
        load_official(wan_dit(), "transformer", state)
