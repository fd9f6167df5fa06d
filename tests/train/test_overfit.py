"""Overfit 4 photos: the loss halves, and a training caption drawn with the LoRA lands nearer its photo."""

import csv
import statistics

import pytest
import torch

from helpers import make_photos, run_cli
from lookalike.data.cache import load_cache
from lookalike.rundir import RunDir
from lookalike.models.flux1 import unpack_latents

STEPS = 200


def _latent_mse(pipe, item, seed: int) -> float:
    """Draw `item`'s caption and compare the result with the photo's cached latent.

    Compared in latent space: the twin's VAE decoder has random weights, so its pixels say little
    about how close the denoised latent came to the photo's.
    """
    out = pipe(prompt_embeds=item.cond["t5"][None], pooled_prompt_embeds=item.cond["pooled"][None], num_inference_steps=20,
               guidance_scale=1.0, width=64, height=64, generator=torch.Generator().manual_seed(seed),
               output_type="latent").images
    return float(((unpack_latents(out, 8, 8)[0] - item.latent) ** 2).mean())


@pytest.mark.slow
def test_overfit_four_photos(tmp_path, fresh_pipe):
    photos = make_photos(tmp_path / "photos", 4, sizes=((64, 64),))
    run = tmp_path / "run"
    # batch 4 = every photo in every step; the twin is tiny, so a full-width LoRA on every linear layer
    out = run_cli(["train", run, "--photos", photos, "--preset", "tiny", "--set", f"train.epochs={STEPS}",
                   "--set", "train.batch_size=4", "--set", "train.learning_rate=1e-2", "--set", "lora.rank=32",
                   "--set", "lora.alpha=32", "--set", "lora.targets=all-linear", "--set", "train.sample_every=100000",
                   "--set", "train.checkpoint_every=100000"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = list(csv.DictReader(open(run / "train" / "logs" / "csv" / "attempt-1" / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r["train/loss"]]
    assert len(losses) == STEPS
    assert statistics.mean(losses[-10:]) < losses[0] / 2, (losses[0], losses[-10:])

    items = load_cache(RunDir(run)).train  # the captions' own cached embeddings and the photos' latents
    without = [_latent_mse(fresh_pipe, it, seed) for it in items for seed in range(2)]
    fresh_pipe.load_lora_weights(str(run / "train" / "lora.safetensors"))
    with_lora = [_latent_mse(fresh_pipe, it, seed) for it in items for seed in range(2)]
    assert all(w < b for w, b in zip(with_lora, without)), (with_lora, without)
    assert statistics.mean(with_lora) < 0.75 * statistics.mean(without)
