"""Golden tests: each flow-matching function against numbers worked out by hand."""

import math

import pytest
import torch

from lookalike.models.flux1 import latent_image_ids, pack_latents, unpack_latents
from lookalike.train.flow_matching import (
    flow_matching_loss,
    loss_weights,
    noisy_latents,
    sample_sigmas,
    shift_sigmas,
    velocity_target,
)

Z = torch.tensor([[[[1.0, -2.0]]], [[[0.5, 4.0]]]])  # [B=2, C=1, H=1, W=2]
EPS = torch.tensor([[[[3.0, 0.0]]], [[[-1.0, 2.0]]]])
SIGMA = torch.tensor([0.25, 0.5])


def test_noisy_latents_by_hand():
    # b0: 0.75*[1,-2] + 0.25*[3,0] = [1.5, -1.5];  b1: 0.5*[0.5,4] + 0.5*[-1,2] = [-0.25, 3.0]
    expected = torch.tensor([[[[1.5, -1.5]]], [[[-0.25, 3.0]]]])
    assert torch.equal(noisy_latents(Z, EPS, SIGMA), expected)


def test_noisy_latents_endpoints_are_data_and_noise():
    assert torch.equal(noisy_latents(Z, EPS, torch.zeros(2)), Z)
    assert torch.equal(noisy_latents(Z, EPS, torch.ones(2)), EPS)


def test_velocity_target_by_hand():
    assert torch.equal(velocity_target(Z, EPS), torch.tensor([[[[2.0, 2.0]]], [[[-1.5, -2.0]]]]))


def test_velocity_is_the_derivative_of_the_path():
    # d/dσ [(1-σ)z + σε] = ε - z: a finite difference along σ recovers the target exactly (linear path)
    a, b = noisy_latents(Z, EPS, torch.full((2,), 0.3)), noisy_latents(Z, EPS, torch.full((2,), 0.7))
    assert torch.allclose((b - a) / 0.4, velocity_target(Z, EPS), atol=1e-6)


def test_shift_by_hand():
    # s=3, σ=0.5: 1.5 / (1 + 2*0.5) = 0.75;  σ=0.25: 0.75 / 1.5 = 0.5; endpoints fixed
    out = shift_sigmas(torch.tensor([0.0, 0.25, 0.5, 1.0]), 3.0)
    assert torch.allclose(out, torch.tensor([0.0, 0.5, 0.75, 1.0]))
    assert torch.equal(shift_sigmas(SIGMA, 1.0), SIGMA)


def test_loss_weights_by_hand():
    s = torch.tensor([0.5, 0.25])
    assert torch.equal(loss_weights(s, "none"), torch.ones(2))
    assert torch.allclose(loss_weights(s, "sigma_sqrt"), torch.tensor([4.0, 16.0]))
    # cosmap at 0.5: 2 / (π·(1 - 1 + 0.5)) = 4/π;  at 0.25: 2 / (π·(1 - 0.5 + 0.125)) = 3.2/π
    assert torch.allclose(loss_weights(s, "cosmap"), torch.tensor([4 / math.pi, 3.2 / math.pi]))
    with pytest.raises(ValueError, match="cosmap"):
        loss_weights(s, "edm")


def test_loss_weights_agree_with_diffusers():
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    s = torch.rand(16) * 0.98 + 0.01
    for scheme in ("none", "sigma_sqrt", "cosmap"):
        assert torch.allclose(loss_weights(s, scheme), compute_loss_weighting_for_sd3(scheme, s))


def test_flow_matching_loss_by_hand():
    pred = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    target = torch.tensor([[0.0, 0.0], [1.0, 3.0]])
    # per sample mean squared error: [(1+4)/2, (1+9)/2] = [2.5, 5.0]; weights [2, 1] -> (5 + 5)/2 = 5
    assert flow_matching_loss(pred, target, torch.tensor([2.0, 1.0])).item() == 5.0
    assert flow_matching_loss(pred, target, torch.ones(2)).item() == 3.75


def test_loss_is_fp32_for_bf16_inputs():
    pred = torch.tensor([[1.0, 2.0]], dtype=torch.bfloat16)
    assert flow_matching_loss(pred, torch.zeros_like(pred), torch.ones(1)).dtype == torch.float32


@pytest.mark.parametrize("density", ["uniform", "logit_normal", "mode"])
def test_sigmas_are_in_range_and_seeded(density):
    a = sample_sigmas(512, density, generator=torch.Generator().manual_seed(0))
    b = sample_sigmas(512, density, generator=torch.Generator().manual_seed(0))
    assert a.shape == (512,) and a.dtype == torch.float32
    assert torch.equal(a, b) and (a >= 0).all() and (a <= 1).all()


def test_logit_normal_is_centred_and_shift_moves_it_up():
    g = torch.Generator().manual_seed(0)
    s = sample_sigmas(20000, "logit_normal", logit_mean=0.0, logit_std=1.0, generator=g)
    assert abs(s.median().item() - 0.5) < 0.02  # sigmoid of a zero-median normal
    shifted = sample_sigmas(20000, "logit_normal", shift=3.0, generator=torch.Generator().manual_seed(0))
    assert abs(shifted.median().item() - 0.75) < 0.02  # shift(0.5) = 0.75
    # logit_std=0 is a point mass at sigmoid(mean)
    point = sample_sigmas(4, "logit_normal", logit_mean=math.log(3), logit_std=0.0)
    assert torch.allclose(point, torch.full((4,), 0.75))


def test_pack_by_hand():
    # one channel, 2x4 latent -> two tokens, each its 2x2 patch in row-major order
    z = torch.arange(8.0).reshape(1, 1, 2, 4)
    assert torch.equal(pack_latents(z), torch.tensor([[[0.0, 1.0, 4.0, 5.0], [2.0, 3.0, 6.0, 7.0]]]))


def test_pack_matches_diffusers_and_round_trips():
    from diffusers import FluxPipeline

    z = torch.randn(2, 16, 6, 8)
    packed = pack_latents(z)
    assert torch.equal(packed, FluxPipeline._pack_latents(z, 2, 16, 6, 8))
    assert torch.equal(unpack_latents(packed, 6, 8), z)
    # diffusers' unpack takes image pixels and the VAE factor: 6x8 latents are 48x64 pixels at factor 8
    assert torch.equal(unpack_latents(packed, 6, 8), FluxPipeline._unpack_latents(packed, 48, 64, 8))


def test_image_ids_match_diffusers():
    from diffusers import FluxPipeline

    ids = latent_image_ids(6, 8)
    assert ids.shape == (12, 3) and ids[5].tolist() == [0.0, 1.0, 1.0]
    assert torch.equal(ids, FluxPipeline._prepare_latent_image_ids(1, 3, 4, "cpu", torch.float32))
