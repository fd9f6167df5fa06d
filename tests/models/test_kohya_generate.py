"""`generate --lora` with the kohya file `lookalike train` writes: the same image as the diffusers file.

A LoRA is built on the tiny twin exactly as training builds it (`train.lora.add_lora`, the tiny
preset's rank 4 and alpha 2, so the PEFT scale is 0.5 and a lost alpha shows), its weights set to
random values (training would start B at zero, which draws the base image), and written by both of
lookalike's exporters. Both files then go through the one sampler.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import draw, run_cli
from lookalike.models.flux1 import FAMILY as FLUX1
from lookalike.errors import LoraError
from lookalike.models.lora import LoraSpec, apply_loras

RANK, ALPHA = 4, 2.0  # the tiny preset's LoRA shape
PROMPT, SEED = "a photo of Arthur as a wizard", 0


def trained_like_lora(twin_dir, targets, folder, seed: int):
    """(diffusers file, kohya file) of one random LoRA, exported as `lookalike train` exports it."""
    from diffusers import FluxTransformer2DModel

    from lookalike.export import save_diffusers_lora, save_kohya_lora
    from lookalike.models.flux_keys import module_out_features
    from lookalike.train.lora import add_lora, lora_state_dict

    transformer = FluxTransformer2DModel.from_pretrained(twin_dir, subfolder="transformer")
    lora = add_lora(transformer, RANK, ALPHA, targets)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    state = {k: v.detach().float() for k, v in lora_state_dict(transformer).items()}
    diffusers = save_diffusers_lora(state, lora.config, folder / "lora.safetensors", {})
    kohya = save_kohya_lora(state, ALPHA, module_out_features(transformer), folder / "lora-kohya.safetensors", {})
    return diffusers, kohya


def drawn_with(twin_dir, specs) -> np.ndarray:
    """PROMPT at SEED through the one sampler on a fresh twin pipeline with `specs` applied."""
    from lookalike.models.source import load_pipeline, resolve_source

    pipe = load_pipeline(resolve_source(str(twin_dir)), torch.float32)
    pipe.set_progress_bar_config(disable=True)
    apply_loras(pipe, specs)
    return draw(pipe, PROMPT, SEED)


@pytest.fixture(scope="module", params=["seed", "all-linear"])
def exported(request, twin_dir, tmp_path_factory, one_thread):
    """`seed`: the default targets (single blocks' linear1 with proj_mlp untouched); `all-linear` adds
    MLPs, modulation and the global proj_out (kohya final_layer_linear, alpha folded on export)."""
    folder = tmp_path_factory.mktemp(f"lora-{request.param}")
    return trained_like_lora(twin_dir, FLUX1.targets(request.param), folder, seed=1)


@pytest.fixture(scope="module")
def style(twin_dir, tmp_path_factory):
    """A second LoRA on other modules, for stacking."""
    return trained_like_lora(twin_dir, ["proj_mlp", "ff.net.0.proj"], tmp_path_factory.mktemp("style"), seed=2)


def test_kohya_file_draws_the_diffusers_files_image(twin_dir, twin_pipe, exported):
    diffusers_file, kohya_file = exported
    via_diffusers = drawn_with(twin_dir, [LoraSpec(path=str(diffusers_file))])
    via_kohya = drawn_with(twin_dir, [LoraSpec(path=str(kohya_file))])
    assert np.abs(via_diffusers - draw(twin_pipe, PROMPT, SEED)).mean() > 1.0  # the LoRA does something
    assert np.abs(via_diffusers - via_kohya).max() <= 1.0  # same up to 8-bit rounding


def test_kohya_alpha_is_honoured(twin_dir, exported, tmp_path):
    """The same file with every `.alpha` set to the rank (PEFT scale 1, what a dropped alpha gives)
    draws another image: so the agreement above needs alpha / rank applied."""
    diffusers_file, kohya_file = exported
    state = load_file(str(kohya_file))
    for key in [k for k in state if k.endswith(".alpha")]:
        state[key] = torch.tensor(float(state[key.replace(".alpha", ".lora_down.weight")].shape[0]))
    unscaled = tmp_path / "alpha-is-rank.safetensors"
    save_file(state, str(unscaled))
    via_diffusers = drawn_with(twin_dir, [LoraSpec(path=str(diffusers_file))])
    assert np.abs(drawn_with(twin_dir, [LoraSpec(path=str(unscaled))]) - via_diffusers).max() > 1.0


def test_kohya_file_stacks_with_its_own_weight(twin_dir, exported, style):
    """Each file its own adapter and weight: kohya + diffusers equals diffusers + diffusers."""
    (identity_d, identity_k), (style_d, _) = exported, style
    style_spec = LoraSpec(path=str(style_d), weight=-0.5)
    mixed = drawn_with(twin_dir, [LoraSpec(path=str(identity_k), weight=0.7), style_spec])
    same = drawn_with(twin_dir, [LoraSpec(path=str(identity_d), weight=0.7), style_spec])
    flipped = drawn_with(twin_dir, [LoraSpec(path=str(identity_k), weight=-0.7), style_spec])
    assert np.abs(mixed - same).max() <= 1.0
    assert np.abs(mixed - flipped).mean() > 1.0  # the kohya adapter's own weight reaches it


def test_cli_generate_with_the_kohya_file(twin_dir, style, tmp_path):
    """`lookalike generate --preset tiny --lora lora-kohya.safetensors:0.8` in a real process."""
    from PIL import Image

    diffusers_file, kohya_file = style
    out = tmp_path / "out"
    result = run_cli(["generate", "--preset", "tiny", PROMPT, "--seed", str(SEED), "--lora", f"{kohya_file}:0.8",
                      "--set", f"model.source={twin_dir}", "--out", str(out)], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    (png,) = out.glob("0*.png")
    assert json.loads(Image.open(png).text["loras"])  # the LoRA is recorded
    in_process = drawn_with(twin_dir, [LoraSpec(path=str(diffusers_file), weight=0.8)])
    assert np.abs(np.asarray(Image.open(png), dtype=np.float64) - in_process).max() <= 1.0


def _kohya(tmp_path, name: str, module: str, down: tuple[int, int], up: tuple[int, int]):
    path = tmp_path / f"{name}.safetensors"
    save_file({f"lora_unet_{module}.lora_down.weight": torch.zeros(down),
               f"lora_unet_{module}.lora_up.weight": torch.zeros(up), f"lora_unet_{module}.alpha": torch.tensor(4.0)},
              str(path))
    return path


@pytest.mark.parametrize(
    "module, down, up, message",
    [
        # FLUX.1-dev's widths on the twin (inner 32): fused and unfused modules
        ("double_blocks_0_img_attn_qkv", (4, 3072), (9216, 4), "9216 rows .* trained on another model size"),
        ("single_blocks_0_linear2", (4, 15360), (3072, 4), "input size 15360, but .* has 160.* another size"),
        # a block the twin (2 double blocks) does not have
        ("double_blocks_9_img_attn_qkv", (4, 32), (96, 4), "no module 'transformer_blocks.9.attn.to_q'"),
        ("double_blocks_9_img_attn_proj", (4, 32), (32, 4), "which this model does not have"),
        # a kohya key that is no FLUX.1 module
        ("joint_blocks_0_x_block_attn_qkv", (4, 32), (96, 4), "no entry in the FLUX key table"),
    ],
)
def test_kohya_file_that_does_not_fit_is_refused_before_loading(fresh_pipe, tmp_path, module, down, up, message):
    path = _kohya(tmp_path, "wrong", module, down, up)
    with pytest.raises(LoraError, match=message) as e:
        apply_loras(fresh_pipe, [LoraSpec(path=str(path))])
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert not fresh_pipe.get_list_adapters()  # nothing was loaded
