"""The shipped toy FLUX and scorer: size, loading through FLUX.1's loader, the scorer's accuracy, and
what the base model can and cannot draw."""

import pytest

from lookalike.toy import TOY_FOLDER
from lookalike.toy.scorer import SCORER_FILE, Scorer, evaluate, training_scenes


def test_shipped_weights_fit_in_20_mb():
    files = [p for p in TOY_FOLDER.rglob("*") if p.is_file()] + [SCORER_FILE]
    assert any(p.name.endswith(".safetensors") for p in files)
    total = sum(p.stat().st_size for p in files)
    assert total <= 20 * 2**20, f"toy weights take {total / 2**20:.1f} MB"


def test_toy_model_loads_through_the_flux_loader():
    import torch
    from diffusers import FluxPipeline

    from lookalike.models.source import load_pipeline, resolve_source

    source = resolve_source("lookalike:toy")
    assert source.kind == "folder" and source.ref == str(TOY_FOLDER)
    pipe = load_pipeline(source, torch.float32)
    assert isinstance(pipe, FluxPipeline)
    assert pipe.transformer.dtype == torch.float32 and pipe.vae_scale_factor == 4
    assert pipe.vae.config.scaling_factor != 1.0  # the latent normalisation was measured, not left at default


@pytest.fixture(scope="module")
def scorer():
    return Scorer.load()


def test_scorer_is_accurate_on_held_out_scenes(scorer):
    """Scenes from a seed the scorer never trained on, clean and degraded like a diffusion model's."""
    held_out = training_scenes(seed=777, n=400)
    for degraded in (False, True):
        acc = evaluate(scorer, held_out, degraded=degraded)
        assert acc["arthur"] >= 0.98 and acc["places"] >= 0.98 and acc["background"] >= 0.98, acc
        assert acc["who"] >= 0.98, acc  # stranger, Arthur or Grace
        assert acc["glasses"] >= 0.95, acc
    assert any(p.identity == "grace" for s in held_out for p in s.people)


def test_scorer_refuses_missing_weights(tmp_path):
    from lookalike.errors import LookalikeError

    with pytest.raises(LookalikeError, match="lookalike toy scorer"):
        Scorer.load(tmp_path / "nope.safetensors")


def test_base_model_follows_prompts_and_cannot_draw_arthur_or_grace(scorer):
    """Cheap version of the demo's base row: prompt following high, Arthur and Grace (never seen) absent."""
    from lookalike.config import load_config
    from lookalike.toy.demo import evaluate_lora
    from lookalike.toy.metrics import make_suite

    cfg = load_config(None, preset="toy")
    result = evaluate_lora(cfg, None, make_suite(plain=6, trigger=4, seeds=2, second="Grace", both=2), scorer=scorer)
    assert result["base"]["prompt_following"] >= 0.7, result
    assert result["base"]["likeness"] <= 0.15, result
    assert result["base"]["likeness_grace"] <= 0.15 and result["base"]["grace_elsewhere"] <= 0.1, result
