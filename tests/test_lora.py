"""LoRAs in the sampler: effect, weight 0, stacking, kohya format, and every bad file."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from helpers import DOUBLE_ATTN, draw, lora_state, save_diffusers_lora
from lookalike.errors import LoraError
from lookalike.models.lora import LoraSpec, apply_loras, parse_lora_arg

SEED_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@pytest.fixture(scope="module")
def identity_lora(twin_dir, tmp_path_factory):
    state, config = lora_state(twin_dir, SEED_TARGETS, rank=4, alpha=2.0, seed=1)
    return save_diffusers_lora(state, config, tmp_path_factory.mktemp("lora") / "arthur.safetensors")


@pytest.fixture(scope="module")
def style_lora(twin_dir, tmp_path_factory):
    state, config = lora_state(twin_dir, ["proj_mlp", "ff.net.0.proj"], rank=2, alpha=4.0, seed=2)
    return save_diffusers_lora(state, config, tmp_path_factory.mktemp("lora") / "style.safetensors")


def test_lora_changes_output_and_weight_zero_is_base(twin_pipe, fresh_pipe, identity_lora):
    base = draw(twin_pipe)
    apply_loras(fresh_pipe, [LoraSpec(path=str(identity_lora), weight=1.0)])
    assert np.abs(draw(fresh_pipe) - base).mean() > 1.0
    fresh_pipe.set_adapters(["arthur"], adapter_weights=[0.0])
    assert np.array_equal(draw(fresh_pipe), base)


def test_weight_zero_from_the_start_is_base(twin_pipe, fresh_pipe, identity_lora):
    apply_loras(fresh_pipe, [LoraSpec(path=str(identity_lora), weight=0.0)])
    assert np.array_equal(draw(fresh_pipe), draw(twin_pipe))


def test_negative_weight_is_allowed_and_acts(twin_pipe, fresh_pipe, identity_lora):
    apply_loras(fresh_pipe, [LoraSpec(path=str(identity_lora), weight=-1.0)])
    neg = draw(fresh_pipe)
    fresh_pipe.set_adapters(["arthur"], adapter_weights=[1.0])
    pos = draw(fresh_pipe)
    base = draw(twin_pipe)
    assert np.abs(neg - base).mean() > 1.0 and np.abs(neg - pos).mean() > 1.0


def test_two_loras_stack(fresh_pipe, identity_lora, style_lora):
    names = apply_loras(fresh_pipe, [LoraSpec(path=str(identity_lora), weight=1.0), LoraSpec(path=str(style_lora), weight=0.8)])
    assert names == ["arthur", "style"]
    both = draw(fresh_pipe)
    fresh_pipe.set_adapters(names, adapter_weights=[1.0, 0.0])
    identity_only = draw(fresh_pipe)
    fresh_pipe.set_adapters(names, adapter_weights=[0.0, 0.8])
    style_only = draw(fresh_pipe)
    assert np.abs(both - identity_only).mean() > 1.0
    assert np.abs(both - style_only).mean() > 1.0


def test_stack_with_zero_weight_equals_single(twin_dir, fresh_pipe, identity_lora, style_lora):
    from lookalike.models.source import load_pipeline, resolve_source

    apply_loras(fresh_pipe, [LoraSpec(path=str(identity_lora), weight=1.0), LoraSpec(path=str(style_lora), weight=0.0)])
    single = load_pipeline(resolve_source(str(twin_dir)), torch.float32)
    single.set_progress_bar_config(disable=True)
    apply_loras(single, [LoraSpec(path=str(identity_lora), weight=1.0)])
    assert np.array_equal(draw(fresh_pipe), draw(single))


def test_kohya_and_diffusers_formats_give_the_same_image(twin_dir, twin_pipe, tmp_path):
    from lookalike.models.source import load_pipeline, resolve_source
    from lookalike.models.flux_keys import lora_to_kohya, module_out_features

    # diffusers' kohya importer hard-codes FLUX.1's real single-block sizes, so on the twin the
    # cross-format check covers the double blocks (test_flux_keys covers single blocks at real size).
    state, config = lora_state(twin_dir, DOUBLE_ATTN, rank=4, alpha=2.0, seed=3)
    diffusers_file = save_diffusers_lora(state, config, tmp_path / "d.safetensors")
    kohya_file = tmp_path / "k.safetensors"
    save_file(lora_to_kohya(state, alpha=2.0, module_dims=module_out_features(twin_pipe.transformer)), str(kohya_file))

    images = []
    for f in (diffusers_file, kohya_file):
        pipe = load_pipeline(resolve_source(str(twin_dir)), torch.float32)
        pipe.set_progress_bar_config(disable=True)
        apply_loras(pipe, [LoraSpec(path=str(f), weight=1.0)])
        images.append(draw(pipe))
    assert np.abs(images[0] - draw(twin_pipe)).mean() > 1.0
    assert np.abs(images[0] - images[1]).max() <= 1.0  # same up to 8-bit rounding of fp32 noise


@pytest.mark.parametrize(
    "text, path, weight",
    [("a.safetensors", "a.safetensors", 1.0), ("a.safetensors:0.5", "a.safetensors", 0.5),
     ("dir/a.safetensors:-0.7", "dir/a.safetensors", -0.7), ("C:\\x\\a.safetensors", "C:\\x\\a.safetensors", 1.0)],
)
def test_parse_lora_arg(text, path, weight):
    spec = parse_lora_arg(text)
    assert (spec.path, spec.weight) == (path, weight)


def test_non_number_weight_is_refused():
    with pytest.raises(LoraError, match="'strong' is not a number"):
        parse_lora_arg("style.safetensors:strong")


def test_missing_lora_file(fresh_pipe, tmp_path):
    with pytest.raises(LoraError, match="not found") as e:
        apply_loras(fresh_pipe, [LoraSpec(path=str(tmp_path / "nope.safetensors"))])
    assert "nope.safetensors" in str(e.value)


def test_file_that_is_not_safetensors(fresh_pipe, tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("hello")
    with pytest.raises(LoraError, match="not a readable .safetensors file"):
        apply_loras(fresh_pipe, [LoraSpec(path=str(path))])


def test_file_that_is_not_a_lora(fresh_pipe, tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"transformer_blocks.0.attn.to_q.weight": torch.zeros(32, 32)}, str(path))
    with pytest.raises(LoraError, match="is not a LoRA"):
        apply_loras(fresh_pipe, [LoraSpec(path=str(path))])


def test_lora_for_another_family(fresh_pipe, tmp_path):
    path = tmp_path / "sdxl_style.safetensors"
    save_file({
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4),
    }, str(path))
    with pytest.raises(LoraError, match="UNet model"):
        apply_loras(fresh_pipe, [LoraSpec(path=str(path))])


def test_lora_with_mismatched_shapes(fresh_pipe, tmp_path):
    path = tmp_path / "big.safetensors"
    save_file({
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 3072),
        "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(3072, 4),
    }, str(path))
    with pytest.raises(LoraError, match="input size 3072, but transformer.transformer_blocks.0.attn.to_q has 32"):
        apply_loras(fresh_pipe, [LoraSpec(path=str(path))])


def test_bad_second_lora_leaves_pipeline_untouched(twin_pipe, fresh_pipe, identity_lora, tmp_path):
    with pytest.raises(LoraError):
        apply_loras(fresh_pipe, [LoraSpec(path=str(identity_lora)), LoraSpec(path=str(tmp_path / "missing.safetensors"))])
    assert np.array_equal(draw(fresh_pipe), draw(twin_pipe))


def test_generate_to_folder_matches_the_sampler_and_records_loras(twin_dir, identity_lora, tmp_path):
    """The CLI's path (encode, drop the text encoders, then denoise) gives the same pixels as the sampler."""
    from PIL import Image

    from lookalike.config import load_config
    from lookalike.generate import generate_to_folder
    from lookalike.models.source import load_pipeline, resolve_source

    cfg = load_config(preset="tiny", overrides=[
        f"model.source={twin_dir}", "generate.seeds=[5]", f"generate.loras=[{{path: '{identity_lora}', weight: 0.7}}]"])
    (path,) = generate_to_folder(cfg, ["Arthur on a beach"], tmp_path / "out")
    reference = load_pipeline(resolve_source(str(twin_dir)), torch.float32)
    reference.set_progress_bar_config(disable=True)
    apply_loras(reference, [LoraSpec(path=str(identity_lora), weight=0.7)])
    assert np.array_equal(np.asarray(Image.open(path), dtype=np.float64), draw(reference, "Arthur on a beach", 5))
    assert "arthur" in Image.open(path).text["loras"] and (tmp_path / "out" / "grid.png").exists()


def test_batched_sampling_gives_the_same_images_in_the_same_order(twin_pipe):
    """generate.batch_size shares denoising calls, never noise: each pair keeps its own seed's generator."""
    from dataclasses import replace

    from helpers import TINY
    from lookalike.generate import encode_prompts, sample

    emb = encode_prompts(twin_pipe, ["Arthur on a beach", "a woman in a city"], TINY.max_sequence_length)
    alone = list(sample(twin_pipe, emb, [3, 4], TINY))
    batched = list(sample(twin_pipe, emb, [3, 4], replace(TINY, batch_size=3)))  # 3 + 1: a batch straddles prompts
    assert [(s.prompt, s.seed) for s in batched] == [(s.prompt, s.seed) for s in alone]
    for a, b in zip(alone, batched):
        diff = np.abs(np.asarray(a.image, dtype=np.int16) - np.asarray(b.image, dtype=np.int16))
        assert diff.max() <= 1, (a.prompt, a.seed)
    first, second = (np.asarray(s.image, dtype=np.float64) for s in batched[:2])
    assert np.abs(first - second).mean() > 1.0  # two seeds of one prompt in one call are two pictures
