"""FLUX.1 (dev, schnell and models built like them: the tiny twin, the toy): the family's values and hooks.

    text            CLIP pooled [B, 768] + T5 sequence [B, L, 4096]: Cond {"t5", "pooled"}
    latents         16 channels, 8x VAE; z = (z_vae - shift)·scale
    transformer     2x2 patches packed into tokens, RoPE ids (0, row, col), guidance distilled into an
                    embedding: one forward per step, the guidance value is an input
    blocks          19 double (`transformer_blocks`) + 38 single (`single_transformer_blocks`)

Nothing outside this module (and `flux_keys.py`, its export key table) knows any of this.
"""

from __future__ import annotations

import string

from lookalike.models.family import Family, cond_to

VAE_SHIFT, VAE_SCALE = 0.1159, 0.3611  # FLUX.1's own latent normalisation: z = (z_vae - shift) * scale


# ---------------------------------------------------------------- tokens: 2x2 patches (pure functions)


def pack_latents(z):
    """FLUX's 2x2 patchify: [B, C, H, W] -> [B, (H/2)(W/2), 4C], rows then columns."""
    b, c, h, w = z.shape
    z = z.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return z.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens, height: int, width: int):
    """Inverse of pack_latents: [B, (H/2)(W/2), 4C] -> [B, C, H, W] (H, W in latent pixels)."""
    b, _, d = tokens.shape
    c = d // 4
    z = tokens.reshape(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return z.reshape(b, c, height, width)


def latent_image_ids(height: int, width: int, device=None, dtype=None):
    """Positional ids of packed tokens for FLUX's RoPE: [(H/2)(W/2), 3] = (0, row, col)."""
    import torch

    dtype = dtype or torch.float32
    rows = torch.arange(height // 2, device=device, dtype=dtype)
    cols = torch.arange(width // 2, device=device, dtype=dtype)
    ids = torch.zeros(height // 2, width // 2, 3, device=device, dtype=dtype)
    ids[..., 1] = rows[:, None]
    ids[..., 2] = cols[None, :]
    return ids.reshape(-1, 3)


# ---------------------------------------------------------------- the hooks


def encode_text(pipe, prompts, max_sequence_length: int, device=None):
    """CLIP and T5 on `prompts` -> {"t5": [B, L, D_t5], "pooled": [B, D_clip]}."""
    t5, pooled, _ = pipe.encode_prompt(list(prompts), prompt_2=None, device=device,
                                       max_sequence_length=max_sequence_length)
    return {"t5": t5, "pooled": pooled}


def encode_latents(vae, pixels):
    """[B, 3, H, W] in [-1, 1] -> [B, 16, H/8, W/8]: the distribution's mode, shifted and scaled."""
    z = vae.encode(pixels).latent_dist.mode()
    return (z - vae.config.shift_factor) * vae.config.scaling_factor


def predict_velocity(transformer, z_sigma, sigma, cond, guidance: float):
    """v̂ = f_θ(z_σ, σ, text): pack into 2x2 patch tokens, run FLUX, unpack. [B, C, H, W] -> [B, C, H, W].

    FLUX takes σ itself as the timestep and the raw guidance value (it scales both by 1000 inside).
    """
    import torch

    b, _, h, w = z_sigma.shape
    dtype, device = transformer.dtype, z_sigma.device
    cond = cond_to(cond, device, dtype)
    out = transformer(
        hidden_states=pack_latents(z_sigma).to(dtype),
        encoder_hidden_states=cond["t5"],
        pooled_projections=cond["pooled"],
        timestep=sigma.to(device, dtype),
        guidance=torch.full((b,), guidance, device=device, dtype=dtype),
        txt_ids=torch.zeros(cond["t5"].shape[1], 3, device=device, dtype=dtype),
        img_ids=latent_image_ids(h, w, device=device, dtype=dtype),
        return_dict=False,
    )[0]
    return unpack_latents(out, h, w)


def sample_kwargs(cond, negative, settings) -> dict:
    """FluxPipeline's text and guidance arguments: the guidance value goes to the embedding, no negative."""
    return {"prompt_embeds": cond["t5"], "pooled_prompt_embeds": cond["pooled"],
            "guidance_scale": settings.guidance, "max_sequence_length": settings.max_sequence_length}


# ---------------------------------------------------------------- building one (twin, toy)


def byte_clip_tokenizer():
    """A CLIP tokenizer over the 256 byte-level symbols (with and without the end-of-word marker), no
    merges: any text tokenizes without unknowns. Built in memory."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    for c in alphabet:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def unigram_t5_tokenizer(words=(), char_score: float = -5.0, word_score: float = -1.0):
    """A T5 unigram tokenizer of printable ASCII characters (with and without the word-start marker),
    plus whole `words`. Built in memory."""
    from transformers import T5Tokenizer

    chars = [c for c in string.printable if not c.isspace()]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, char_score) for c in chars] + [("\u2581" + c, char_score + 1.0) for c in chars]
    pieces += [("\u2581" + w, word_score) for w in words]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def build_pipeline(seed: int, transformer: dict, vae: dict, text_dim: int, text_ff: int, t5_kv: int,
                   t5_buckets: int, scheduler: dict, clip_tokenizer, t5_tokenizer, t5_dropout: float | None = None):
    """A FluxPipeline with seeded random weights at the given sizes, every module in eval mode.

    The tiny twin and the toy model are both built here; only their sizes differ. Eval mode: modules
    built from a config start in train mode, and T5's dropout would then make one seed give two images.
    """
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    dit = FluxTransformer2DModel(patch_size=1, out_channels=None, guidance_embeds=True,
                                 joint_attention_dim=text_dim, pooled_projection_dim=text_dim, **transformer)
    autoencoder = AutoencoderKL(in_channels=3, out_channels=3, **vae)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tokenizer), hidden_size=text_dim, intermediate_size=text_ff, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=text_dim,
        bos_token_id=clip_tokenizer.bos_token_id, eos_token_id=clip_tokenizer.eos_token_id,
        pad_token_id=clip_tokenizer.pad_token_id,
    ))
    t5_extra = {} if t5_dropout is None else {"dropout_rate": t5_dropout}
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tokenizer), d_model=text_dim, d_kv=t5_kv, d_ff=text_ff, num_layers=2, num_heads=4,
        relative_attention_num_buckets=t5_buckets, feed_forward_proj="gated-gelu", pad_token_id=0,
        eos_token_id=1, **t5_extra,
    ))
    for module in (dit, autoencoder, clip, t5):
        module.eval()
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**scheduler), vae=autoencoder, text_encoder=clip,
        tokenizer=clip_tokenizer, text_encoder_2=t5, tokenizer_2=t5_tokenizer, transformer=dit,
    )


# The twin's AutoencoderKL: 16 latent channels and 8x downsampling like FLUX.1's VAE (Z-Image's twin shares it).
TWIN_VAE = dict(latent_channels=16, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
                norm_num_groups=4, use_quant_conv=False, use_post_quant_conv=False,
                shift_factor=VAE_SHIFT, scaling_factor=VAE_SCALE)


def build_twin(seed: int = 0):
    """The tiny twin of FLUX.1-dev (~0.2M transformer parameters, ~0.1 s): same parts, classes and folder
    layout, 16 latent channels and 8x downsampling like FLUX's VAE, FLUX.1's dynamic shifting."""
    return build_pipeline(
        seed,
        transformer=dict(in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
                         num_attention_heads=2, axes_dims_rope=(4, 6, 6)),
        vae=TWIN_VAE,
        text_dim=32, text_ff=37, t5_kv=8, t5_buckets=8,
        scheduler=dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                       base_image_seq_len=256, max_image_seq_len=4096),
        clip_tokenizer=byte_clip_tokenizer(), t5_tokenizer=unigram_t5_tokenizer(),
    )


def save_comfy_lora(transformer, state, lora_config, path, meta):
    """kohya / sd-scripts keys on BFL's module names (`lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`),
    q/k/v fused into BFL's qkv and linear1, with `.alpha` tensors: what ComfyUI, sd-scripts and diffusers'
    kohya importer all read (`flux_keys.lora_to_kohya`)."""
    from lookalike.export import save_kohya_lora
    from lookalike.models.flux_keys import module_out_features

    return save_kohya_lora(state, lora_config.lora_alpha, module_out_features(transformer), path, meta)


# The write-up's targets in diffusers' FluxTransformer2DModel names (peft matches suffixes): q/k/v/out of
# the image stream in the double blocks, q/k/v in the single blocks (they have no to_out).
SEED = ("to_q", "to_k", "to_v", "to_out.0")
ATTENTION = SEED + ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
ALL_LINEAR = ATTENTION + ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp",
                          "proj_out", "norm1.linear", "norm1_context.linear", "norm.linear")

FAMILY = Family(
    name="flux1",
    title="FLUX.1",
    pipelines=("FluxPipeline",),
    pipeline_class="FluxPipeline",
    transformer_class="FluxTransformer2DModel",
    vae_class="AutoencoderKL",
    text_parts=("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"),
    guidance="embedded",
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    lora_targets={
        "seed": SEED,  # the write-up
        "attention": ATTENTION,  # attention on both streams (adds the text stream's projections)
        "all-linear": ALL_LINEAR,  # every linear layer of the blocks: attention, MLPs and modulation
    },
    # per-block modulation: BFL's layout (flux1-dev.safetensors) and diffusers'; FLUX.2 shares one per stream
    single_file_markers=(".img_mod.lin.", ".norm1.linear."),
    encode_text=encode_text,
    encode_latents=encode_latents,
    predict_velocity=predict_velocity,
    sample_kwargs=sample_kwargs,
    build_twin=build_twin,
    save_comfy_lora=save_comfy_lora,
    twin_source="lookalike:tiny-twin",
    default_components="black-forest-labs/FLUX.1-dev",
    # the header fields sd-scripts writes for a FLUX.1 LoRA (modelspec.architecture, ss_base_model_version,
    # ss_network_module, modelspec.implementation)
    export={"architecture": "flux-1-dev/lora", "base_version": "flux1", "network_module": "networks.lora_flux",
            "implementation": "https://github.com/black-forest-labs/flux"},
)
