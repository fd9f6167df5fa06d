"""Qwen-Image (20B; Qwen-Image and Qwen-Image-2512): the family's values and hooks.

    text            Qwen2.5-VL-7B's last hidden states of the prompt in Qwen-Image's system template, the
                    template's 34 tokens dropped, padded to the batch's longest caption:
                    Cond {"text": [B, L, 3584], "mask": [B, L] int64, 1 = a token, 0 = padding}
    latents         its own causal 3D VAE (16 channels, 8x) on one frame, normalised per channel by the
                    VAE's published statistics: z = (z_vae - μ) / σ, [B, 16, H/8, W/8]
    transformer     an MMDiT of 60 double-stream blocks; 2x2 patches packed into tokens exactly as FLUX.1
                    packs them, σ as the timestep, the text mask as an input, `img_shapes` for its RoPE
    guidance        none in the model: true classifier-free guidance with a negative prompt, the combined
                    prediction rescaled to the conditional one's norm (the pipeline's own `true_cfg_scale`)
    blocks          `transformer_blocks`; attention `attn.to_q/k/v/to_out.0` (image), `attn.add_*_proj`,
                    `attn.to_add_out` (text); MLPs `img_mlp.net.0.proj/net.2`, `txt_mlp...`; modulation
                    `img_mod.1`, `txt_mod.1`. ComfyUI's native names are diffusers' names.

Facts from diffusers 0.42.1 (`pipelines/qwenimage/pipeline_qwenimage.py`, `models/transformers/
transformer_qwenimage.py`, `models/autoencoders/autoencoder_kl_qwenimage.py`); the training recipe is
cited in the preset files.
"""

from __future__ import annotations

from lookalike.models import flux1
from lookalike.models.family import Family, cond_to
from lookalike.models.twins_qwen import TWIN_INDEX

# ---------------------------------------------------------------- the hooks


def encode_text(pipe, prompts, max_sequence_length: int, device=None):
    """The pipeline's own encoder -> {"text": [B, L, D], "mask": [B, L]} (the pipeline drops an all-ones mask;
    the conditioning always keeps one, so captions of different lengths batch together)."""
    import torch

    text, mask = pipe.encode_prompt(prompt=list(prompts), device=device, max_sequence_length=max_sequence_length)
    if mask is None:
        mask = torch.ones(text.shape[:2], dtype=torch.long, device=text.device)
    return {"text": text, "mask": mask}


def encode_latents(vae, pixels):
    """[B, 3, H, W] in [-1, 1] -> [B, 16, H/8, W/8]: one frame through the 3D VAE, its mode, normalised by the
    VAE's `latents_mean` / `latents_std` (the inverse of what the pipeline does before decoding)."""
    import torch

    z = vae.encode(pixels[:, :, None]).latent_dist.mode()[:, :, 0]
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1).to(z)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1).to(z)
    return (z - mean) / std


def predict_velocity(transformer, z_sigma, sigma, cond, guidance: float):
    """v̂ = f_θ(z_σ, σ, text): pack into 2x2 patch tokens, run the MMDiT, unpack. [B, C, h, w] -> [B, C, h, w].
    σ is the timestep (the pipeline passes t / 1000); `guidance` means nothing here (no guidance embedding)."""
    b, _, h, w = z_sigma.shape
    dtype, device = transformer.dtype, z_sigma.device
    cond = cond_to(cond, device, dtype)
    out = transformer(
        hidden_states=flux1.pack_latents(z_sigma).to(dtype),
        encoder_hidden_states=cond["text"],
        encoder_hidden_states_mask=cond["mask"],
        timestep=sigma.to(device, dtype),
        img_shapes=[[(1, h // 2, w // 2)]] * b,
        return_dict=False,
    )[0]
    return flux1.unpack_latents(out, h, w)


def sample_kwargs(cond, negative, settings) -> dict:
    """QwenImagePipeline: true CFG at settings.cfg with `negative` (off without one, or at cfg <= 1)."""
    out = {"prompt_embeds": cond["text"], "prompt_embeds_mask": cond["mask"], "true_cfg_scale": settings.cfg,
           "max_sequence_length": settings.max_sequence_length}
    if negative is not None and settings.cfg > 1:
        out.update(negative_prompt_embeds=negative["text"], negative_prompt_embeds_mask=negative["mask"])
    return out


def save_comfy_lora(transformer, state, lora_config, path, meta):
    """`transformer.<name>.lora_A/B.weight` + `.alpha`: Qwen-Image's native names are diffusers' names, which
    ComfyUI takes with a `transformer.` (or `diffusion_model.`) prefix and scales by alpha / rank only from
    `.alpha` tensors (../shared/notes/comfyui-lora-keys.md)."""
    from lookalike.export import save_prefixed_lora

    return save_prefixed_lora(state, lora_config.lora_alpha, "transformer.", path, meta)


def build_twin(seed: int = 0):
    from lookalike.models.twins_qwen import build_qwen_image

    return build_qwen_image(seed)


# Target sets. `seed` is the write-up's four (the image stream's attention), which is also what diffusers'
# train_dreambooth_lora_qwen_image.py trains by default.
SEED = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0")
ATTENTION = SEED + ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")
ALL_LINEAR = ATTENTION + ("img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2",
                          "img_mod.1", "txt_mod.1")

FAMILY = Family(
    name="qwen-image",
    title="Qwen-Image",
    pipelines=("QwenImagePipeline",),
    pipeline_class="QwenImagePipeline",
    transformer_class="QwenImageTransformer2DModel",
    vae_class="AutoencoderKLQwenImage",
    text_parts=("text_encoder", "tokenizer"),
    guidance="cfg",
    block_lists=("transformer_blocks",),
    lora_targets={"seed": SEED, "attention": ATTENTION, "all-linear": ALL_LINEAR},
    # the text-stream MLP of every block (FLUX names it ff_context): diffusers' and the original's name
    single_file_markers=(".txt_mlp.net.",),
    encode_text=encode_text,
    encode_latents=encode_latents,
    predict_velocity=predict_velocity,
    sample_kwargs=sample_kwargs,
    build_twin=build_twin,
    save_comfy_lora=save_comfy_lora,
    twin_index=TWIN_INDEX,
    twin_source="lookalike:tiny-qwen-image",
    default_components="Qwen/Qwen-Image",
    # ss_base_model_version as ai-toolkit and musubi-tuner write it, musubi-tuner's network module
    export={"architecture": "qwen-image/lora", "base_version": "qwen_image",
            "network_module": "networks.lora_qwen_image", "implementation": "https://github.com/QwenLM/Qwen-Image"},
)
