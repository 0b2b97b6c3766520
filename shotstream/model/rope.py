"""3D rotary position embedding (Wan2.1 layout) and the RoPE discontinuity indicator.

The head dimension is split into complex pairs; Wan gives the temporal band
`(d - 4 * (d // 6)) / 2` pairs and the height and width bands `d // 6` pairs each. A pair j of
band b at position p is rotated by angle `p * w_j` with `w_j = theta ** (-2j / d_b)`.

ShotStream's discontinuity indicator adds `shot_flag * phi` to every *temporal* angle (same phase
on every temporal frequency, height and width untouched, no parameters). The attention logit
between a query of shot k and a key of shot i therefore gains a rotation of `(k - i) * phi` on
each temporal pair: frames of the same shot are unaffected, frames across a cut are marked.
"""

from __future__ import annotations

import torch


def rope_bands(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs per band (temporal, height, width), as in Wan2.1."""
    hw = head_dim // 6
    t = (head_dim - 4 * hw) // 2
    return t, hw, hw


def band_frequencies(pairs: int, theta: float = 10000.0) -> torch.Tensor:
    """w_j = theta^(-2j / d_band) for j < pairs, where d_band = 2 * pairs (float64)."""
    return theta ** (-torch.arange(pairs, dtype=torch.float64) * 2 / (2 * pairs))


def rope_shot_phase(shot_flags: torch.Tensor, phi: float) -> torch.Tensor:
    """The indicator's extra temporal angle for each frame: shot_flag * phi (radians)."""
    return shot_flags.to(torch.float64) * phi


def rope_angles(
    frame_pos: torch.Tensor,
    shot_flags: torch.Tensor,
    grid: tuple[int, int],
    head_dim: int,
    theta: float = 10000.0,
    phi: float = 0.0,
) -> torch.Tensor:
    """Rotation angle of every token and complex pair.

    frame_pos, shot_flags: [B, F] temporal position and shot index of each latent frame.
    grid: (h, w) patch grid of a frame. Returns float64 [B, F*h*w, head_dim // 2] in the order
    (temporal pairs, height pairs, width pairs), tokens flattened frame-major like the patches.
    """
    bt, bh, bw = rope_bands(head_dim)
    h, w = grid
    B, F = frame_pos.shape
    t_ang = (frame_pos.to(torch.float64)[..., None] * band_frequencies(bt, theta).to(frame_pos.device)
             + rope_shot_phase(shot_flags, phi)[..., None])  # [B, F, bt]
    h_ang = torch.arange(h, dtype=torch.float64, device=frame_pos.device)[:, None] * band_frequencies(bh, theta).to(frame_pos.device)
    w_ang = torch.arange(w, dtype=torch.float64, device=frame_pos.device)[:, None] * band_frequencies(bw, theta).to(frame_pos.device)
    angles = torch.cat(
        [
            t_ang[:, :, None, None, :].expand(B, F, h, w, bt),
            h_ang[None, None, :, None, :].expand(B, F, h, w, bh),
            w_ang[None, None, None, :, :].expand(B, F, h, w, bw),
        ],
        dim=-1,
    )  # [B, F, h, w, head_dim/2]
    return angles.reshape(B, F * h * w, head_dim // 2)


def rope_phasors(angles: torch.Tensor) -> torch.Tensor:
    """e^(i * angle) as complex64 (Wan's `freqs`), shaped [B, 1, N, head_dim/2] to broadcast over heads."""
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)[:, None]


def apply_rope(x: torch.Tensor, phasors: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs (x[2j], x[2j+1]) of x [B, H, N, Dh], read as complex numbers as in
    Wan, in fp32: one complex product (a real-valued rotation took ~6x as long on a CPU)."""
    rotated = torch.view_as_complex(x.float().unflatten(-1, (-1, 2))) * phasors
    return torch.view_as_real(rotated).flatten(-2).to(x.dtype)
