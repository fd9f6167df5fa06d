"""The toy FLUX: the FLUX.1 family (`lookalike.models.flux1`) at a size a laptop CPU trains in minutes.

    transformer/    FluxTransformer2DModel, 2 double + 4 single blocks, width 128 (~2.4 M parameters),
                    pretrained on toy scenes with lookalike's own flow-matching code
    vae/            AutoencoderKL, 4 latent channels, 4x downsampling: 64² scenes -> 16² latents
                    -> 8 x 8 = 64 tokens; trained to reconstruct scenes
    text_encoder/   CLIPTextModel (character-level), frozen, seeded random weights
    text_encoder_2/ T5EncoderModel (word-level vocabulary), frozen, seeded random weights
    tokenizer*/     built in memory, saved with the pipeline
    scheduler/      FlowMatchEulerDiscreteScheduler, fixed shift

It is saved as a diffusers folder and loaded through `lookalike.models.source` like FLUX.1-dev.
The text encoders are never trained: like FLUX's T5, they are frozen, and the transformer learns to
read what they give it.
"""

from __future__ import annotations

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
    from lookalike.models.flux1 import byte_clip_tokenizer, unigram_t5_tokenizer

    return byte_clip_tokenizer(), unigram_t5_tokenizer(vocabulary(), char_score=-8.0, word_score=-1.0)


def build_toy(seed: int = TOY_SEED):
    """The untrained toy pipeline: seeded random weights everywhere, every module in eval mode."""
    from lookalike.models.flux1 import build_pipeline

    clip_tok, t5_tok = build_tokenizers()
    return build_pipeline(
        seed,
        transformer=dict(in_channels=4 * LATENT_CHANNELS, num_layers=2, num_single_layers=4, attention_head_dim=32,
                         num_attention_heads=4, axes_dims_rope=(8, 12, 12)),
        vae=dict(latent_channels=LATENT_CHANNELS, down_block_types=("DownEncoderBlock2D",) * 3,
                 up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 64), layers_per_block=1,
                 norm_num_groups=8, shift_factor=0.0, scaling_factor=1.0),  # set from the trained VAE's latents
        text_dim=TEXT_DIM, text_ff=128, t5_kv=16, t5_buckets=16, t5_dropout=0.0,
        scheduler=dict(shift=1.0, use_dynamic_shifting=False),
        clip_tokenizer=clip_tok, t5_tokenizer=t5_tok,
    )
