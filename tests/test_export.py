"""Exported LoRAs: diffusers format reloads with the right alpha; kohya format round-trips; headers."""

import numpy as np
import pytest
import torch

from helpers import draw
from lookalike.export import header, read_header, save_diffusers_lora, save_kohya_lora
from lookalike.models.flux_keys import lora_from_kohya, module_out_features
from lookalike.train.lora import add_lora, lora_state_dict


@pytest.fixture(scope="module")
def trained(twin_dir):
    """The twin's transformer with a seed-recipe LoRA (rank 4, alpha 2) whose weights look trained."""
    from diffusers import FluxTransformer2DModel

    t = FluxTransformer2DModel.from_pretrained(twin_dir, subfolder="transformer")
    summary = add_lora(t, rank=4, alpha=2.0, targets=["to_q", "to_k", "to_v", "to_out.0"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in t.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return t, summary


META = header("Arthur", 4, 2.0, ["to_q", "to_k", "to_v", "to_out.0"], "lookalike:tiny-twin", 123)


def test_diffusers_export_reproduces_the_trained_model(twin_dir, twin_pipe, trained, tmp_path):
    from diffusers import FluxPipeline

    from lookalike.config import LoraSpec
    from lookalike.models.source import load_pipeline, resolve_source
    from lookalike.models.lora import apply_loras

    transformer, summary = trained
    path = save_diffusers_lora(lora_state_dict(transformer), summary.config, tmp_path / "arthur.safetensors", META)
    in_memory = FluxPipeline.from_pretrained(twin_dir, transformer=transformer)
    in_memory.set_progress_bar_config(disable=True)
    reloaded = load_pipeline(resolve_source(str(twin_dir)), torch.float32)
    reloaded.set_progress_bar_config(disable=True)
    apply_loras(reloaded, [LoraSpec(path=str(path))])
    expected = draw(in_memory)
    assert np.abs(expected - draw(twin_pipe)).mean() > 1.0
    assert np.array_equal(draw(reloaded), expected)
    assert read_header(path) == {k.removeprefix("lookalike."): v for k, v in META.items()}


def test_kohya_export_round_trips(trained, tmp_path):
    from safetensors.torch import load_file

    transformer, summary = trained
    state = lora_state_dict(transformer)
    dims = module_out_features(transformer)
    path = save_kohya_lora(state, 2.0, dims, tmp_path / "arthur_kohya.safetensors", META)
    kohya = load_file(str(path))
    assert any(k.startswith("lora_unet_double_blocks_0_img_attn_qkv.lora_down") for k in kohya)
    assert any(k.startswith("lora_unet_single_blocks_1_linear1.lora_up") for k in kohya)
    back, alphas = lora_from_kohya(kohya, dims)
    for key in [k for k in state if k.endswith("lora_A.weight")]:
        module = key.removesuffix(".lora_A.weight")
        delta = 0.5 * state[f"{module}.lora_B.weight"] @ state[key]  # alpha / rank = 2 / 4
        b_key = next(k for k in back if k.endswith(f"{module}.lora_B.weight"))
        a_key = b_key.replace("lora_B", "lora_A")
        rank = back[a_key].shape[0]
        got = alphas[module] / rank * back[b_key] @ back[a_key]
        assert torch.allclose(got, delta, atol=1e-6), module
    assert read_header(path)["trigger"] == "Arthur" and read_header(path)["steps"] == "123"
