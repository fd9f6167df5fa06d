"""One flow-matching training step on cached tensors, as a handful of named calls.

The training loop never runs the VAE or the text encoders: a `Batch` holds what the cache stage
wrote (normalised latents and the model family's text conditioning, opaque here). The model itself
is called through its family's `predict_velocity`.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from lookalike.models.family import cond_repeat, cond_rows, family_of_module
from lookalike.train.flow_matching import flow_matching_loss, loss_weights, noisy_latents, sample_sigmas, velocity_target


@dataclass
class Batch:
    """Cached inputs. latents: [B, C, H, W], normalised as the family's VAE hook does; cond: the family's
    text conditioning {name: [B, ...]}.

    prior: [B] bool or None: items whose target is the base model's own prediction (grounding photos
    with `dataset.grounding_target=base`) instead of the photo's velocity ε - z.
    class_cond: each item's caption with the trigger replaced by the class phrase ({name: [B, ...]}), for
    class-prior preservation; blank: the empty caption repeated B times, for blank-prompt preservation.
    """

    latents: torch.Tensor
    cond: dict
    prior: torch.Tensor | None = None
    class_cond: dict | None = None
    blank: dict | None = None

    def rows(self, index) -> "Batch":
        """The items at `index` (a [B] bool mask or a slice)."""
        i = index.to(self.latents.device) if isinstance(index, torch.Tensor) else index
        return Batch(self.latents[i], cond_rows(self.cond, index))


def predict_velocity(transformer, z_sigma: torch.Tensor, sigma: torch.Tensor, batch: Batch, guidance: float):
    """v̂ = f_θ(z_σ, σ, text) through the transformer's family. [B, C, H, W] -> [B, C, H, W]."""
    return family_of_module(transformer).predict_velocity(transformer, z_sigma, sigma, batch.cond, guidance)


_LORA_LAYERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def lora_layers(transformer) -> tuple:
    """The LoRA layers of `transformer`, found once: the module walk costs more than a toy model's step.
    Adapters are added before training and not changed during it."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if transformer not in _LORA_LAYERS:
        _LORA_LAYERS[transformer] = tuple(m for m in transformer.modules() if isinstance(m, BaseTunerLayer))
    return _LORA_LAYERS[transformer]


@contextmanager
def lora_disabled(transformer):
    """The frozen base model: every LoRA layer of `transformer` bypassed for the duration."""
    layers = lora_layers(transformer)
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield transformer
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def prior_velocity(transformer, z_sigma: torch.Tensor, sigma: torch.Tensor, batch: Batch, guidance: float):
    """What the base model (LoRA off) predicts for the same input: the target that keeps it unchanged.

    Prior preservation by self-distillation: training towards it teaches the LoRA to leave captions
    without the trigger alone. [B, C, H, W] -> [B, C, H, W], no gradient.
    """
    with torch.no_grad(), lora_disabled(transformer):
        return predict_velocity(transformer, z_sigma, sigma, batch, guidance).float()


def preservation_loss(transformer, z_sigma: torch.Tensor, sigma: torch.Tensor, cond: dict, guidance: float,
                      weights: torch.Tensor) -> torch.Tensor:
    """The LoRA held to the base model on one conditioning: the weighted squared error between the
    prediction with the LoRA and without it (no gradient) on the same noisy latents z_σ [B, C, H, W].
    Exactly 0 for a LoRA that changes nothing. -> scalar."""
    inputs = Batch(z_sigma, cond)
    target = prior_velocity(transformer, z_sigma, sigma, inputs, guidance)
    return flow_matching_loss(predict_velocity(transformer, z_sigma, sigma, inputs, guidance), target, weights)


def _loss_at(transformer, batch: Batch, noise: torch.Tensor, sigma: torch.Tensor, guidance: float,
             weights: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Noise the latents to σ, predict the velocity, and weight its squared error against `target`
    (default v = ε - z). -> scalar."""
    z = batch.latents
    pred = predict_velocity(transformer, noisy_latents(z, noise, sigma), sigma, batch, guidance)
    return flow_matching_loss(pred, velocity_target(z, noise) if target is None else target, weights)


def training_loss(transformer, batch: Batch, train, generator: torch.Generator | None = None):
    """Sample σ and ε for the batch and compute the weighted loss. `train`: the config's train section.

    Items marked in `batch.prior` are trained towards the base model's prediction (see prior_velocity),
    weighted by `train.grounding_weight`; the others towards v = ε - z. With `batch.class_cond` and
    `train.class_prior_weight`, plus that weight times `preservation_loss` on the class captions; with
    `batch.blank` and `train.blank_prior_weight`, the same on the empty caption (both on the photos' own
    noisy latents, at the same σ). Returns (loss, σ [B]).
    """
    z = batch.latents
    sigma = sample_sigmas(
        z.shape[0], train.density, logit_mean=train.logit_mean, logit_std=train.logit_std,
        mode_scale=train.mode_scale, shift=train.shift, generator=generator,
    ).to(z.device)
    noise = torch.randn(z.shape, generator=generator, dtype=torch.float32).to(z)
    weights, target = loss_weights(sigma, train.weighting), None
    if batch.prior is not None and bool(batch.prior.any()):
        prior = batch.prior.to(z.device)
        target = velocity_target(z, noise)
        target[prior] = prior_velocity(transformer, noisy_latents(z, noise, sigma)[prior], sigma[prior],
                                       batch.rows(prior), train.guidance)
        weights = torch.where(prior.to(weights.device), weights * train.grounding_weight, weights)
    loss = _loss_at(transformer, batch, noise, sigma, train.guidance, weights, target)
    preserved = [(w, cond) for w, cond in ((train.class_prior_weight, batch.class_cond),
                                           (train.blank_prior_weight, batch.blank)) if w and cond is not None]
    z_sigma = noisy_latents(z, noise, sigma) if preserved else None
    for weight, cond in preserved:
        loss = loss + weight * preservation_loss(transformer, z_sigma, sigma, cond, train.guidance, weights)
    return loss, sigma


def fixed_noise_loss(transformer, batch: Batch, sigmas: torch.Tensor, guidance: float, seed: int = 0,
                     max_rows: int = 8) -> torch.Tensor:
    """Validation loss at fixed σ values with fixed noise: a steady signal where the training loss is noisy.

    Every item at every σ ([B·S] rows, items repeated S times) with the same noise for every call with
    the same seed, run in forwards of at most `max_rows` rows; unweighted, averaged over rows -> scalar.
    """
    g = torch.Generator().manual_seed(seed)
    z, s = batch.latents, len(sigmas)
    rows = Batch(z.repeat_interleave(s, dim=0), cond_repeat(batch.cond, s))
    noise = torch.randn(rows.latents.shape, generator=g, dtype=torch.float32).to(z)
    sigma = sigmas.float().repeat(z.shape[0]).to(z.device)
    total = torch.zeros((), device=z.device)
    with torch.no_grad():
        for start in range(0, len(sigma), max_rows):
            part = slice(start, start + max_rows)
            chunk = rows.rows(part)
            n = len(sigma[part])
            total += n * _loss_at(transformer, chunk, noise[part], sigma[part], guidance, torch.ones(n))
    return total / len(sigma)
