"""FLUX.2 ([dev], and [klein] 4B / 9B): the families' values and hooks.

    text            hidden states of three layers of one LLM, stacked: Cond {"text": [B, L, 3·D_llm]}
                    (dev: Mistral Small 3.x 24B, layers 10/20/30; klein: Qwen3 4B / 8B, layers 9/18/27)
    latents         32 channels, 8x VAE, then 2x2 patchified to 128 channels and normalised by the VAE's
                    batch-norm statistics: z = (patchify(z_vae) - μ_bn) / σ_bn, [B, 128, H/16, W/16]
    transformer     one token per latent pixel (the patchifying is in the latents), RoPE ids (t, row, col,
                    l) over four axes, σ as the timestep
    guidance        dev: distilled into an embedding, one forward per step (like FLUX.1);
                    klein base: none in the model, true classifier-free guidance with a negative prompt
    blocks          double (`transformer_blocks`) and single (`single_transformer_blocks`); a single
                    block fuses q/k/v and the MLP input into `attn.to_qkv_mlp_proj` and has a plain
                    `attn.to_out` (a double block's `attn.to_out` is a ModuleList: its Linear is `to_out.0`)

dev and klein share the transformer class and every hook below; they differ in pipeline, text encoder
and guidance. Facts from diffusers 0.42.1 (`pipelines/flux2/pipeline_flux2{,_klein}.py`,
`models/transformers/transformer_flux2.py`), with the training recipes cited in the preset files.
"""

from __future__ import annotations

from lookalike.models.family import Family, cond_to
from lookalike.models.twins_flux2 import TWIN_INDEX

# ---------------------------------------------------------------- pure functions: latents, tokens, ids


def patchify(z):
    """2x2 patches into channels: [B, C, H, W] -> [B, 4C, H/2, W/2] (channel c·4 + 2·dy + dx)."""
    b, c, h, w = z.shape
    z = z.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return z.reshape(b, c * 4, h // 2, w // 2)


def tokens(z):
    """[B, C, h, w] -> [B, h·w, C]: one token per latent pixel, rows then columns."""
    b, c, h, w = z.shape
    return z.reshape(b, c, h * w).permute(0, 2, 1)


def untokens(x, h: int, w: int):
    """Inverse of `tokens`: [B, h·w, C] -> [B, C, h, w]."""
    b, _, c = x.shape
    return x.permute(0, 2, 1).reshape(b, c, h, w)


def image_ids(b: int, h: int, w: int, device=None):
    """RoPE positions of the image tokens: [B, h·w, 4] = (t=0, row, col, l=0), int64."""
    import torch

    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    zero = torch.zeros_like(rows)
    return torch.stack([zero, rows, cols, zero], dim=-1)[None].expand(b, -1, -1)


def text_ids(b: int, length: int, device=None):
    """RoPE positions of the text tokens: [B, L, 4] = (0, 0, 0, l), int64."""
    import torch

    ids = torch.zeros(length, 4, dtype=torch.int64, device=device)
    ids[:, 3] = torch.arange(length, device=device)
    return ids[None].expand(b, -1, -1)


# ---------------------------------------------------------------- the hooks


def encode_text(pipe, prompts, max_sequence_length: int, device=None):
    """The pipeline's own encoder (its chat template, its hidden-state layers) -> {"text": [B, L, D]}."""
    embeds, _ = pipe.encode_prompt(prompt=list(prompts), device=device, max_sequence_length=max_sequence_length)
    return {"text": embeds}


def normalise(vae, z_vae):
    """The VAE's raw latents [B, C, H/8, W/8] -> training latents [B, 4C, H/16, W/16]: patchified, then
    (z - μ_bn) / sqrt(σ²_bn + eps) with the VAE's batch-norm running statistics."""
    import torch

    z = patchify(z_vae)
    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(z)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(z)
    return (z - mean) / std


def encode_latents(vae, pixels):
    """[B, 3, H, W] in [-1, 1] -> [B, 4·C_vae, H/16, W/16]: the distribution's mode, normalised."""
    return normalise(vae, vae.encode(pixels).latent_dist.mode())


def predict_velocity(transformer, z_sigma, sigma, cond, guidance: float):
    """v̂ = f_θ(z_σ, σ, text): [B, C, h, w] -> [B, C, h, w]. σ is the timestep (the pipelines pass t/1000);
    the guidance value goes in only when the model has a guidance embedding (dev), never for klein."""
    import torch

    b, _, h, w = z_sigma.shape
    dtype, device = transformer.dtype, z_sigma.device
    text = cond_to(cond, device, dtype)["text"]
    embedded = transformer.config.guidance_embeds
    out = transformer(
        hidden_states=tokens(z_sigma).to(dtype),
        encoder_hidden_states=text,
        timestep=sigma.to(device, dtype),
        guidance=torch.full((b,), guidance, device=device, dtype=torch.float32) if embedded else None,
        img_ids=image_ids(b, h, w, device),
        txt_ids=text_ids(b, text.shape[1], device),
        return_dict=False,
    )[0]
    return untokens(out, h, w)


def sample_kwargs_dev(cond, negative, settings) -> dict:
    """Flux2Pipeline: the guidance value goes to the embedding; no negative prompt."""
    return {"prompt_embeds": cond["text"], "guidance_scale": settings.guidance,
            "max_sequence_length": settings.max_sequence_length}


def sample_kwargs_klein(cond, negative, settings) -> dict:
    """Flux2KleinPipeline (base): true CFG at settings.cfg, v = v(neg) + w·(v(text) - v(neg)), with the negative
    prompt (by default the empty one)."""
    out = {"prompt_embeds": cond["text"], "guidance_scale": settings.cfg,
           "max_sequence_length": settings.max_sequence_length}
    if negative is not None:
        out["negative_prompt_embeds"] = negative["text"]
    return out


def save_comfy_lora(transformer, state, lora_config, path, meta):
    """`transformer.<diffusers name>.lora_A/B.weight` + `transformer.<name>.alpha` (the trained alpha): ComfyUI
    maps diffusers names onto FLUX.2's fused native weights itself (q/k/v -> qkv rows, to_qkv_mlp_proj ->
    linear1, single attn.to_out -> linear2) and scales by alpha / rank only from `.alpha` tensors."""
    from lookalike.export import save_prefixed_lora

    return save_prefixed_lora(state, lora_config.lora_alpha, "transformer.", path, meta)


def build_klein_twin(seed: int = 0):
    from lookalike.models.twins_flux2 import build_flux2_klein

    return build_flux2_klein(seed)


def build_dev_twin(seed: int = 0):
    from lookalike.models.twins_flux2 import build_flux2_dev

    return build_flux2_dev(seed)



# Target sets. `seed` is what the diffusers FLUX.2 scripts train (train_dreambooth_lora_flux2{,_klein}.py):
# the write-up's four in the double blocks plus both Linears of every single block, so that the 48 (dev) /
# 20-24 (klein) single blocks are adapted too, not only the 8 / 5 double ones. A `*` matches any block
# number (lookalike.train.lora expands it against the model's module names).
SINGLE = ("to_qkv_mlp_proj", "single_transformer_blocks.*.attn.to_out")
SEED = ("to_q", "to_k", "to_v", "to_out.0") + SINGLE
ATTENTION = SEED + ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
ALL_LINEAR = ATTENTION + ("ff.linear_in", "ff.linear_out", "ff_context.linear_in", "ff_context.linear_out")

# Header fields of an exported LoRA (beside architecture and base version): musubi-tuner trains FLUX.2 LoRAs
# with `networks.lora_flux_2`; BFL's reference code is the implementation.
_HEADER = {"network_module": "networks.lora_flux_2", "implementation": "https://github.com/black-forest-labs/flux2"}

_COMMON = dict(
    transformer_class="Flux2Transformer2DModel",
    vae_class="AutoencoderKLFlux2",
    text_parts=("text_encoder", "tokenizer"),
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    lora_targets={"seed": SEED, "attention": ATTENTION, "all-linear": ALL_LINEAR},
    encode_text=encode_text,
    encode_latents=encode_latents,
    predict_velocity=predict_velocity,
)

DEV = Family(
    name="flux2-dev",
    title="FLUX.2 [dev]",
    pipelines=("Flux2Pipeline",),
    pipeline_class="Flux2Pipeline",
    guidance="embedded",
    # one modulation per stream (diffusers and BFL names); the keys cannot tell dev from klein:
    # model.components decides which pipeline the single file joins
    single_file_markers=("double_stream_modulation_img.", "single_stream_modulation."),
    sample_kwargs=sample_kwargs_dev,
    build_twin=build_dev_twin,
    twin_index=TWIN_INDEX["dev"],
    save_comfy_lora=save_comfy_lora,
    twin_source="lookalike:tiny-flux2",
    default_components="black-forest-labs/FLUX.2-dev",
    export={"architecture": "flux-2-dev/lora", "base_version": "flux2", **_HEADER},
    **_COMMON,
)

KLEIN = Family(
    name="flux2-klein",
    title="FLUX.2 [klein]",
    pipelines=("Flux2KleinPipeline",),
    pipeline_class="Flux2KleinPipeline",
    guidance="cfg",
    single_file_markers=(),
    sample_kwargs=sample_kwargs_klein,
    build_twin=build_klein_twin,
    twin_index=TWIN_INDEX["klein"],
    save_comfy_lora=save_comfy_lora,
    twin_source="lookalike:tiny-flux2-klein",
    default_components="black-forest-labs/FLUX.2-klein-base-4B",
    export={"architecture": "flux-2-klein/lora", "base_version": "flux2_klein", **_HEADER},
    **_COMMON,
)
