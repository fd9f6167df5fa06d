"""The FLUX.2 twins (`models/twins_flux2.py`): seeded, saved in the hub layout, loaded back by the
pipeline classes' own `from_pretrained`, and sampled through the pipelines' own defaults.

Each kind is built, saved and loaded once per module (the `twin` fixture); no global state is set
here (conftest.py keeps the hub offline).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lookalike.models.twins_flux2 import (
    DEV_TEXT_LAYERS,
    KINDS,
    KLEIN_TEXT_LAYERS,
    TEXT_WIDTH,
    bn_stats,
    build_flux2_twin,
    save_flux2_twin,
)

PROMPT = "Arthur as a wizard"
UNICODE = "Zoë, naïve 日本語 — 👩\u200d🎨 as a wizard ✓"
PIPELINES = {"klein": "Flux2KleinPipeline", "dev": "Flux2Pipeline"}
TEXT_ENCODERS = {"klein": "Qwen3ForCausalLM", "dev": "Mistral3ForConditionalGeneration"}
PARTS = ("scheduler", "text_encoder", "tokenizer", "transformer", "vae")


def draw(pipe, seed=0, output_type="pil", **text):
    """The brief's call: 64x64, 2 steps, a seeded CPU generator; text arguments default to the prompt."""
    text = text or {"prompt": PROMPT}
    return pipe(**text, height=64, width=64, num_inference_steps=2,
                generator=torch.Generator().manual_seed(seed), output_type=output_type).images[0]


def state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module", params=KINDS)
def twin(request, tmp_path_factory):
    """(kind, the in-memory twin, its folder, the pipeline loaded back from the folder)."""
    import diffusers

    kind = request.param
    built = build_flux2_twin(kind)
    folder = save_flux2_twin(kind, tmp_path_factory.mktemp(f"flux2-{kind}") / f"FLUX.2-{kind}-twin")
    loaded = getattr(diffusers, PIPELINES[kind]).from_pretrained(folder)
    for pipe in (built, loaded):
        pipe.set_progress_bar_config(disable=True)
    return kind, built, folder, loaded


@pytest.fixture(scope="module")
def reference(twin):
    """The loaded twin's image for PROMPT and seed 0, as floats [64, 64, 3] in 0..1 (drawn once: text
    encoding at the default 512 tokens is most of a draw's time)."""
    return draw(twin[3], output_type="np")


def as_uint8(image: np.ndarray) -> np.ndarray:
    """A float image as the pipeline's PIL output holds it (diffusers' `numpy_to_pil` rounding)."""
    return (image * 255).round().astype("uint8")


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_weights(kind):
    a, b, c = build_flux2_twin(kind, seed=0), build_flux2_twin(kind, seed=0), build_flux2_twin(kind, seed=1)
    for part in ("transformer", "vae", "text_encoder"):
        sa, sb = state(getattr(a, part)), state(getattr(b, part))
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), part
        assert not getattr(a, part).training, f"{part} must be in eval mode"
    sa, sc = state(a.transformer), state(c.transformer)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa), "another seed must give other weights"


def test_folder_layout_and_classes(twin):
    kind, built, folder, loaded = twin
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == PIPELINES[kind]
    assert index["text_encoder"] == ["transformers", TEXT_ENCODERS[kind]]
    assert index["transformer"] == ["diffusers", "Flux2Transformer2DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLFlux2"]
    assert all((folder / part).is_dir() for part in PARTS)
    assert not any(p.name.startswith(".") for p in folder.parent.iterdir()), "no temporary folder is left"
    assert type(loaded).__name__ == PIPELINES[kind]
    assert type(loaded.text_encoder).__name__ == TEXT_ENCODERS[kind]
    assert loaded.scheduler.config.use_dynamic_shifting
    if kind == "klein":
        assert index["is_distilled"] is False and loaded.config.is_distilled is False
        assert loaded.transformer.config.guidance_embeds is False
    else:
        assert loaded.transformer.config.guidance_embeds is True
    # Saved and loaded, the twin is the built one (weights, scheduler, and tokenizers in the next test),
    # and the VAE's batch-norm statistics survive.
    assert {k: v for k, v in loaded.scheduler.config.items() if not k.startswith("_")} == \
        {k: v for k, v in built.scheduler.config.items() if not k.startswith("_")}
    for part in ("transformer", "vae", "text_encoder"):
        sb, sl = state(getattr(built, part)), state(getattr(loaded, part))
        assert all(torch.equal(sb[k], sl[k]) for k in sb if k in sl), part
    mean, var = bn_stats(loaded.vae.bn.num_features)
    assert torch.equal(loaded.vae.bn.running_mean, mean) and torch.equal(loaded.vae.bn.running_var, var)
    assert mean.mean().item() == pytest.approx(0.1) and var.mean().item() == pytest.approx(1.5)


def test_generation_is_seeded(twin, reference):
    kind, built, folder, loaded = twin
    image = draw(loaded)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert np.array_equal(np.asarray(image), as_uint8(reference)), "same seed, same image"
    assert reference.std() > 0.01, "a random twin still draws a non-flat image"


def test_encode_prompt_and_precomputed_embeddings(twin, reference):
    kind, built, folder, loaded = twin
    layers = KLEIN_TEXT_LAYERS if kind == "klein" else DEV_TEXT_LAYERS
    assert loaded.text_encoder.config.get_text_config().num_hidden_layers > max(layers)
    with torch.no_grad():
        embeds, text_ids = loaded.encode_prompt(UNICODE)
        plain, _ = loaded.encode_prompt(PROMPT)
    # 512 tokens (the default max_sequence_length), the 3 default layers side by side.
    assert embeds.shape == (1, 512, len(layers) * TEXT_WIDTH) == (1, 512, loaded.transformer.config.joint_attention_dim)
    assert text_ids.shape == (1, 512, 4) and text_ids[0, :, 3].tolist() == list(range(512))
    assert torch.isfinite(embeds).all() and not torch.equal(embeds, plain)

    tok = loaded.tokenizer
    ids = tok(UNICODE, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == UNICODE, "byte-level: any text, no unknown tokens"
    assert ids == built.tokenizer(UNICODE, add_special_tokens=False)["input_ids"]
    if kind == "klein":  # the pipelines' own chat-template calls: the loaded tokenizer reads as the built one
        chat = dict(conversation=[{"role": "user", "content": UNICODE}], tokenize=False,
                    add_generation_prompt=True, enable_thinking=False)
        assert tok(tok.apply_chat_template(**chat))["input_ids"] == \
            built.tokenizer(built.tokenizer.apply_chat_template(**chat))["input_ids"]
    else:
        from diffusers.pipelines.flux2.pipeline_flux2 import format_input

        chat = dict(conversation=format_input([UNICODE]), tokenize=True, return_dict=True, return_tensors="pt",
                    padding="max_length", truncation=True, max_length=512)
        assert torch.equal(tok.apply_chat_template(**chat)["input_ids"],
                           built.tokenizer.apply_chat_template(**chat)["input_ids"])

    # The pipeline call with precomputed embeddings draws what the prompt draws; another seed differs.
    text = {"prompt_embeds": plain}
    if kind == "klein":  # true CFG (guidance_scale 4 > 1, not distilled): the negative is the empty prompt
        with torch.no_grad():
            text["negative_prompt_embeds"], _ = loaded.encode_prompt("")
    assert np.array_equal(draw(loaded, output_type="np", **text), reference)
    assert not np.allclose(draw(loaded, seed=1, output_type="np", **text), reference)


def test_klein_chat_template_renders_like_qwen3():
    tok = build_flux2_twin("klein").tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True, enable_thinking=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and tok.pad_token == "<|endoftext|>"


def test_dev_chat_template_renders_like_mistral():
    from diffusers.pipelines.flux2.pipeline_flux2 import format_input

    tok = build_flux2_twin("dev").tokenizer
    (messages,) = format_input(["hi"], system_message="sys")
    assert tok.apply_chat_template(messages, tokenize=False) == "<s>[SYSTEM_PROMPT]sys[/SYSTEM_PROMPT][INST]hi[/INST]"
    ids = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert ids[:2] == [1, 17] and ids[-1] == 4  # <s>, [SYSTEM_PROMPT] ... [/INST] at Tekken's ids
