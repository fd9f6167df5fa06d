"""Pretraining the toy FLUX on generated scenes: the VAE first, then the transformer.

    lookalike toy pretrain --out src/lookalike/toy/weights   (reproduces the shipped weights)

1. Render `scenes` random scenes (a few with Arthur: the VAE is a general image codec, like FLUX's,
   which reconstructs any photo; the *transformer* never sees him).
2. Train the AutoencoderKL to reconstruct them (MSE plus a small KL term), then set FLUX's latent
   normalisation (shift_factor, scaling_factor) from the mean and spread of its latents.
3. Round every part to fp16, the precision it ships in, so what the transformer learns from is
   exactly what users load.
4. Encode the Arthur-free scenes (latents) and their captions (the family's text conditioning) once.
5. Train the transformer with lookalike's flow-matching functions (the ones LoRA training uses):
   logit-normal σ, z_σ = (1-σ)z + σε, target ε - z; 10% empty captions so the empty prompt draws a
   scene; a random guidance value in [1, 4] per step, so the guidance embedder learns to ignore it;
   an exponential moving average of the weights is what ships.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainSettings:
    seed: int = 0
    scenes: int = 24000
    vae_steps: int = 1500
    vae_batch: int = 16
    vae_lr: float = 1e-3
    steps: int = 3500
    batch: int = 32
    lr: float = 7e-4
    warmup: int = 200
    ema: float = 0.999
    empty_share: float = 0.1
    vae_arthur_share: float = 0.1


def render_scenes(seed: int, n: int, arthur_share: float = 0.0):
    """n scenes -> (uint8 images [N, 3, 64, 64], captions)."""
    import numpy as np
    import torch

    from lookalike.toy.scenes import caption, render, scene_stream

    scenes = list(scene_stream(seed, n, arthur_share))
    pixels = np.stack([np.asarray(render(s)) for s in scenes])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), [caption(s) for s in scenes]


def to_unit(images):
    """uint8 [B, 3, H, W] -> float [-1, 1]."""
    return images.float() / 127.5 - 1.0


def train_vae(vae, images, s: PretrainSettings, kl_weight: float = 1e-6, progress=None) -> float:
    """Reconstruction training: mean squared error of the decoded posterior sample, plus kl_weight·KL.

    images: uint8 [N, 3, H, W]. Returns the last loss.
    """
    import torch

    g = torch.Generator().manual_seed(s.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=s.vae_lr, weight_decay=0.0)
    vae.train()
    loss = torch.tensor(0.0)
    for step in range(s.vae_steps):
        for group in opt.param_groups:  # cosine decay to 10%
            group["lr"] = s.vae_lr * (0.55 + 0.45 * math.cos(math.pi * step / s.vae_steps))
        x = to_unit(images[torch.randint(len(images), (s.vae_batch,), generator=g)])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=g)).sample
        loss = (recon - x).pow(2).mean() + kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress and (step % 100 == 0 or step == s.vae_steps - 1):
            progress(f"vae step {step}/{s.vae_steps} loss {loss.item():.5f}")
    vae.eval()
    return float(loss.detach())


def encode_images(vae, images, batch: int = 256):
    """uint8 [N, 3, H, W] -> the posterior means [N, C, h, w], before normalisation."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(vae.encode(to_unit(images[i:i + batch])).latent_dist.mode())
    return torch.cat(out)


def set_latent_normalisation(vae, raw_latents) -> tuple[float, float]:
    """The VAE's z = (z_vae - shift)·scale with shift = mean and scale = 1 / std of the latents."""
    shift = float(raw_latents.mean())
    scale = 1.0 / float(raw_latents.std())
    vae.register_to_config(shift_factor=round(shift, 4), scaling_factor=round(scale, 4))
    return shift, scale


def encode_captions(pipe, captions: list[str], max_sequence_length: int, batch: int = 512) -> dict:
    """Captions -> the family's conditioning {name: [N, ...]}; sequences ([N, L, D]) in fp16 to save memory."""
    import torch

    from lookalike.models.family import cond_cat, family_of_module

    family, parts = family_of_module(pipe), []
    with torch.no_grad():
        for i in range(0, len(captions), batch):
            cond = family.encode_text(pipe, captions[i:i + batch], max_sequence_length)
            parts.append({k: v.half() if v.ndim == 3 else v for k, v in cond.items()})
    return cond_cat(parts)


def train_transformer(transformer, latents, cond: dict, empty: dict, s: PretrainSettings, progress=None):
    """Full training of the toy transformer with lookalike's flow-matching functions. Returns the EMA copy.

    latents: [N, C, h, w] normalised; cond: the captions' conditioning {name: [N, ...]}; empty: the empty
    caption's, {name: [1, ...]}.
    """
    import torch

    from lookalike.train.flow_matching import flow_matching_loss, noisy_latents, sample_sigmas, velocity_target
    from lookalike.train.step import Batch, predict_velocity

    g = torch.Generator().manual_seed(s.seed + 1)
    ema = copy.deepcopy(transformer).requires_grad_(False)
    opt = torch.optim.AdamW(transformer.parameters(), lr=s.lr, weight_decay=1e-4, betas=(0.9, 0.99))
    transformer.train()
    running = None
    for step in range(s.steps):
        warm = min(1.0, (step + 1) / s.warmup)
        for group in opt.param_groups:  # warm-up, then cosine decay to 20%
            group["lr"] = s.lr * warm * (0.6 + 0.4 * math.cos(math.pi * step / s.steps))
        idx = torch.randint(len(latents), (s.batch,), generator=g)
        text = {k: v[idx].float() for k, v in cond.items()}
        drop = torch.rand(s.batch, generator=g) < s.empty_share
        for k, v in text.items():
            v[drop] = empty[k].float()
        z = latents[idx]
        sigma = sample_sigmas(s.batch, "logit_normal", generator=g)
        noise = torch.randn(z.shape, generator=g)
        guidance = 1.0 + 3.0 * float(torch.rand(1, generator=g))
        pred = predict_velocity(transformer, noisy_latents(z, noise, sigma), sigma, Batch(z, text), guidance)
        loss = flow_matching_loss(pred, velocity_target(z, noise), torch.ones_like(sigma))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        decay = min(s.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), transformer.parameters()):
                e.lerp_(p, 1 - decay)
        value = float(loss.detach())
        running = value if running is None else 0.98 * running + 0.02 * value
        if progress and (step % 100 == 0 or step == s.steps - 1):
            progress(f"transformer step {step}/{s.steps} loss {running:.4f}")
    transformer.eval()
    return ema.eval()


def quiet_text_libraries() -> None:
    """The toy's CLIP keeps 77 characters of a caption (its tokenizer reads letters): its pipeline truncates
    long prompts and says so once per prompt, which would flood the log."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()


def round_to_fp16(module) -> None:
    """Round the weights to what fp16 can hold (they ship in fp16), keeping fp32 for computing."""
    import torch

    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.half().float())


def pretrain(out: Path, s: PretrainSettings = PretrainSettings(), progress=None, start: Path | None = None) -> dict:
    """Build, train and save the toy FLUX pipeline to `out` (fp16). Returns timings and final losses.

    With `start` (a folder an earlier `pretrain` wrote), its VAE and encoders are kept as they are and
    its transformer trains `s.steps` more steps, on scenes drawn from `s.seed`.
    """
    import torch

    from lookalike.toy.model import MAX_TOKENS, build_toy

    say = progress or log.info
    quiet_text_libraries()
    started = time.time()
    images, captions = render_scenes(s.seed, s.scenes, arthur_share=0.0)
    vae_loss, vae_seconds = None, 0.0
    if start is None:
        pipe = build_toy(s.seed)
        arthur_images, _ = render_scenes(s.seed + 1000, int(s.scenes * s.vae_arthur_share), arthur_share=1.0)
        say(f"rendered {len(images) + len(arthur_images)} scenes in {time.time() - started:.0f} s")
        t = time.time()
        vae_loss = train_vae(pipe.vae, torch.cat([images, arthur_images]), s, progress=say)
        vae_seconds = time.time() - t
        from lookalike.models.family import family_of_module

        text_modules = [getattr(pipe, n) for n in family_of_module(pipe).text_parts if "encoder" in n]
        for part in (pipe.vae, *text_modules, pipe.transformer):
            round_to_fp16(part)
        raw = encode_images(pipe.vae, images)
        shift, scale = set_latent_normalisation(pipe.vae, raw)
        say(f"vae trained in {vae_seconds:.0f} s (loss {vae_loss:.5f}); latent shift {shift:.4f} scale {scale:.4f}")
    else:
        from lookalike.models.family import family_of_folder

        pipe = family_of_folder(start).load_class("pipeline").from_pretrained(start, torch_dtype=torch.float32)
        raw = encode_images(pipe.vae, images)
        say(f"continuing from {start}")
    latents = (raw - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    cond = encode_captions(pipe, captions, MAX_TOKENS)
    empty = encode_captions(pipe, [""], MAX_TOKENS)
    t = time.time()
    pipe.transformer = train_transformer(pipe.transformer, latents, cond, empty, s, progress=say)
    transformer_seconds = time.time() - t
    pipe.to(torch.float16)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out)
    report = {"settings": s.__dict__, "start": str(start) if start else None, "vae_seconds": round(vae_seconds), "vae_loss": vae_loss,
              "transformer_seconds": round(transformer_seconds), "total_seconds": round(time.time() - started),
              "threads": torch.get_num_threads()}
    say(f"saved the toy model to {out} ({report['total_seconds']} s in all)")
    return report
