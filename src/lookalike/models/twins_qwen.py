"""Tiny seeded random-weight twins of Z-Image and Qwen-Image, built from the real diffusers classes.

Like the other twins (`models/twin.py`, `models/twins_flux2.py`), each has the parts, classes and folder
layout of the published model, seeded random weights, every module in eval mode, and builds in a
fraction of a second:

    Z-Image (`ZImagePipeline`: Tongyi-MAI/Z-Image)
        transformer/   ZImageTransformer2DModel, width 48, 2 main layers + 1 noise and 1 context refiner,
                       3 heads of 16 (RoPE 3 axes 4/6/6), 2x2 patches; its MLP 128 wide, so every
                       block Linear has a multiple of 64 weights, as NF4 (`train.memory: lowest`) needs
        vae/           AutoencoderKL, 16 latent channels, 8x downsampling (FLUX.1's twin VAE: Z-Image uses
                       FLUX.1's VAE)
        text_encoder/  Qwen3ForCausalLM, 3 layers of width 16 (the pipeline reads hidden layer -2)
        tokenizer/     Qwen2TokenizerFast, byte-level BPE without merges, Qwen3 chat template
        scheduler/     FlowMatchEulerDiscreteScheduler, shift 6 (the base's), no dynamic shifting
    Qwen-Image (`QwenImagePipeline`: Qwen/Qwen-Image)
        transformer/   QwenImageTransformer2DModel, 2 blocks, 2 heads of 16 (RoPE 3 axes 4/6/6), no
                       guidance embedding
        vae/           AutoencoderKLQwenImage (causal 3D, 8x), 4 latent channels with distinct per-channel
                       latents_mean / latents_std, so a forgotten normalisation shows in tests
        text_encoder/  Qwen2_5_VLForConditionalGeneration, 2 text layers of width 16, a 1-layer vision tower
        tokenizer/     the same byte-level Qwen2TokenizerFast, plus added tokens that make Qwen-Image's
                       template prefix 34 tokens long, as in the real tokenizer: the pipeline drops exactly 34,
                       so the twin's conditioning is the prompt's tokens, as the real model's is
        scheduler/     FlowMatchEulerDiscreteScheduler with Qwen-Image's dynamic shifting

Same seed, same weights, same images.
"""

from __future__ import annotations

from lookalike.models.twins_flux2 import TEXT_WIDTH, _eval, _qwen3, qwen3_tokenizer

ZIMAGE_TEXT_LAYERS = 3  # the pipeline reads hidden_states[-2]: the second-to-last layer
QWEN_VL_LAYERS = 2
QWEN_LATENT_CHANNELS = 4  # the real VAE has 16

# Z-Image's main tokenizer class name in the published folder; transformers 5 would write "Qwen2Tokenizer".
TWIN_INDEX = {"tokenizer": ["transformers", "Qwen2TokenizerFast"]}


# QwenImagePipeline.prompt_template_encode up to the prompt, and how many tokens the pipeline drops
# (prompt_template_encode_start_idx): the length of that prefix in the real Qwen2.5-VL tokenizer.
QWEN_IMAGE_PREFIX = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
                     "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n")
QWEN_IMAGE_DROP = 34
# Qwen2.5-VL's vision markers (special tokens of the real tokenizer), which its config points at
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def qwen_image_tokenizer():
    """`qwen3_tokenizer` plus added tokens that cut the system line into pieces, so that the template prefix is
    QWEN_IMAGE_DROP tokens long, as in the real tokenizer."""
    from tokenizers import AddedToken

    tok = qwen3_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": list(VISION_TOKENS)}, replace_extra_special_tokens=False)
    system = QWEN_IMAGE_PREFIX.removeprefix("<|im_start|>").split("<|im_end|>")[0]
    rest = len(tok(QWEN_IMAGE_PREFIX.replace(system, ""))["input_ids"])
    n = QWEN_IMAGE_DROP - rest
    cuts = [round(i * len(system) / n) for i in range(n + 1)]
    tok.add_tokens([AddedToken(system[a:b], special=False, normalized=False) for a, b in zip(cuts, cuts[1:])])
    assert len(tok(QWEN_IMAGE_PREFIX)["input_ids"]) == QWEN_IMAGE_DROP
    return tok


def latent_stats(channels: int):
    """The Qwen-Image twin VAE's latents_mean / latents_std: distinct per channel (means -0.5..0.5, standard
    deviations 1.5..2.5), the same for every seed."""
    import torch

    return torch.linspace(-0.5, 0.5, channels).tolist(), torch.linspace(1.5, 2.5, channels).tolist()


def _z_image_parts(tok):
    from diffusers import AutoencoderKL, ZImageTransformer2DModel

    from lookalike.models.flux1 import TWIN_VAE

    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=TWIN_VAE["latent_channels"], dim=48, n_layers=2,
        n_refiner_layers=1, n_heads=3, n_kv_heads=3, norm_eps=1e-5, qk_norm=True, cap_feat_dim=TEXT_WIDTH,
        rope_theta=256.0, t_scale=1000.0, axes_dims=[4, 6, 6], axes_lens=[1024, 512, 512],
    )
    return transformer, AutoencoderKL(in_channels=3, out_channels=3, **TWIN_VAE), _qwen3(tok, ZIMAGE_TEXT_LAYERS)


def _qwen_image_parts(tok):
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=4 * QWEN_LATENT_CHANNELS, out_channels=QWEN_LATENT_CHANNELS, num_layers=2,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=TEXT_WIDTH, guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),
    )
    mean, std = latent_stats(QWEN_LATENT_CHANNELS)
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=QWEN_LATENT_CHANNELS, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                 attn_scales=[], temperal_downsample=[False, True, True], latents_mean=mean,
                                 latents_std=std)
    config = Qwen2_5_VLConfig(
        text_config={
            "model_type": "qwen2_5_vl_text", "vocab_size": len(tok), "hidden_size": TEXT_WIDTH,
            "intermediate_size": 32, "num_hidden_layers": QWEN_VL_LAYERS, "num_attention_heads": 2,
            "num_key_value_heads": 1, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},
            "tie_word_embeddings": False, "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.pad_token_id, "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"),
        },
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size":
                       TEXT_WIDTH, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                       "fullatt_block_indexes": [0], "window_size": 112},
        **{f"{name}_token_id": tok.convert_tokens_to_ids(f"<|{token}|>") for name, token in
           (("image", "image_pad"), ("video", "video_pad"), ("vision_start", "vision_start"),
            ("vision_end", "vision_end"))},
    )
    return transformer, vae, Qwen2_5_VLForConditionalGeneration(config)


def _scheduler(**values):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **values)


def _build(pipeline: str, parts, scheduler, seed: int, tok):
    import diffusers
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer, vae, encoder = parts(tok)
    _eval(transformer, vae, encoder)
    return getattr(diffusers, pipeline)(scheduler=scheduler, vae=vae, text_encoder=encoder, tokenizer=tok,
                                        transformer=transformer)


def build_z_image(seed: int = 0):
    """The tiny twin of Z-Image (a `ZImagePipeline`), in memory (~0.3 s)."""
    return _build("ZImagePipeline", _z_image_parts, _scheduler(shift=6.0, use_dynamic_shifting=False), seed,
                  qwen3_tokenizer())


def build_qwen_image(seed: int = 0):
    """The tiny twin of Qwen-Image (a `QwenImagePipeline`), in memory (~0.3 s)."""
    scheduler = _scheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                           base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02,
                           time_shift_type="exponential")
    return _build("QwenImagePipeline", _qwen_image_parts, scheduler, seed, qwen_image_tokenizer())
