"""Both exported LoRA files apply at strength 1.0 exactly as trained: in diffusers, and by ComfyUI's key rules.

The LoRA is made on the tiny FLUX.1 twin as training makes it (`add_lora`, rank 4, alpha 2: PEFT scale
0.5, so a lost alpha doubles the change and shows), its lora_B set to random values. The reference is the
trained model itself: each wrapped module's W' - W (PEFT's own `get_delta_weight`), put into ComfyUI's
native (BFL) layout by `flux_keys.transformer_to_bfl`.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lookalike.export import header, read_header, save_diffusers_lora, save_kohya_lora
from lookalike.models import comfy_rules
from lookalike.models.flux_keys import module_out_features, transformer_to_bfl

RANK, ALPHA = 4, 2.0
# q/k/v of both block kinds (row slices of fused qkv / linear1), proj_mlp (linear1's last slice), the
# single blocks' proj_out and the global proj_out (kohya: alpha folded), an MLP and a modulation.
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "proj_mlp", "proj_out", "ff.net.0.proj", "norm1.linear"]
CAPTIONS = ["Arthur, smiling, on a beach", "Arthur, on a beach", "Arthur in a kitchen"]
DATE = "2026-01-02T03:04:05"


def _inputs():
    g = torch.Generator().manual_seed(1)
    return dict(
        hidden_states=torch.randn(1, 16, 64, generator=g), encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
        pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([0.5]),
        img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3), guidance=torch.tensor([3.5]),
    )


@pytest.fixture(scope="module")
def trained():
    """(wrapped transformer, LoraSummary, base diffusers state dict, {diffusers weight: W' - W})."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from lookalike.models.twin import build_twin
    from lookalike.train.lora import add_lora

    transformer = build_twin().transformer
    base = {k: v.detach().clone() for k, v in transformer.state_dict().items()}
    summary = add_lora(transformer, rank=RANK, alpha=ALPHA, targets=TARGETS, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    deltas = {f"{name}.weight": m.get_delta_weight("default").detach().clone()
              for name, m in transformer.named_modules() if isinstance(m, BaseTunerLayer)}
    assert len(deltas) > 20 and all(d.abs().max() > 0 for d in deltas.values())
    return transformer, summary, base, deltas


@pytest.fixture(scope="module")
def native(trained):
    """The trained change in ComfyUI's native layout: ({native weight: ΔW}, {native weight: shape})."""
    _, _, base, deltas = trained
    full = transformer_to_bfl({k: deltas.get(k, torch.zeros_like(v)) for k, v in base.items()})
    return full, {k: tuple(v.shape) for k, v in full.items()}


@pytest.fixture(scope="module")
def modules(trained):
    return module_out_features(trained[0])


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """(diffusers file, kohya file), written as `lookalike train` writes them, with full headers."""
    from lookalike.train.lora import lora_state_dict

    transformer, summary, _, _ = trained
    folder = tmp_path_factory.mktemp("export")
    state = {k: v.detach().float() for k, v in lora_state_dict(transformer).items()}
    meta = header("Arthur", RANK, ALPHA, TARGETS, "lookalike:tiny-twin", 123, family="flux1", resolution=512,
                  captions=CAPTIONS, date=DATE)
    diffusers = save_diffusers_lora(state, summary.config, folder / "lora.safetensors", meta)
    kohya = save_kohya_lora(state, ALPHA, module_out_features(transformer), folder / "lora-kohya.safetensors", meta)
    return diffusers, kohya


def _metadata(path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def test_diffusers_file_loads_in_flux_pipeline_as_trained(trained, exported):
    from diffusers import FluxPipeline, Flux2KleinPipeline
    from peft.tuners.tuners_utils import BaseTunerLayer

    from lookalike.models.twin import build_twin

    transformer, _, _, deltas = trained
    path = exported[0]
    state, alphas = FluxPipeline.lora_state_dict(str(path), return_alphas=True)
    assert not alphas and all(k.startswith("transformer.") for k in state)
    # FLUX.2's loader would refuse a key without "lora" in it (an `.alpha` tensor): there is none.
    assert all("lora" in k for k in Flux2KleinPipeline.lora_state_dict(str(path)))

    fresh = build_twin()
    fresh.load_lora_weights(str(path), adapter_name="arthur")
    loaded = {f"{n}.weight": m.get_delta_weight("arthur") for n, m in fresh.transformer.named_modules()
              if isinstance(m, BaseTunerLayer)}
    assert loaded.keys() == deltas.keys()
    for k in deltas:
        torch.testing.assert_close(loaded[k], deltas[k], rtol=0, atol=1e-6, msg=k)
    with torch.no_grad():
        want, got = transformer(**_inputs()).sample, fresh.transformer(**_inputs()).sample
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("which", ["diffusers", "kohya"])
def test_comfy_rules_take_every_key_and_apply_the_trained_change(exported, native, modules, which):
    path = exported[0] if which == "diffusers" else exported[1]
    lora = load_file(str(path))
    loaded = comfy_rules.match(lora, "flux1", modules)
    assert loaded.unloaded == [], f"ComfyUI would print 'lora key not loaded' for {loaded.unloaded[:5]}"
    want, shapes = native
    got = comfy_rules.native_deltas(loaded, lora, shapes, strength=1.0)
    assert any(p.target.rows for p in loaded.patches) == (which == "diffusers")  # q/k/v as slices of qkv/linear1
    assert set(got) <= set(want)
    for name, w in want.items():
        torch.testing.assert_close(got.get(name, torch.zeros(shapes[name])), w, rtol=0, atol=1e-6, msg=name)


def test_the_old_diffusers_layout_is_twice_as_strong_in_comfy(trained, native, modules, tmp_path):
    """alpha only in `lora_adapter_metadata` (the layout before): ComfyUI sees scale 1.0, 2x the trained ΔW."""
    from diffusers import FluxPipeline

    from lookalike.train.lora import lora_state_dict

    transformer, summary, _, _ = trained
    FluxPipeline.save_lora_weights(str(tmp_path), transformer_lora_layers=lora_state_dict(transformer),
                                   weight_name="old.safetensors",
                                   transformer_lora_adapter_metadata=summary.config.to_dict())
    lora = load_file(str(tmp_path / "old.safetensors"))
    loaded = comfy_rules.match(lora, "flux1", modules)
    assert loaded.unloaded == []
    want, shapes = native
    got = comfy_rules.native_deltas(loaded, lora, shapes)
    name = "double_blocks.0.img_attn.qkv.weight"
    torch.testing.assert_close(got[name], 2 * want[name], rtol=0, atol=1e-6)


def test_headers(exported):
    diffusers, kohya = exported
    for path, alpha in ((diffusers, "4.0"), (kohya, "2.0")):  # the diffusers file's alpha is folded: alpha = rank
        meta = _metadata(path)
        assert read_header(path) == {"trigger": "Arthur", "rank": "4", "alpha": "2.0", "steps": "123",
                                     "base_model": "lookalike:tiny-twin", "targets": json.dumps(TARGETS)}
        assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == alpha, path.name
        assert meta["ss_network_module"] == "networks.lora_flux"
        assert meta["ss_base_model_version"] == "flux1"
        assert meta["ss_output_name"] == "Arthur" and "Arthur" in meta["ss_training_comment"]
        assert meta["ss_resolution"] == "(512, 512)" and meta["modelspec.resolution"] == "512x512"
        assert json.loads(meta["ss_tag_frequency"]) == {
            "1_Arthur": {"Arthur": 2, "on a beach": 2, "smiling": 1, "Arthur in a kitchen": 1}}
        assert meta["modelspec.sai_model_spec"] == "1.0.1"
        assert meta["modelspec.architecture"] == "flux-1-dev/lora"
        assert meta["modelspec.implementation"] == "https://github.com/black-forest-labs/flux"
        assert meta["modelspec.title"] == "Arthur" and meta["modelspec.date"] == DATE
        assert all(isinstance(v, str) for v in meta.values())
    assert "lora_adapter_metadata" not in _metadata(diffusers)


def test_header_defaults_and_families():
    old = header("Arthur", 32, 16, ["to_q"], "black-forest-labs/FLUX.1-dev", 10)  # the old call: the old six fields
    assert set(old) == {f"lookalike.{k}" for k in ("trigger", "rank", "alpha", "targets", "base_model", "steps")}
    flux1 = header("Arthur", 32, 16, ["to_q"], "black-forest-labs/FLUX.1-dev", 10, family="flux1")
    assert flux1["lookalike.alpha"] == "16" and flux1["ss_network_alpha"] == "16.0"
    assert "ss_tag_frequency" not in flux1 and "modelspec.resolution" not in flux1
    assert flux1["modelspec.date"].startswith("20")
    with pytest.raises(ValueError, match="needs family="):
        header("Arthur", 32, 16, ["to_q"], "x", 10, captions=["Arthur"])
    klein = header("Arthur", 32, 16, ["to_q"], "FLUX.2-klein-base-4B", 10, family="flux2-klein",
                   architecture="Flux.2-klein-4b/lora", resolution=(1024, 768), title="Arthur v1")
    assert klein["modelspec.architecture"] == "Flux.2-klein-4b/lora"
    assert klein["ss_network_module"] == "networks.lora_flux_2"
    assert klein["modelspec.resolution"] == "1024x768" and klein["modelspec.title"] == "Arthur v1"
    with pytest.raises(ValueError, match="unknown model family 'sdxl'"):
        header("Arthur", 32, 16, ["to_q"], "x", 10, family="sdxl")


def _pair(name: str, a: str = "lora_A.weight", b: str = "lora_B.weight", din: int = 32, dout: int = 32) -> dict:
    return {f"{name}.{a}": torch.ones(2, din), f"{name}.{b}": torch.ones(dout, 2)}


def test_keys_comfy_would_not_load_are_reported(modules):
    lora = {
        **_pair("diffusion_model.transformer_blocks.0.attn.to_q"),  # diffusers name after diffusion_model.: no
        **_pair("lora_unet_transformer_blocks_0_attn_to_k", "lora_down.weight", "lora_up.weight"),  # ditto, kohya
        **_pair("transformer.transformer_blocks.7.attn.to_q"),  # a block the model lacks
        "transformer.transformer_blocks.0.attn.to_v.lora_A.weight": torch.ones(2, 32),  # down without up
        "transformer.transformer_blocks.1.attn.to_q.alpha": torch.tensor(1.0),  # an alpha alone
        **_pair("transformer.transformer_blocks.0.attn.to_out.0"),  # fine
    }
    loaded = comfy_rules.match(lora, "flux1", modules)
    assert [p.module for p in loaded.patches] == ["transformer.transformer_blocks.0.attn.to_out.0"]
    assert loaded.unloaded == [k for k in lora if "to_out" not in k]


def test_flux1_spellings_comfy_accepts(modules):
    forms = {
        "transformer.transformer_blocks.1.attn.to_k": ("double_blocks.1.img_attn.qkv.weight", (32, 64)),
        "single_transformer_blocks.0.proj_mlp": ("single_blocks.0.linear1.weight", (96, 96 + 128)),
        "lora_transformer_single_transformer_blocks_1_attn_to_v": ("single_blocks.1.linear1.weight", (64, 96)),
        "lycoris_transformer_blocks_0_ff_net_0_proj": ("double_blocks.0.img_mlp.0.weight", None),
        "diffusion_model.double_blocks.0.txt_attn.qkv": ("double_blocks.0.txt_attn.qkv.weight", None),
        "lora_unet_single_blocks_1_linear2": ("single_blocks.1.linear2.weight", None),
        "double_blocks.1.img_mod.lin": ("double_blocks.1.img_mod.lin.weight", None),
    }
    lora = {}
    for name in forms:
        lora.update(_pair(name, "lora_down.weight", "lora_up.weight") | {f"{name}.alpha": torch.tensor(1.0)})
    loaded = comfy_rules.match(lora, "flux1", modules)
    assert loaded.unloaded == []
    got = {p.module: (p.target.weight, p.target.rows, p.scale) for p in loaded.patches}
    assert got == {name: (w, rows, 0.5) for name, (w, rows) in forms.items()}


def _meta_modules(cls, **config) -> dict[str, int]:
    with torch.device("meta"):
        return module_out_features(cls(**config))


def test_flux2_rules():
    from diffusers import Flux2Transformer2DModel

    modules = _meta_modules(Flux2Transformer2DModel, patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                            attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                            timestep_guidance_channels=16, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False)
    lora = {**_pair("transformer.transformer_blocks.0.attn.to_v"),
            **_pair("transformer.single_transformer_blocks.0.attn.to_qkv_mlp_proj", dout=288),
            **_pair("transformer.single_transformer_blocks.0.attn.to_out", din=128),
            **_pair("diffusion_model.double_blocks.0.img_mlp.0", dout=192),
            **_pair("transformer.double_stream_modulation_img.linear", dout=192),
            **_pair("diffusion_model.transformer_blocks.0.attn.to_q")}
    loaded = comfy_rules.match(lora, "flux2-klein", modules)
    assert {p.module: (p.target.weight, p.target.rows) for p in loaded.patches} == {
        "transformer.transformer_blocks.0.attn.to_v": ("double_blocks.0.img_attn.qkv.weight", (64, 96)),
        "transformer.single_transformer_blocks.0.attn.to_qkv_mlp_proj": ("single_blocks.0.linear1.weight", None),
        "transformer.single_transformer_blocks.0.attn.to_out": ("single_blocks.0.linear2.weight", None),
        "diffusion_model.double_blocks.0.img_mlp.0": ("double_blocks.0.img_mlp.0.weight", None),
        "transformer.double_stream_modulation_img.linear": ("double_stream_modulation_img.lin.weight", None),
    }
    assert loaded.unloaded == list(_pair("diffusion_model.transformer_blocks.0.attn.to_q"))


def test_z_image_and_qwen_image_rules():
    from diffusers import QwenImageTransformer2DModel, ZImageTransformer2DModel

    z = _meta_modules(ZImageTransformer2DModel, dim=64, n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2,
                      cap_feat_dim=32, axes_dims=[8, 12, 12], axes_lens=[64, 32, 32])
    lora = {**_pair("diffusion_model.layers.0.attention.to_k"), **_pair("transformer.layers.0.attention.to_out.0"),
            **_pair("layers.0.feed_forward.w1"), **_pair("lora_unet_layers_0_attention_qkv"),
            **_pair("transformer.all_x_embedder.2-1"), **_pair("lora_unet_layers_0_attention_to_q")}
    loaded = comfy_rules.match(lora, "z-image", z)
    assert {p.module: (p.target.weight, p.target.rows) for p in loaded.patches} == {
        "diffusion_model.layers.0.attention.to_k": ("layers.0.attention.qkv.weight", (64, 128)),
        "transformer.layers.0.attention.to_out.0": ("layers.0.attention.out.weight", None),
        "layers.0.feed_forward.w1": ("layers.0.feed_forward.w1.weight", None),
        "lora_unet_layers_0_attention_qkv": ("layers.0.attention.qkv.weight", None),
        "transformer.all_x_embedder.2-1": ("x_embedder.weight", None),
    }
    assert loaded.unloaded == list(_pair("lora_unet_layers_0_attention_to_q"))

    q = _meta_modules(QwenImageTransformer2DModel, num_layers=1, attention_head_dim=16, num_attention_heads=2,
                      joint_attention_dim=32, in_channels=16, axes_dims_rope=(4, 6, 6))
    names = ["transformer_blocks.0.attn.to_q", "transformer.transformer_blocks.0.img_mlp.net.0.proj",
             "diffusion_model.transformer_blocks.0.attn.to_add_out", "lora_unet_transformer_blocks_0_img_mod_1"]
    lora = {k: v for n in names + ["transformer.transformer_blocks.3.attn.to_q"] for k, v in _pair(n).items()}
    loaded = comfy_rules.match(lora, "qwen-image", q)
    assert [p.target.weight for p in loaded.patches] == [
        "transformer_blocks.0.attn.to_q.weight", "transformer_blocks.0.img_mlp.net.0.proj.weight",
        "transformer_blocks.0.attn.to_add_out.weight", "transformer_blocks.0.img_mod.1.weight"]
    assert loaded.unloaded == list(_pair("transformer.transformer_blocks.3.attn.to_q"))
    with pytest.raises(ValueError, match="no ComfyUI key rules for model family 'sdxl'"):
        comfy_rules.match(lora, "sdxl", q)


def test_alpha_tensors_a_loader_leaves_are_folded(tmp_path):
    """A diffusers-keyed file with `.alpha` tensors, for a pipeline whose loader leaves them (FLUX.2's)."""
    from lookalike.models.lora import fold_alphas

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 32, generator=g), torch.randn(32, 4, generator=g)
    state = {"transformer.x.lora_A.weight": a, "transformer.x.lora_B.weight": b, "transformer.x.alpha": torch.tensor(2.0)}
    folded = fold_alphas(state, tmp_path / "f.safetensors")
    assert set(folded) == {"transformer.x.lora_A.weight", "transformer.x.lora_B.weight"}
    product = folded["transformer.x.lora_B.weight"] @ folded["transformer.x.lora_A.weight"]
    torch.testing.assert_close(product, 0.5 * b @ a)


def test_a_diffusers_file_with_alpha_tensors_generates_like_ours(trained, exported, tmp_path):
    """`lookalike generate`'s loader: our folded file and the same LoRA as diffusers keys + `.alpha`
    tensors (what SimpleTuner-style files carry) give the same model."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from lookalike.config import LoraSpec
    from lookalike.models.lora import apply_loras
    from lookalike.models.twin import build_twin
    from lookalike.train.lora import lora_state_dict

    transformer, _, _, deltas = trained
    state = {f"transformer.{k}": v for k, v in lora_state_dict(transformer).items()}
    state |= {k.replace(".lora_A.weight", ".alpha"): torch.tensor(ALPHA) for k in state if k.endswith(".lora_A.weight")}
    save_file(state, str(tmp_path / "alphas.safetensors"))
    for path in (exported[0], tmp_path / "alphas.safetensors"):
        pipe = build_twin()
        (name,) = apply_loras(pipe, [LoraSpec(path=str(path))])
        for n, m in pipe.transformer.named_modules():
            if isinstance(m, BaseTunerLayer):
                torch.testing.assert_close(m.get_delta_weight(name), deltas[f"{n}.weight"], rtol=0, atol=1e-6)


def test_fold_follows_peft_alpha_pattern_and_rslora():
    from peft import LoraConfig

    from lookalike.export import fold_alpha, peft_scale

    config = LoraConfig(r=4, lora_alpha=2, alpha_pattern={"to_q": 8}, target_modules=["to_q", "to_k"])
    assert peft_scale(config, "transformer_blocks.0.attn.to_q", 4) == 2.0
    assert peft_scale(config, "transformer_blocks.0.attn.to_k", 4) == 0.5
    assert peft_scale(LoraConfig(r=4, lora_alpha=2, use_rslora=True), "x.to_k", 4) == 1.0
    state = {"transformer_blocks.0.attn.to_k.lora_A.weight": torch.ones(4, 8),
             "transformer_blocks.0.attn.to_k.lora_B.weight": torch.ones(8, 4)}
    folded = fold_alpha(state, config.to_dict(), "transformer.")
    assert set(folded) == {f"transformer.{k}" for k in state}
    assert folded["transformer.transformer_blocks.0.attn.to_k.lora_B.weight"].max() == 0.5
