"""Flow matching (rectified flow) as pure functions: schedules, noising, targets and samplers.

Convention (Wan2.1's):

    x_t = (1 - sigma) * x0 + sigma * noise        sigma in [0, 1], sigma = 1 is pure noise
    v   = noise - x0                              what the network predicts
    t   = 1000 * sigma                            the timestep the network is told

Nothing here keeps state between calls (no step index, no scheduler object): a sigma list is a
plain 1-D tensor, and every sampler takes it as an argument. diffusers' schedulers leak a
`_step_index` between uses; this module cannot.

Shapes: `x` is any tensor whose leading dims are [B] or [B, F] (latents are [B, F, C, h, w]);
`sigma` is a float, or a tensor of shape [B] (one level per sample) or [B, F] (one per frame,
as in block-causal training where frames of a chunk carry their own noise level).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

TIMESTEP_SCALE = 1000.0  # model timestep t = 1000 * sigma

SigmaLike = float | torch.Tensor
DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, sigma [B]) -> v


# ---------------------------------------------------------------------------------------------
# Schedules


def shift_sigma(sigma: SigmaLike, shift: float) -> SigmaLike:
    """Wan / SD3 timestep shift: sigma' = shift * sigma / (1 + (shift - 1) * sigma).

    shift > 1 spends more steps at high noise, which large frames need (more pixels survive
    a given noise level). Maps 0 -> 0 and 1 -> 1, monotone.
    """
    if shift <= 0:
        raise ValueError(f"timestep shift must be > 0, got {shift}")
    return shift * sigma / (1 + (shift - 1) * sigma)


def student_sigmas(timesteps: Sequence[float], shift: float) -> torch.Tensor:
    """Sigmas [S] (float64, descending) of the few-step student: sigma = shift(t / 1000).

    The list holds the levels where the network is evaluated; it does not end with 0 (the last
    step's x0 prediction is the sample). Official ShotStream: (1000, 740, 500, 260), shift 8.
    """
    t = torch.as_tensor(list(timesteps), dtype=torch.float64)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"student timesteps must be a non-empty list, got {list(timesteps)}")
    if (t <= 0).any() or (t > TIMESTEP_SCALE).any():
        raise ValueError(f"student timesteps must lie in (0, 1000], got {t.tolist()}")
    if (t[1:] >= t[:-1]).any():
        raise ValueError(f"student timesteps must be strictly descending, got {t.tolist()}")
    return shift_sigma(t / TIMESTEP_SCALE, shift)


def teacher_sigmas(steps: int, shift: float) -> torch.Tensor:
    """Sigmas [steps + 1] (float64) for an Euler ODE solve: shift(linspace(1, 0)), ending at 0."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"teacher steps must be a positive integer, got {steps!r}")
    return shift_sigma(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)


def merge_sigma_grids(grid: torch.Tensor, extra: Sequence[float] | torch.Tensor, tol: float = 1e-9) -> torch.Tensor:
    """Union of two sigma lists, descending, with `extra`'s values kept exactly.

    Used to put the student's sigmas on the teacher's Euler grid so that a recorded trajectory
    holds x at exactly those levels (no interpolation). A grid point within `tol` of an extra
    sigma is replaced by it rather than duplicated.
    """
    points = [float(s) for s in grid]
    for s in (float(s) for s in extra):
        points = [p for p in points if abs(p - s) > tol] + [s]
    return torch.tensor(sorted(points, reverse=True), dtype=torch.float64)


def check_sigmas(sigmas: Sequence[float] | torch.Tensor, name: str = "sigmas") -> torch.Tensor:
    """A 1-D, non-empty, strictly descending float64 tensor in [0, 1], or a clear ValueError."""
    s = torch.as_tensor(sigmas if isinstance(sigmas, torch.Tensor) else list(sigmas), dtype=torch.float64)
    if s.ndim != 1 or s.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D list, got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all() or (s < 0).any() or (s > 1).any():
        raise ValueError(f"{name} must lie in [0, 1], got {s.tolist()}")
    if (s[1:] >= s[:-1]).any():
        raise ValueError(f"{name} must be strictly descending, got {s.tolist()}")
    return s


# ---------------------------------------------------------------------------------------------
# Noising and the network's target


def _expand_sigma(sigma: SigmaLike, x: torch.Tensor) -> SigmaLike:
    """Broadcast sigma ([] / [B] / [B, F]) against x ([B, F, ...]) by appending singleton dims."""
    if not isinstance(sigma, torch.Tensor):
        return float(sigma)
    if sigma.ndim == 0:
        return sigma.to(x.dtype)
    if sigma.ndim > x.ndim or tuple(sigma.shape) != tuple(x.shape[: sigma.ndim]):
        raise ValueError(
            f"sigma of shape {tuple(sigma.shape)} does not match the leading dims of x {tuple(x.shape)}; "
            "expected [B] or [B, F]"
        )
    return sigma.to(x.dtype).reshape(*sigma.shape, *([1] * (x.ndim - sigma.ndim)))


def _same_shape(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: SigmaLike) -> torch.Tensor:
    """x_t = (1 - sigma) * x0 + sigma * noise."""
    _same_shape(x0, noise, "x0 and noise")
    s = _expand_sigma(sigma, x0)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching regression target v = noise - x0 (d x_t / d sigma)."""
    _same_shape(x0, noise, "x0 and noise")
    return noise - x0


def predict_x0(x_t: torch.Tensor, v: torch.Tensor, sigma: SigmaLike) -> torch.Tensor:
    """x0 = x_t - sigma * v (exact inverse of add_noise given the true velocity)."""
    _same_shape(x_t, v, "x_t and v")
    return x_t - _expand_sigma(sigma, x_t) * v


def predict_noise(x_t: torch.Tensor, v: torch.Tensor, sigma: SigmaLike) -> torch.Tensor:
    """noise = x_t + (1 - sigma) * v."""
    _same_shape(x_t, v, "x_t and v")
    return x_t + (1 - _expand_sigma(sigma, x_t)) * v


def x0_to_velocity(x_t: torch.Tensor, x0: torch.Tensor, sigma: SigmaLike) -> torch.Tensor:
    """v = (x_t - x0) / sigma: turns an x0 prediction back into a velocity (sigma must be > 0)."""
    _same_shape(x_t, x0, "x_t and x0")
    s = _expand_sigma(sigma, x_t)
    if (isinstance(s, float) and s <= 0) or (isinstance(s, torch.Tensor) and (s <= 0).any()):
        raise ValueError("x0_to_velocity needs sigma > 0 (at sigma = 0 the velocity is undefined)")
    return (x_t - x0) / s


# ---------------------------------------------------------------------------------------------
# Training


def sample_training_sigmas(
    shape: int | Sequence[int],
    shift: float,
    generator: torch.Generator | None = None,
    distribution: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> torch.Tensor:
    """Training noise levels of `shape` (e.g. [B] or [B, F]), float32.

    u ~ U[0, 1) ("uniform", Wan) or u = sigmoid(N(logit_mean, logit_std)) ("logit_normal", SD3),
    then sigma = shift_sigma(u, shift), the same shift the sampler uses.
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if distribution == "uniform":
        u = torch.rand(shape, generator=generator, dtype=torch.float64)
    elif distribution == "logit_normal":
        u = torch.sigmoid(logit_mean + logit_std * torch.randn(shape, generator=generator, dtype=torch.float64))
    else:
        raise ValueError(f"distribution must be 'uniform' or 'logit_normal', got {distribution!r}")
    return shift_sigma(u, shift).float()


def flow_matching_loss(
    v_pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error to v = noise - x0, with uniform weight over sigma by default.

    Uniform weighting (rectified flow, Wan): the sigma *sampling* (shift, optional logit-normal)
    already decides which noise levels the model trains on most, so no extra per-sigma weight is
    applied. `weight` ([B] or [B, F], optional) scales each sample's / frame's squared error,
    e.g. a 0/1 mask that keeps the loss on target frames only.
    """
    _same_shape(v_pred, x0, "v_pred and x0")
    err = (v_pred.float() - velocity_target(x0, noise).float()) ** 2
    if weight is None:
        return err.mean()
    w = _expand_sigma(weight.float(), err)
    return (err * w).sum() / (w.expand_as(err).sum()).clamp_min(1e-12)


# ---------------------------------------------------------------------------------------------
# Sampling


def cfg(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on every channel: v_uncond + scale * (v_cond - v_uncond)."""
    _same_shape(v_cond, v_uncond, "v_cond and v_uncond")
    return v_uncond + scale * (v_cond - v_uncond)


def unconditional_fn(no_caption: DenoiseFn, no_context: DenoiseFn, scale: float, context_scale: float = 1.0) -> DenoiseFn | None:
    """The unconditional branch of guidance on the caption at `scale` and on the earlier shots at
    `context_scale` (InstructPix2Pix's two scales): with u_c the velocity without the caption and
    u_0 without caption nor context,

        v = u_0 + context_scale * (u_c - u_0) + scale * (v_cond - u_c) = cfg(v_cond, u, scale)

    for u = u_c + w * (u_0 - u_c), w = (context_scale - 1) / (scale - 1). context_scale 1 is plain
    CFG (u = u_c: the context is in both branches), context_scale = scale hides both at once
    (u = u_0); only values in between pay for both branches. None when scale is 1 (no guidance).
    """
    if scale == 1.0:
        if context_scale != 1.0:
            raise ValueError(f"guidance on the context (scale {context_scale}) needs guidance on the caption (scale != 1)")
        return None
    w = (context_scale - 1.0) / (scale - 1.0)
    if w == 0.0 or no_context is no_caption:  # (the same function: there is no context to hide)
        return no_caption
    if w == 1.0:
        return no_context
    return lambda x, sigma: torch.lerp(no_caption(x, sigma), no_context(x, sigma), w)


def _sigma_batch(sigma: float, x: torch.Tensor) -> torch.Tensor:
    """sigma as a [B] tensor for the network; float32 at least (bf16 would round 0.958 to 0.957)."""
    return torch.full((x.shape[0],), sigma, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)


def few_step_sample(
    denoise_fn: DenoiseFn,
    noise: torch.Tensor,
    sigmas: Sequence[float] | torch.Tensor,
    generator: torch.Generator | None = None,
    exit_step: int | None = None,
    grad_exit_only: bool = False,
) -> torch.Tensor:
    """Few-step student sampler (CausVid / Self-Forcing): predict x0, re-noise, repeat.

    At step i the network sees x at sigmas[i] and returns v; x0 = x - sigma * v. Unless this is
    the last (or exit) step, x0 is re-noised to sigmas[i + 1] with fresh Gaussian noise from
    `generator`. Returns the x0 predicted at step `exit_step` (default: the last step).

    `sigmas` are the levels where the network runs ([S], descending, e.g. `student_sigmas`); a
    trailing 0 is allowed and ignored. `denoise_fn(x_t, sigma [B]) -> v`.
    Self-forcing training samples a random `exit_step` and, with `grad_exit_only`, runs the
    earlier steps without gradient (only the exit step's network call is differentiated).
    """
    s = check_sigmas(sigmas)
    if s[-1] == 0 and s.numel() > 1:
        s = s[:-1]
    if s[-1] <= 0:
        raise ValueError("few_step_sample needs sigmas > 0 (the network is not run at sigma = 0)")
    last = s.numel() - 1
    if exit_step is None:
        exit_step = last
    if not isinstance(exit_step, int) or not 0 <= exit_step <= last:
        raise ValueError(f"exit_step must be an integer in [0, {last}], got {exit_step!r}")
    x = noise
    for i in range(exit_step + 1):
        sigma = float(s[i])
        with torch.set_grad_enabled(torch.is_grad_enabled() and (not grad_exit_only or i == exit_step)):
            v = denoise_fn(x, _sigma_batch(sigma, x))
            _same_shape(v, x, "denoise_fn output and its input")
            x0 = predict_x0(x, v, sigma)
        if i == exit_step:
            return x0
        # drawn where the generator lives (a CPU generator gives every device the same noise)
        on = generator.device if generator is not None else x.device
        fresh = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=on).to(x.device)
        x = add_noise(x0, fresh, float(s[i + 1]))
    raise AssertionError("unreachable")


def euler_sample(
    velocity_fn: DenoiseFn,
    noise: torch.Tensor,
    sigmas: Sequence[float] | torch.Tensor,
    guidance_scale: float = 1.0,
    uncond_fn: DenoiseFn | None = None,
    callback: Callable[[int, float, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Teacher sampler: Euler steps of dx/dsigma = v over `sigmas` (descending, usually to 0).

    x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v_i, with v_i = cfg(v_cond, v_uncond, scale) when
    guidance_scale != 1 (then `uncond_fn` is required). Returns x at sigmas[-1] (x0 if it is 0).
    `callback(i, sigma_{i+1}, x_{i+1})` runs after each step (progress, trajectory recording).
    """
    s = check_sigmas(sigmas)
    if s.numel() < 2:
        raise ValueError("euler_sample needs at least two sigmas (a start and an end)")
    guided = guidance_scale != 1.0
    if guided and uncond_fn is None:
        raise ValueError(f"guidance_scale={guidance_scale} needs an uncond_fn for classifier-free guidance")
    x = noise
    for i in range(s.numel() - 1):
        sigma, sigma_next = float(s[i]), float(s[i + 1])
        sig = _sigma_batch(sigma, x)
        v = velocity_fn(x, sig)
        _same_shape(v, x, "velocity_fn output and its input")
        if guided:
            v = cfg(v, uncond_fn(x, sig), guidance_scale)
        x = x + (sigma_next - sigma) * v
        if callback is not None:
            callback(i, sigma_next, x)
    return x


def trajectory(
    velocity_fn: DenoiseFn,
    noise: torch.Tensor,
    record_sigmas: Sequence[float] | torch.Tensor,
    steps: int,
    shift: float,
    guidance_scale: float = 1.0,
    uncond_fn: DenoiseFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher ODE trajectory for ODE initialisation: (x at each record sigma, x0).

    Grid rule: the Euler grid is `teacher_sigmas(steps, shift)` with the record sigmas merged
    in (`merge_sigma_grids`), so x is recorded exactly at each requested level, never
    interpolated; this adds at most len(record_sigmas) Euler steps. A record sigma of 1.0 is the
    input noise itself.

    Returns states [B, K, ...] (K = len(record_sigmas), in the order given) and x0 [B, ...].
    """
    record = check_sigmas(record_sigmas, "record_sigmas")
    grid = merge_sigma_grids(teacher_sigmas(steps, shift), record)
    wanted = set(record.tolist())  # merge_sigma_grids kept these values bit-exact
    recorded: dict[float, torch.Tensor] = {}
    if float(grid[0]) in wanted:
        recorded[float(grid[0])] = noise

    def keep(_i: int, sigma: float, x: torch.Tensor) -> None:
        if sigma in wanted:
            recorded[sigma] = x

    x0 = euler_sample(velocity_fn, noise, grid, guidance_scale, uncond_fn, callback=keep)
    states = torch.stack([recorded[float(r)] for r in record], dim=1)  # [B, K, ...]
    return states, x0
