"""Tiny seeded random-weight twins of the FLUX.2 pipelines, built from the real diffusers classes.

FLUX.2 [klein] (4B / 9B) and FLUX.2 [dev] (32B, with a 24B Mistral text encoder) can never be loaded
on the machines that test this project, so tests run the same loading and sampling code on these
twins instead. Like the FLUX.1 twin (`models/twin.py`), each has the parts, classes and folder
layout of the real model, seeded random weights, every module in eval mode, and builds in a
fraction of a second:

    klein (`Flux2KleinPipeline`, is_distilled=False: FLUX.2-klein-base-4B / -9B)
        transformer/   Flux2Transformer2DModel, 2 double + 2 single blocks, no guidance embedding
        vae/           AutoencoderKLFlux2, 8 latent channels, 8x downsampling, 2x2 patch batch-norm
        text_encoder/  Qwen3ForCausalLM, 28 layers of width 16
        tokenizer/     Qwen2TokenizerFast, byte-level BPE without merges, Qwen3 chat template
        scheduler/     FlowMatchEulerDiscreteScheduler with dynamic shifting
    dev (`Flux2Pipeline`: FLUX.2-dev)
        transformer/   Flux2Transformer2DModel, 2 double + 2 single blocks, WITH guidance embedding
        vae/           the same kind of AutoencoderKLFlux2
        text_encoder/  Mistral3ForConditionalGeneration, 31 text layers of width 16, a 1-layer
                       Pixtral vision tower
        tokenizer/     a byte-level BPE PreTrainedTokenizerFast with Mistral's special tokens and
                       chat template (see `mistral_tokenizer` for why not a PixtralProcessor)
        scheduler/     FlowMatchEulerDiscreteScheduler with dynamic shifting

The text encoders are just deep enough for the pipelines' default `text_encoder_out_layers`
((9, 18, 27) for klein, (10, 20, 30) for dev) to pick intermediate layers, as they do in the real
models (Qwen3-4B/8B: 36 layers, Mistral Small 3.1: 40): transformers overwrites the last entry of
`hidden_states` with the final-norm output, so the deepest layer used must not be the last. Every
call thus uses the pipelines' own defaults. Text encoding at the default 512 tokens through these
layers is most of a twin's sampling time; more depth would only cost time.

The VAE's batch-norm running statistics (`vae.bn`, applied by the pipelines to patchified latents)
are set to distinct, deterministic per-channel values (means around 0.1, variances around 1.5), so a
test notices a forgotten or misordered normalisation.

Same seed, same weights, same images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

FLUX2_TWIN_SEED = 0
# Bump when a twin's architecture changes so cached copies are rebuilt.
FLUX2_TWIN_VERSION = 1

KINDS = ("klein", "dev")

# The pipelines' default hidden-state layers (diffusers' `text_encoder_out_layers`).
KLEIN_TEXT_LAYERS = (9, 18, 27)
DEV_TEXT_LAYERS = (10, 20, 30)

# One layer past the deepest default layer (the real models: Qwen3-4B/8B 36, Mistral Small 3.1 40).
QWEN3_LAYERS = max(KLEIN_TEXT_LAYERS) + 1
MISTRAL_LAYERS = max(DEV_TEXT_LAYERS) + 1

TEXT_WIDTH = 16  # text encoders' hidden size; the transformer's joint_attention_dim is 3x this
LATENT_CHANNELS = 8  # the real VAE has 32; the transformer sees 4x this after 2x2 patchifying

# The class the real FLUX.2-klein folder's model_index.json names for its tokenizer. transformers 5
# saves the same class as "Qwen2Tokenizer" (its new name; "Qwen2TokenizerFast" is kept as an alias),
# a name transformers 4 gives its slow tokenizer, which needs vocab.json and merges.txt.
KLEIN_TOKENIZER_CLASS = "Qwen2TokenizerFast"
DEV_TOKENIZER_CLASS = "PreTrainedTokenizerFast"

# Qwen3's chat template, reduced to what the twin needs: text messages (string content or a list
# of {"type": "text"} parts), the generation prompt and its empty thinking block when
# `enable_thinking=False`, rendered exactly as Qwen3's own template renders them.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
    "{%- else -%}{%- set text = message['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('') -%}{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + text + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)

# Mistral Small 3.1's chat template, reduced the same way: bos, [SYSTEM_PROMPT]...[/SYSTEM_PROMPT],
# [INST]...[/INST], assistant text + eos; image parts become [IMG].
MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{- '[SYSTEM_PROMPT]' -}}"
    "{%- elif message['role'] == 'user' -%}{{- '[INST]' -}}{%- endif -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- elif part['type'] == 'image' -%}{{- '[IMG]' -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}{{- '[/SYSTEM_PROMPT]' -}}"
    "{%- elif message['role'] == 'user' -%}{{- '[/INST]' -}}"
    "{%- else -%}{{- eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
)

# Tekken's first special tokens, at their real ids (Mistral Small 3.1): bos 1, eos 2, [IMG] 10, pad 11.
MISTRAL_SPECIALS = (
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
    "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
)


# ---------------------------------------------------------------- tokenizers (in memory)


def qwen3_tokenizer():
    """A Qwen2TokenizerFast like Qwen3's, built in memory: the 256 byte-level symbols without merges
    (any text, unicode included, tokenizes without unknowns), then <|endoftext|> (also pad),
    <|im_start|>, <|im_end|> as special tokens and <think>, </think> as added tokens, in Qwen's order.
    """
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    tok = Qwen2TokenizerFast(
        vocab=vocab, merges=[], additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=QWEN3_CHAT_TEMPLATE, model_max_length=131072,
    )
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False),
                    AddedToken("</think>", special=False, normalized=False)])
    return tok


def mistral_tokenizer():
    """A byte-level BPE tokenizer standing in for FLUX.2-dev's Mistral (Tekken) tokenizer, built in
    memory: Tekken's first 19 special tokens at their real ids, then the 256 byte-level symbols
    without merges, and Mistral Small 3.1's chat template.

    The real FLUX.2-dev folder holds a `PixtralProcessor` (tokenizer + image processor) there, but
    transformers' PixtralProcessor needs torchvision, which this project does not depend on. The
    pipeline only calls `tokenizer.apply_chat_template(conversations, tokenize=True, return_dict=True,
    return_tensors="pt", padding="max_length", truncation=True, max_length=...)` to encode a prompt,
    which a tokenizer answers the same way; only `upsample_prompt` (caption upsampling, not used by
    this project) needs the processor's `.tokenizer` and images.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(MISTRAL_SPECIALS)}
    for c in alphabet:
        vocab[c] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in MISTRAL_SPECIALS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        chat_template=MISTRAL_CHAT_TEMPLATE, model_max_length=131072,
    )


# ---------------------------------------------------------------- shared parts


def _transformer(guidance_embeds: bool):
    """A tiny Flux2Transformer2DModel: 2 double + 2 single blocks, 2 heads of 16 (RoPE 4 axes x 4)."""
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(
        patch_size=1, in_channels=4 * LATENT_CHANNELS, out_channels=None, num_layers=2, num_single_layers=2,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=3 * TEXT_WIDTH,
        timestep_guidance_channels=256, mlp_ratio=3.0, axes_dims_rope=(4, 4, 4, 4), rope_theta=2000,
        guidance_embeds=guidance_embeds,
    )


def bn_stats(channels: int):
    """The twin VAE's batch-norm running statistics: distinct per channel, means 0.0..0.2 (mean 0.1),
    variances 1.0..2.0 (mean 1.5), the same for every seed."""
    import torch

    return torch.linspace(0.0, 0.2, channels), torch.linspace(1.0, 2.0, channels)


def _vae():
    """A tiny AutoencoderKLFlux2: 4 levels (8x downsampling, like the real one), 8 latent channels,
    quant convs as in the real config, and non-trivial batch-norm statistics (see `bn_stats`)."""
    import torch
    from diffusers import AutoencoderKLFlux2

    vae = AutoencoderKLFlux2(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4,
        use_quant_conv=True, use_post_quant_conv=True, patch_size=(2, 2),
    )
    mean, var = bn_stats(vae.bn.num_features)
    with torch.no_grad():
        vae.bn.running_mean.copy_(mean)
        vae.bn.running_var.copy_(var)
    return vae


def _scheduler():
    """FLUX's flow-matching scheduler with dynamic shifting, for klein and dev alike (FLUX.1's values:
    the published FLUX.2 scheduler configs could not be read here). Both FLUX.2 pipelines pass their
    own sigmas and their own empirical `mu`, so only `use_dynamic_shifting=True` (which makes
    `set_timesteps` take `mu`) and the exponential time shift matter when sampling."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential",
    )


def _qwen3(tok, layers: int = QWEN3_LAYERS):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tok), hidden_size=TEXT_WIDTH, intermediate_size=32, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=40960,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"), eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
    ))


def _mistral3(tok):
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    config = Mistral3Config(
        text_config={
            "model_type": "mistral", "vocab_size": len(tok), "hidden_size": TEXT_WIDTH, "intermediate_size": 32,
            "num_hidden_layers": MISTRAL_LAYERS, "num_attention_heads": 2, "num_key_value_heads": 1,
            "head_dim": 8, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
            "rope_theta": 1000000000.0, "sliding_window": None,
            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
        },
        vision_config={
            "model_type": "pixtral", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "head_dim": 8, "num_channels": 3, "image_size": 64, "patch_size": 8,
        },
        image_token_index=tok.convert_tokens_to_ids("[IMG]"), spatial_merge_size=2, vision_feature_layer=-1,
        projector_hidden_act="gelu", multimodal_projector_bias=False,
    )
    return Mistral3ForConditionalGeneration(config)


def _eval(*modules):
    """Modules built from a config start in train mode; dropout would make one seed give two images."""
    for module in modules:
        module.eval()


# ---------------------------------------------------------------- the twins


def _build(pipeline: str, tok, text_encoder, guidance_embeds: bool, seed: int, **extra):
    """A FLUX.2 twin pipeline of class `pipeline`: seeded transformer, VAE and `text_encoder(tok)`, all in eval
    mode. The caller's global torch RNG state is left as it was."""
    import diffusers
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = _transformer(guidance_embeds=guidance_embeds)
        vae = _vae()
        encoder = text_encoder(tok)
    _eval(transformer, vae, encoder)
    return getattr(diffusers, pipeline)(scheduler=_scheduler(), vae=vae, text_encoder=encoder, tokenizer=tok,
                                        transformer=transformer, **extra)


def build_flux2_klein(seed: int = FLUX2_TWIN_SEED):
    """The tiny twin of FLUX.2-klein-base (a non-distilled `Flux2KleinPipeline`), in memory (~0.2 s)."""
    return _build("Flux2KleinPipeline", qwen3_tokenizer(), _qwen3, False, seed, is_distilled=False)


def build_flux2_dev(seed: int = FLUX2_TWIN_SEED):
    """The tiny twin of FLUX.2-dev (a `Flux2Pipeline`, guidance embedded), in memory (~0.3 s)."""
    return _build("Flux2Pipeline", mistral_tokenizer(), _mistral3, True, seed)


BUILDERS = {"klein": build_flux2_klein, "dev": build_flux2_dev}
# model_index.json entries a saved twin gets: the tokenizer class by its long-standing name, klein's as the
# real folder names it (Qwen2TokenizerFast), dev's as PreTrainedTokenizerFast (transformers 5 would write
# "TokenizersBackend", its new name for the same class). Only transformers 5 is tested.
TWIN_INDEX = {"klein": {"tokenizer": ["transformers", KLEIN_TOKENIZER_CLASS]},
              "dev": {"tokenizer": ["transformers", DEV_TOKENIZER_CLASS]}}


def build_flux2_twin(kind: Literal["klein", "dev"], seed: int = FLUX2_TWIN_SEED):
    """`build_flux2_klein` or `build_flux2_dev` by name."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown FLUX.2 twin kind {kind!r}; kinds: {', '.join(KINDS)}")
    return BUILDERS[kind](seed)


def save_flux2_twin(kind: Literal["klein", "dev"], folder: str | Path, seed: int = FLUX2_TWIN_SEED) -> Path:
    """Build a FLUX.2 twin and save it as a diffusers folder, atomically, through `twin.save_twin` (which also
    writes the tokenizer class names of TWIN_INDEX into model_index.json)."""
    from lookalike.models.twin import save_twin

    if kind not in BUILDERS:
        raise ValueError(f"unknown FLUX.2 twin kind {kind!r}; kinds: {', '.join(KINDS)}")
    return save_twin(folder, seed=seed, single_file=False, family=f"flux2-{kind}")
