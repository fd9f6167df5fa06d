"""Flow matching as small pure functions, each with its shapes: the same for every model family.

The write-up's maths, in order:
    σ = shift(u),  u ~ p(u)                       sample_sigmas
    z_σ = (1 - σ)·z + σ·ε                         noisy_latents
    v = ε - z                                     velocity_target
    L = mean_b  w(σ_b) · mean(‖v̂_b - v_b‖²)      flow_matching_loss, with w from loss_weights

How a family turns latents into its transformer's tokens (FLUX's 2x2 packing, ...) is the family's
(`lookalike.models.<family>`). Lightning only wires these together.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Density = Literal["uniform", "logit_normal", "mode"]
Weighting = Literal["none", "sigma_sqrt", "cosmap"]


def shift_sigmas(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3/FLUX timestep shift: σ' = s·σ / (1 + (s - 1)·σ). shift 1 is the identity.

    A shift above 1 moves samples towards high noise, where large images need more training.
    sigma: [B] in [0, 1] -> [B].
    """
    if shift == 1.0:
        return sigma
    return shift * sigma / (1 + (shift - 1) * sigma)


def sample_sigmas(
    batch_size: int,
    density: Density = "logit_normal",
    *,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Noise levels for one batch: u from diffusers' SD3 densities, then the optional shift.

    Returns [B] float32 in [0, 1] on the CPU (move it with the batch).
    """
    from diffusers.training_utils import compute_density_for_timestep_sampling

    u = compute_density_for_timestep_sampling(
        weighting_scheme=density, batch_size=batch_size, logit_mean=logit_mean, logit_std=logit_std,
        mode_scale=mode_scale, generator=generator,
    )
    return shift_sigmas(u.float(), shift)


def _per_sample(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, ..., 1] broadcastable against `like` ([B, ...]), in its dtype and device."""
    return sigma.to(like).reshape(-1, *([1] * (like.ndim - 1)))


def noisy_latents(z: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """z_σ = (1 - σ)·z + σ·ε. z, noise: [B, ...]; sigma: [B] -> [B, ...]."""
    s = _per_sample(sigma, z)
    return (1 - s) * z + s * noise


def velocity_target(z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """v = ε - z, the direction from data to noise that FLUX predicts. [B, ...] -> [B, ...]."""
    return noise - z


def loss_weights(sigma: torch.Tensor, scheme: Weighting = "none") -> torch.Tensor:
    """w(σ) per sample: none -> 1, sigma_sqrt -> σ⁻², cosmap -> 2 / (π(1 - 2σ + 2σ²)). [B] -> [B]."""
    if scheme == "none":
        return torch.ones_like(sigma)
    if scheme == "sigma_sqrt":
        return sigma.float() ** -2.0
    if scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigma + 2 * sigma**2))
    raise ValueError(f"unknown loss weighting {scheme!r}; expected none, sigma_sqrt or cosmap")


def flow_matching_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """mean over the batch of w_b · mean over elements of (v̂ - v)², computed in fp32.

    pred, target: [B, ...]; weights: [B] -> scalar.
    """
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return (weights.float().to(per_sample.device) * per_sample).mean()
