"""The model-family contract, checked on every family's tiny twin with the same tests.

A family (`lookalike.models.family.Family`) is what lets every stage run on FLUX.1, FLUX.2 [dev],
FLUX.2 [klein], Z-Image and Qwen-Image without naming any of them. Each test below states one promise and checks it against
the family's own diffusers pipeline, so a new family passes only if it behaves like the others:

- `predict_velocity` is the pipeline's own transformer call on the same state;
- the same seed draws the same image, another seed another;
- a LoRA at weight 0 draws the base model exactly;
- the exported diffusers file, loaded by the pipeline's own `load_lora_weights`, reproduces the trained
  model, and ComfyUI's key rules take every key of both exported files at the trained strength;
- training on 4 photos lowers the loss and moves samples drawn with the LoRA towards the photos.
"""

import statistics

import pytest
import torch

from lookalike.models import flux1, flux2
from lookalike.models.family import family as get_family


def _keyword_call(to_ours):
    """(z, σ, v) of a transformer called with hidden_states / timestep keywords (FLUX.1, FLUX.2, Qwen-Image),
    its tokens read back into [B, C, h, w] by `to_ours`."""
    return lambda args, kwargs, out, h, w: (to_ours(kwargs["hidden_states"], h, w), kwargs["timestep"],
                                            to_ours(out[0] if isinstance(out, tuple) else out.sample, h, w))


def _z_image_call(args, kwargs, out, h, w):
    """Z-Image's transformer takes (latents as a list of [C, 1, h, w], t = 1 - σ, captions) and returns -v as
    a list (`ZImagePipeline.__call__`)."""
    out = out[0] if isinstance(out, tuple) else out.sample
    return torch.stack(args[0]).squeeze(2), 1 - args[1], -torch.stack(out).squeeze(2)


def _random_cond(name, config, g):
    """A random one-caption conditioning of the family's layout, 8 tokens long."""
    if name == "flux1":
        return {"t5": torch.randn(1, 8, config.joint_attention_dim, generator=g),
                "pooled": torch.randn(1, config.pooled_projection_dim, generator=g)}
    if name.startswith("flux2"):
        return {"text": torch.randn(1, 8, config.joint_attention_dim, generator=g)}
    if name == "z-image":
        return {"text": torch.randn(1, 8, config.cap_feat_dim, generator=g), "mask": torch.ones(1, 8, dtype=torch.bool)}
    return {"text": torch.randn(1, 8, config.joint_attention_dim, generator=g), "mask": torch.ones(1, 8).long()}


# How to read the pipeline's own tensors in lookalike's latent layout [B, C, h, w]: a transformer call's
# (z, σ, v), what `output_type="latent"` returns, and the side of a 64-px image's latents.
LAYOUT = {
    "flux1": dict(call=_keyword_call(flux1.unpack_latents), side=8,
                  sampled=lambda pipe, out, h, w: flux1.unpack_latents(out, h, w)),
    "flux2-dev": dict(call=_keyword_call(flux2.untokens), side=4,
                      sampled=lambda pipe, out, h, w: flux2.untokens(out, h, w)),
    "flux2-klein": dict(call=_keyword_call(flux2.untokens), side=4,
                        sampled=lambda pipe, out, h, w: flux2.normalise(pipe.vae, out)),
    "z-image": dict(call=_z_image_call, side=8, sampled=lambda pipe, out, h, w: out),
    "qwen-image": dict(call=_keyword_call(flux1.unpack_latents), side=8,
                       sampled=lambda pipe, out, h, w: flux1.unpack_latents(out, h, w)),
}
FAMILIES = list(LAYOUT)
pytestmark = pytest.mark.usefixtures("one_thread")
SETTINGS = dict(steps=3, guidance=3.5, width=64, height=64, max_sequence_length=64)  # Z-Image's template is ~20 tokens


@pytest.fixture(scope="module", params=FAMILIES)
def family_dir(request, tmp_path_factory):
    from lookalike.models.twin import save_twin

    return request.param, save_twin(tmp_path_factory.mktemp(request.param) / "twin", family=request.param,
                                    single_file=False)


def _pipe(folder):
    from lookalike.models.source import load_pipeline, resolve_source

    pipe = load_pipeline(resolve_source(str(folder)), torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _settings():
    from lookalike.generate import SampleSettings

    return SampleSettings(**SETTINGS)


def _draw(pipe, prompt, seed, negative=True, output_type=None):
    """One image (or latent) through lookalike's sampler, with the empty prompt as negative where the family
    uses true CFG."""
    from lookalike.generate import encode_prompts, sample

    emb, empty = encode_prompts(pipe, [prompt, ""], SETTINGS["max_sequence_length"])
    if output_type is None:
        (s,) = sample(pipe, [emb], [seed], _settings(), negative=empty if negative else None)
        return torch.tensor(list(s.image.getdata()), dtype=torch.float64)
    from lookalike.models.family import family_of_module

    family = family_of_module(pipe)
    neg = empty.cond if family.guidance == "cfg" else None
    return pipe(**family.sample_kwargs(emb.cond, neg, _settings()), num_inference_steps=SETTINGS["steps"],
                width=64, height=64, generator=torch.Generator().manual_seed(seed), output_type=output_type).images


def test_the_family_is_read_from_the_folder(family_dir):
    from lookalike.models.family import family_of_folder

    name, folder = family_dir
    assert family_of_folder(folder).name == name
    assert type(_pipe(folder)).__name__ == get_family(name).pipeline_class


def test_predict_velocity_is_the_pipelines_own_transformer_call(family_dir):
    from lookalike.generate import encode_prompts

    name, folder = family_dir
    family, pipe = get_family(name), _pipe(folder)
    side = LAYOUT[name]["side"]
    calls = []
    hook = pipe.transformer.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(LAYOUT[name]["call"](args, kwargs, out, side, side)),
        with_kwargs=True)
    try:
        _draw(pipe, "Arthur as a wizard", seed=3)
    finally:
        hook.remove()
    # a step after the first (σ < 1); with true CFG the conditional row comes first in each step (its own call,
    # or the first half of a doubled batch)
    z, sigma, theirs = next(c for c in calls if c[1].max() < 1)
    (emb,) = encode_prompts(pipe, ["Arthur as a wizard"], SETTINGS["max_sequence_length"])
    with torch.no_grad():
        ours = family.predict_velocity(pipe.transformer, z[:1], sigma[:1], emb.cond, SETTINGS["guidance"])
    torch.testing.assert_close(ours, theirs[:1], rtol=1e-5, atol=1e-5)


def test_same_seed_same_image_other_seed_other_image(family_dir):
    _, folder = family_dir
    pipe = _pipe(folder)
    a, b, c = _draw(pipe, "Arthur", 0), _draw(pipe, "Arthur", 0), _draw(pipe, "Arthur", 1)
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 1.0


def _random_lora(transformer, seed=1, scale=0.6):
    """A LoRA on every target of the family's `attention` set with random A and B (B starts at 0 in peft)."""
    from lookalike.train.lora import add_lora

    summary = add_lora(transformer, rank=4, alpha=2.0, targets="attention", seed=0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in transformer.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return summary


def _export(name, transformer, summary, folder):
    from lookalike.export import header, save_diffusers_lora
    from lookalike.train.lora import lora_state_dict

    family = get_family(name)
    state = {k: v.detach().float() for k, v in lora_state_dict(transformer).items()}
    meta = header("Arthur", 4, 2.0, summary.modules, "twin", 1, family=name, resolution=64, captions=["Arthur"])
    diffusers_file = save_diffusers_lora(state, summary.config, folder / "lora.safetensors", meta,
                                         pipeline_cls=family.load_class("pipeline"))
    comfy_file = family.save_comfy_lora(transformer, state, summary.config, folder / "lora-kohya.safetensors", meta)
    return diffusers_file, comfy_file


def _velocity(transformer, name, seed=0):
    """The transformer's velocity at a fixed random state, through the family."""
    g = torch.Generator().manual_seed(seed)
    family = get_family(name)
    cfg = transformer.config
    channels = cfg.in_channels // (4 if name in ("flux1", "qwen-image") else 1)  # those two pack 2x2 patches
    side = LAYOUT[name]["side"]
    z = torch.randn(1, channels, side, side, generator=g)
    cond = _random_cond(name, cfg, g)
    with torch.no_grad():
        return family.predict_velocity(transformer, z, torch.tensor([0.6]), cond, 3.5)


def test_exports_reload_as_trained_and_comfyui_takes_every_key(family_dir, tmp_path):
    from lookalike.models import comfy_rules

    name, folder = family_dir
    trained = _pipe(folder)
    summary = _random_lora(trained.transformer)
    expected = _velocity(trained.transformer, name)
    diffusers_file, comfy_file = _export(name, trained.transformer, summary, tmp_path)

    reloaded = _pipe(folder)
    base = _velocity(reloaded.transformer, name)
    assert (expected - base).abs().max() > 1e-3  # the LoRA changes the model
    reloaded.load_lora_weights(str(diffusers_file))
    torch.testing.assert_close(_velocity(reloaded.transformer, name), expected, rtol=1e-4, atol=1e-5)

    # what ComfyUI must add to each native weight at strength 1.0: the trained change W' - W of every
    # Linear, placed where the family's native layout keeps it (a q/k/v slice of a fused qkv, ...)
    base_weights = {n: m.weight.detach() for n, m in _pipe(folder).transformer.named_modules()
                    if isinstance(m, torch.nn.Linear)}
    widths = {n: w.shape[0] for n, w in base_weights.items()}
    with torch.no_grad():
        trained.transformer.fuse_lora()
    kmap = comfy_rules.key_map(name, widths)
    shapes = {}  # each native weight's shape: as many rows as its members' slices reach
    for module, weight in base_weights.items():
        target = kmap.get(f"transformer.{module}")
        if target is not None:
            stop = target.rows[1] if target.rows else weight.shape[0]
            shapes[target.weight] = (max(stop, shapes.get(target.weight, (0,))[0]), weight.shape[1])
    want = {}
    for module, m in trained.transformer.named_modules():
        module = module.removesuffix(".base_layer")  # peft keeps the fused Linear inside its wrapper
        if module not in base_weights or not isinstance(m, torch.nn.Linear):
            continue
        change = m.weight.detach() - base_weights[module]
        if change.abs().max() == 0:
            continue
        target = kmap[f"transformer.{module}"]
        start, stop = target.rows or (0, change.shape[0])
        want[(target.weight, start, stop)] = change
    assert want
    for path in (diffusers_file, comfy_file):
        from safetensors.torch import load_file

        lora = load_file(str(path))
        loaded = comfy_rules.match(lora, name, widths)
        assert not loaded.unloaded, f"{path.name}: ComfyUI would print 'lora key not loaded' for {loaded.unloaded[:3]}"
        got = comfy_rules.native_deltas(loaded, lora, shapes)
        for (weight, start, stop), change in want.items():
            torch.testing.assert_close(got[weight][start:stop], change, rtol=1e-4, atol=1e-6,
                                       msg=lambda m: f"{path.name}: {weight}[{start}:{stop}]: {m}")


def test_a_lora_at_weight_zero_draws_the_base_exactly(family_dir, tmp_path):
    from lookalike.config import LoraSpec
    from lookalike.models.lora import apply_loras

    name, folder = family_dir
    trained = _pipe(folder)
    summary = _random_lora(trained.transformer)
    diffusers_file, _ = _export(name, trained.transformer, summary, tmp_path)
    base = _draw(_pipe(folder), "Arthur", 2)
    pipe = _pipe(folder)
    apply_loras(pipe, [LoraSpec(path=str(diffusers_file), weight=0.0)])
    assert torch.equal(_draw(pipe, "Arthur", 2), base)
    pipe.set_adapters(pipe.get_active_adapters(), adapter_weights=[1.0])
    assert (_draw(pipe, "Arthur", 2) - base).abs().mean() > 1.0


@pytest.mark.slow
def test_overfitting_four_photos_lowers_the_loss_and_draws_nearer_the_photos(family_dir):
    from lookalike.config.schema import TrainConfig
    from lookalike.generate import encode_prompts
    from lookalike.train.lora import add_lora
    from lookalike.train.step import Batch, training_loss

    name, folder = family_dir
    family, pipe = get_family(name), _pipe(folder)
    g = torch.Generator().manual_seed(0)
    pixels = torch.nn.functional.interpolate(torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, size=64, mode="bilinear")
    captions = [f"Arthur standing in place {i}" for i in range(4)]
    with torch.no_grad():
        latents = family.encode_latents(pipe.vae, pixels)
        embs = encode_prompts(pipe, captions, SETTINGS["max_sequence_length"])
    from lookalike.models.family import cond_cat

    batch = Batch(latents, cond_cat(e.cond for e in embs))
    h, w = latents.shape[-2:]

    def distance(seed):
        from lookalike.models.family import family_of_module

        fam = family_of_module(pipe)
        neg = encode_prompts(pipe, [""], SETTINGS["max_sequence_length"])[0].cond if fam.guidance == "cfg" else None
        out = []
        for i, e in enumerate(embs):
            sampled = pipe(**family.sample_kwargs(e.cond, neg, _settings()), num_inference_steps=12, width=64,
                           height=64, generator=torch.Generator().manual_seed(seed), output_type="latent").images
            out.append(float(((LAYOUT[name]["sampled"](pipe, sampled, h, w)[0] - latents[i]) ** 2).mean()))
        return out

    before = distance(0) + distance(1)
    add_lora(pipe.transformer, rank=16, alpha=16, targets="all-linear", seed=0)
    params = [p for p in pipe.transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    train = TrainConfig(guidance=1.0)
    losses = []
    for step in range(200):
        loss, _ = training_loss(pipe.transformer, batch, train, torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    # σ and ε are drawn afresh every step, so the loss has a floor well above 0 even for a memorised set
    assert statistics.mean(losses[-10:]) < 0.8 * statistics.mean(losses[:10]), (losses[:10], losses[-10:])
    with torch.no_grad():
        after = distance(0) + distance(1)
    assert statistics.mean(after) < 0.85 * statistics.mean(before), (before, after)
