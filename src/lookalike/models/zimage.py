"""Z-Image (6B; the base, Tongyi-MAI/Z-Image: see presets/z-image.yaml for Turbo): the family's values and hooks.

    text            Qwen3-4B's second-to-last hidden states of the chat-templated prompt, per caption
                    without its padding: Cond {"text": [B, L, 2560], "mask": [B, L] bool} (rows past a
                    caption's length are padding; the model takes each caption's own rows, a list)
    latents         FLUX.1's VAE (16 channels, 8x): z = (z_vae - shift)·scale
    transformer     one stream over [caption tokens | 2x2 image patches] with 3-axis RoPE. It takes lists
                    (one [C, 1, h, w] latent and one [L_i, D] caption per item), its time runs the other way
                    (t = 1 - σ, 1 = clean) and it predicts x0 - ε = -v: `predict_velocity` hides all three
    guidance        none in the model: true classifier-free guidance in the pipeline, written
                    pos + g·(pos - neg), so the usual scale w (neg + w·(pos - neg)) is g = w - 1
    blocks          `layers` (30), `noise_refiner` (2, image), `context_refiner` (2, caption); attention
                    `attention.to_q/k/v/to_out.0` (ComfyUI fuses q/k/v into `attention.qkv`), MLP
                    `feed_forward.w1/w2/w3`, modulation `adaLN_modulation.0`

Facts from diffusers 0.42.1 (`pipelines/z_image/pipeline_z_image.py`, `models/transformers/
transformer_z_image.py`); the training recipe is cited in the preset files.
"""

from __future__ import annotations

from lookalike.models import flux1
from lookalike.models.family import Family, cond_to
from lookalike.models.twins_qwen import TWIN_INDEX

# ---------------------------------------------------------------- pure functions


def caption_rows(cond) -> list:
    """{"text": [B, L, D], "mask": [B, L]} -> B tensors [L_i, D]: each caption without its padding."""
    return [text[mask.bool()] for text, mask in zip(cond["text"], cond["mask"])]


def padded(rows: list, device=None):
    """Inverse of `caption_rows`: B tensors [L_i, D] -> {"text": [B, max L_i, D] zero-padded, "mask": [B, max L_i]}."""
    import torch

    length = max(len(r) for r in rows)
    text = rows[0].new_zeros(len(rows), length, rows[0].shape[-1])
    mask = torch.zeros(len(rows), length, dtype=torch.bool, device=rows[0].device)
    for i, r in enumerate(rows):
        text[i, : len(r)] = r
        mask[i, : len(r)] = True
    return {"text": text.to(device), "mask": mask.to(device)}


# ---------------------------------------------------------------- the hooks


def encode_text(pipe, prompts, max_sequence_length: int, device=None):
    """The pipeline's own encoder (its chat template, hidden layer -2, padding dropped) -> {"text", "mask"}."""
    rows, _ = pipe.encode_prompt(prompt=list(prompts), device=device, do_classifier_free_guidance=False,
                                 max_sequence_length=max_sequence_length)
    return padded(rows, device)


def predict_velocity(transformer, z_sigma, sigma, cond, guidance: float):
    """v̂ = f_θ(z_σ, σ, text): [B, C, h, w] -> [B, C, h, w]. Z-Image's time is 1 - σ and its output is -v, as
    `ZImagePipeline.__call__` feeds and reads them; `guidance` means nothing here (no guidance embedding)."""
    import torch

    dtype, device = transformer.dtype, z_sigma.device
    latents = list(z_sigma.to(dtype).unsqueeze(2).unbind(0))  # B x [C, 1, h, w]
    captions = caption_rows(cond_to(cond, device, dtype))
    out = transformer(latents, (1 - sigma).to(device), captions, return_dict=False)[0]
    return -torch.stack(out).squeeze(2)


def sample_kwargs(cond, negative, settings) -> dict:
    """ZImagePipeline: the captions as lists; true CFG with `negative` when there is one and settings.cfg > 1
    (the pipeline's guidance_scale is cfg - 1, see the module docstring)."""
    out = {"prompt_embeds": caption_rows(cond), "max_sequence_length": settings.max_sequence_length,
           "guidance_scale": 0.0}
    if negative is not None and settings.cfg > 1:
        out.update(guidance_scale=settings.cfg - 1, negative_prompt_embeds=caption_rows(negative))
    return out


def save_comfy_lora(transformer, state, lora_config, path, meta):
    """`diffusion_model.<diffusers name>.lora_A/B.weight` + `.alpha`: ComfyUI loads Z-Image as Lumina2 and maps
    diffusers names onto its native weights itself (to_q/k/v -> row slices of `attention.qkv`, to_out.0 ->
    `attention.out`), scaling by alpha / rank only from `.alpha` tensors. `diffusion_model.` is the prefix
    ai-toolkit writes for Z-Image, which ComfyUI accepts (../shared/notes/comfyui-lora-keys.md)."""
    from lookalike.export import save_prefixed_lora

    return save_prefixed_lora(state, lora_config.lora_alpha, "diffusion_model.", path, meta)


def build_twin(seed: int = 0):
    from lookalike.models.twins_qwen import build_z_image

    return build_z_image(seed)


# Target sets. `seed` is the write-up's four attention Linears, which are also what diffusers'
# train_dreambooth_lora_z_image.py trains by default; every block (refiners included) has them.
SEED = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0")
ATTENTION = SEED
# the blocks' modulation by name: the final layer's `adaLN_modulation.0` is a SiLU (its Linear is `.1`)
ALL_LINEAR = SEED + ("feed_forward.w1", "feed_forward.w2", "feed_forward.w3", "layers.*.adaLN_modulation.0",
                     "noise_refiner.*.adaLN_modulation.0")

FAMILY = Family(
    name="z-image",
    title="Z-Image",
    pipelines=("ZImagePipeline",),
    pipeline_class="ZImagePipeline",
    transformer_class="ZImageTransformer2DModel",
    vae_class="AutoencoderKL",
    text_parts=("text_encoder", "tokenizer"),
    guidance="cfg",
    block_lists=("layers", "noise_refiner", "context_refiner"),
    lora_targets={"seed": SEED, "attention": ATTENTION, "all-linear": ALL_LINEAR},
    # the caption refiner: diffusers' name and the original checkpoint's (both keep `context_refiner.`)
    single_file_markers=("context_refiner.",),
    encode_text=encode_text,
    encode_latents=flux1.encode_latents,
    predict_velocity=predict_velocity,
    sample_kwargs=sample_kwargs,
    build_twin=build_twin,
    save_comfy_lora=save_comfy_lora,
    twin_index=TWIN_INDEX,
    twin_source="lookalike:tiny-z-image",
    default_components="Tongyi-MAI/Z-Image",
    # ss_base_model_version as ai-toolkit writes it ("zimage"; musubi-tuner "z_image"), modelspec as
    # lookalike spells FLUX's (lower case; musubi-tuner "Z-Image/lora"), musubi-tuner's network module
    export={"architecture": "z-image/lora", "base_version": "zimage", "network_module": "networks.lora_zimage",
            "implementation": "https://github.com/Tongyi-MAI/Z-Image"},
)
