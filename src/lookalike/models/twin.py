"""The tiny twin: a seeded random-weight FLUX.1 pipeline built from the real diffusers classes.

FLUX.1-dev (12B parameters, gated) can never be loaded on the machines that test this project, so
every test runs the same loading and sampling code on this twin instead. It has the same parts and
the same folder layout as `black-forest-labs/FLUX.1-dev`:

    transformer/   FluxTransformer2DModel with guidance embeddings (~0.2M parameters)
    vae/           AutoencoderKL, 16 latent channels, 8x downsampling (like FLUX's)
    text_encoder/  CLIPTextModel      tokenizer/    CLIP byte-level BPE, built in memory
    text_encoder_2/ T5EncoderModel    tokenizer_2/  T5 unigram, built in memory
    scheduler/     FlowMatchEulerDiscreteScheduler with FLUX's dynamic shifting
    model_index.json

Same seed, same weights, same images.
"""

from __future__ import annotations

import string
from pathlib import Path

TWIN_SEED = 0
# Bump when the twin's architecture changes so cached copies are rebuilt.
TWIN_VERSION = 1

# FLUX.1's own VAE latent normalisation: z = (z_vae - shift) * scale.
FLUX_VAE_SHIFT = 0.1159
FLUX_VAE_SCALE = 0.3611


def build_tokenizers():
    """CLIP and T5 tokenizers built in memory: no files, no hub.

    CLIP gets the 256 byte-level symbols (with and without the end-of-word marker) plus its two
    specials, so any text tokenizes without unknowns. T5 gets a unigram vocabulary of printable
    ASCII characters with and without the word-start marker.
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer, T5Tokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    for c in alphabet:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    clip = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)

    chars = [c for c in string.printable if not c.isspace()]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -5.0) for c in chars] + [("\u2581" + c, -4.0) for c in chars]
    t5 = T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)
    return clip, t5


def build_twin(seed: int = TWIN_SEED):
    """Build the tiny random-weight FluxPipeline in memory (~0.1 s).

    Every module is put in eval mode: modules built from a config start in train mode, and T5's
    dropout would then make the same seed give different images.
    """
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tok, t5_tok = build_tokenizers()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, out_channels=None, num_layers=2, num_single_layers=2,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
        pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4,
        use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=FLUX_VAE_SHIFT, scaling_factor=FLUX_VAE_SCALE,
    )
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
        bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
        pad_token_id=clip_tok.pad_token_id,
    ))
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tok), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
    ))
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    for module in (transformer, vae, clip, t5):
        module.eval()
    return FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tok,
        text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer,
    )


def save_twin(folder: str | Path, seed: int = TWIN_SEED, single_file: bool = True) -> Path:
    """Build the twin and save it as a diffusers folder, like a local copy of FLUX.1-dev.

    With `single_file`, the transformer is also written alone as `flux1-twin.safetensors`, to test
    the single-file path that ComfyUI's `flux1-dev.safetensors` takes. It is in diffusers' key
    layout: diffusers' converter from the original BFL layout hard-codes FLUX.1's real widths
    (3072/12288), so no model as small as the twin can go through it.
    Writes into a temporary sibling folder first and renames it, so a crash leaves no half twin.
    """
    import os
    import shutil
    import tempfile

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        pipe = build_twin(seed)
        pipe.save_pretrained(tmp)
        if single_file:
            save_single_file_transformer(pipe.transformer, tmp / SINGLE_FILE_NAME)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


SINGLE_FILE_NAME = "flux1-twin.safetensors"


def save_single_file_transformer(transformer, path: str | Path) -> Path:
    """Write a FluxTransformer2DModel's weights as one .safetensors file (diffusers key layout)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in transformer.state_dict().items()}, str(path))
    return Path(path)


def twin_home() -> Path:
    """Where `lookalike:tiny-twin` is kept: $LOOKALIKE_HOME, else ~/.cache/lookalike."""
    import os

    root = os.environ.get("LOOKALIKE_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lookalike"
    )
    return Path(root) / f"tiny-twin-v{TWIN_VERSION}-seed{TWIN_SEED}"


def ensure_twin() -> Path:
    """The cached twin folder, built on first use (~1 s)."""
    folder = twin_home()
    if not (folder / "model_index.json").exists():
        import logging

        logging.getLogger(__name__).info("building the tiny twin in %s (first use)", folder)
        save_twin(folder)
    return folder
