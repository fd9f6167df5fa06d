"""The toy FLUX: FLUX.1's diffusers classes at a size a laptop CPU trains in minutes.

    transformer/    FluxTransformer2DModel, 2 double + 4 single blocks, width 128 (~2.4 M parameters),
                    pretrained on toy scenes with lookalike's own flow-matching code
    vae/            AutoencoderKL, 4 latent channels, 4x downsampling: 64² scenes -> 16² latents
                    -> 8 x 8 = 64 tokens; trained to reconstruct scenes
    text_encoder/   CLIPTextModel (character-level), frozen, seeded random weights
    text_encoder_2/ T5EncoderModel (word-level vocabulary), frozen, seeded random weights
    tokenizer*/     built in memory, saved with the pipeline
    scheduler/      FlowMatchEulerDiscreteScheduler, fixed shift

It is saved as a FluxPipeline folder and loaded through `lookalike.models.flux` like FLUX.1-dev.
The text encoders are never trained: like FLUX's T5, they are frozen, and the transformer learns to
read what they give it.
"""

from __future__ import annotations

import string

from lookalike.toy.scenes import BACKGROUND_WORDS, HAIR, SHIRTS

TOY_SEED = 0
TEXT_DIM = 64
LATENT_CHANNELS = 4
MAX_TOKENS = 64  # T5 tokens per prompt: the longest three-person caption is ~50

# Whole words the T5 tokenizer knows: the scenes' captions, the seed's gallery prompts and some names.
# Anything else still tokenizes, letter by letter.
_WORLD = ("a an the man woman men women person people with without and his her hair beard glasses sunglasses "
          "in on at shirt left right centre center middle of to next friend friends two three wearing as "
          "is are standing photo portrait scene")
_GALLERY = ("tuxedo wizard boxer 1920s gangster gardener graduation superhero petting fox hacker cozy living room "
            "beside near group together smiling happy outside inside day night winter summer")
_NAMES = "Arthur Alice Bob Carol Dave Eve Frank Grace Heidi Ivan Judy Oscar Peggy Victor Walter"


def vocabulary() -> list[str]:
    """The T5 tokenizer's whole words, in a fixed order."""
    words = _WORLD.split() + _GALLERY.split() + _NAMES.split() + list(HAIR) + list(SHIRTS) + ["violet", "purple"]
    words += [w for phrase in BACKGROUND_WORDS.values() for w in phrase.split()]
    return list(dict.fromkeys(words))


def build_tokenizers():
    """CLIP (byte-level characters, the twin's) and T5 (whole words, characters as fallback), in memory."""
    from transformers import T5Tokenizer

    from lookalike.models.twin import build_tokenizers as twin_tokenizers

    clip, _ = twin_tokenizers()
    chars = [c for c in string.printable if not c.isspace()]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -8.0) for c in chars] + [("\u2581" + c, -7.0) for c in chars]
    pieces += [("\u2581" + w, -1.0) for w in vocabulary()]
    t5 = T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)
    return clip, t5


def build_toy(seed: int = TOY_SEED):
    """The untrained toy FluxPipeline: seeded random weights everywhere, every module in eval mode."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tok, t5_tok = build_tokenizers()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * LATENT_CHANNELS, out_channels=None, num_layers=2, num_single_layers=4,
        attention_head_dim=32, num_attention_heads=4, joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=TEXT_DIM, guidance_embeds=True, axes_dims_rope=(8, 12, 12),
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8,
        shift_factor=0.0, scaling_factor=1.0,  # set from the trained VAE's latents
    )
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tok), hidden_size=TEXT_DIM, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=TEXT_DIM,
        bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
        pad_token_id=clip_tok.pad_token_id,
    ))
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tok), d_model=TEXT_DIM, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
        relative_attention_num_buckets=16, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
        dropout_rate=0.0,
    ))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    for module in (transformer, vae, clip, t5):
        module.eval()
    return FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tok,
        text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer,
    )
