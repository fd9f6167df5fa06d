"""Model families: everything a stage may not know about one kind of model, in one composed object.

A stage (cache, train, previews, generate, eval) never names a model class or a text-encoder tensor.
It asks the model's `Family` instead:

    family = family_of_folder(folder)          # read from model_index.json's pipeline class
    cond = family.encode_text(pipe, prompts, max_sequence_length, device)   # {name: [B, ...]}, opaque
    z = family.encode_latents(vae, pixels)      # [B, 3, H, W] in [-1, 1] -> normalised latents [B, C, h, w]
    v = family.predict_velocity(transformer, z_sigma, sigma, cond, guidance)   # [B, C, h, w]
    pipe(**family.sample_kwargs(cond, negative, settings), ...)               # the pipeline's own sampler

Each family is a frozen dataclass of plain values and functions, defined in its own module
(`models/flux1.py`, ...) and registered in `FAMILIES`: no subclass tree, no `is_*` flags. The ideas
come from three codebases the field admires: BFL's flux (`ModelSpec` values in a configs table),
musubi-tuner (a short list of hooks per architecture) and SimpleTuner (one place per family).

A conditioning (`Cond`) is a dict of tensors with a leading batch dimension. Stages move, slice,
stack, cache and repeat it without knowing what is inside (`cond_rows`, `cond_cat`, `cond_to`, ...).

This module imports neither torch nor diffusers at import time: the CLI's `--help` and the config
schema read the registry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from lookalike.errors import ModelLoadError

Cond = dict  # {name: Tensor [B, ...]}: one batch of text conditioning, opaque to every stage


@dataclass(frozen=True)
class Family:
    """One model family: its classes by name, its values, and the few functions that differ per family.

    Functions (all shapes with a leading batch dimension B):
      encode_text(pipe, prompts, max_sequence_length, device) -> Cond
      encode_latents(vae, pixels [B, 3, H, W] in [-1, 1]) -> latents [B, C, h, w], normalised for training
      predict_velocity(transformer, z_sigma [B, C, h, w], sigma [B], cond, guidance: float) -> [B, C, h, w]
      sample_kwargs(cond, negative: Cond | None, settings) -> the pipeline call's text and guidance arguments
      build_twin(seed) -> a tiny random-weight pipeline of this family (tests, `lookalike:tiny-*`)
      save_comfy_lora(transformer, state, lora_config, path, meta) -> path: the LoRA in the keys ComfyUI's
        loader takes for this family, with `.alpha` tensors (`lora-kohya.safetensors`)
    """

    name: str  # registry key and config value, e.g. "flux1"
    title: str  # for people: "FLUX.1"
    pipelines: tuple[str, ...]  # model_index.json `_class_name` values that are this family
    pipeline_class: str  # the diffusers class that loads and samples it
    transformer_class: str
    vae_class: str
    text_parts: tuple[str, ...]  # pipeline parts only text encoding needs: dropped after encoding
    guidance: Literal["embedded", "cfg"]  # embedded: a value fed to the model; cfg: true CFG, negative prompt
    block_lists: tuple[str, ...]  # transformer attributes holding the blocks memory modes quantise
    lora_targets: Mapping[str, tuple[str, ...]]  # named target sets, module-name suffixes (peft)
    single_file_markers: tuple[str, ...]  # key fragments that identify a single-file checkpoint
    encode_text: Callable[..., Cond]
    encode_latents: Callable[..., Any]
    predict_velocity: Callable[..., Any]
    sample_kwargs: Callable[..., dict]
    build_twin: Callable[..., Any]
    save_comfy_lora: Callable[..., Any]
    twin_source: str  # e.g. "lookalike:tiny-twin"
    size_multiple: int = 16  # image sides: VAE downsampling x patch size
    default_components: str | None = None  # hub id holding VAE / text encoders for a single-file transformer
    export: Mapping[str, str] = field(default_factory=dict)  # modelspec architecture, ss_base_model_version
    twin_index: Mapping[str, Any] = field(default_factory=dict)  # model_index.json entries a saved twin gets

    def targets(self, value: str | list[str]) -> list[str]:
        """A preset name -> this family's module list; a list is returned as it is."""
        if not isinstance(value, str):
            return list(value)
        if value not in self.lora_targets:
            from lookalike.errors import ConfigError

            raise ConfigError(f"lora.targets = {value!r} is not a target set of {self.title}; "
                              f"its sets: {', '.join(self.lora_targets)}, or a list of module names")
        return list(self.lora_targets[value])

    def load_class(self, kind: str):
        """The diffusers class for `kind` in pipeline / transformer / vae."""
        import diffusers

        return getattr(diffusers, getattr(self, f"{kind}_class"))


def _registry() -> dict[str, Family]:
    from lookalike.models import flux1, flux2, qwenimage, zimage

    return {f.name: f for f in (flux1.FAMILY, flux2.DEV, flux2.KLEIN, zimage.FAMILY, qwenimage.FAMILY)}


_FAMILIES: dict[str, Family] | None = None


def families() -> dict[str, Family]:
    """Every known family by name, in a fixed order."""
    global _FAMILIES
    if _FAMILIES is None:
        _FAMILIES = _registry()
    return _FAMILIES


def family(name: str) -> Family:
    """The family called `name`; a ModelLoadError listing the known ones otherwise."""
    known = families()
    if name not in known:
        raise ModelLoadError(f"unknown model family {name!r}; known families: {', '.join(known)}")
    return known[name]


def known_list() -> str:
    return "; ".join(f"{f.title} ({', '.join(f.pipelines)})" for f in families().values())


def family_of_pipeline_class(cls_name: str | None, where: str) -> Family:
    """The family whose pipeline class is `cls_name`; an error naming `where` and every known family."""
    for f in families().values():
        if cls_name in f.pipelines:
            return f
    raise ModelLoadError(
        f"{where} holds a {cls_name}, which lookalike does not train (model_index.json _class_name); "
        f"known families: {known_list()}"
    )


def family_of_folder(folder: Path, where: str | None = None) -> Family:
    """The family of a diffusers folder, from its model_index.json."""
    index = Path(folder) / "model_index.json"
    try:
        cls = json.loads(index.read_text()).get("_class_name")
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{index} is not valid JSON ({e}); re-download the model") from None
    return family_of_pipeline_class(cls, where or f"model.source = {str(folder)!r}")


def family_of_keys(keys: list[str], where: str) -> Family:
    """The family of a single-file transformer checkpoint, from its tensor names."""
    for f in families().values():
        if any(m in k for k in keys for m in f.single_file_markers):
            return f
    raise ModelLoadError(
        f"{where} has no transformer weights of a known family (no key containing any of "
        f"{', '.join(m for f in families().values() for m in f.single_file_markers)}); "
        f"known families: {known_list()}. Give a transformer file, a diffusers folder, or a hub id"
    )


def family_of_module(model) -> Family:
    """The family of a loaded pipeline or transformer, by its class (a compiled model by the original's)."""
    model = getattr(model, "_orig_mod", model)
    name = type(model).__name__
    for f in families().values():
        if name in f.pipelines or name in (f.pipeline_class, f.transformer_class):
            return f
    raise ModelLoadError(f"a {name} is not a model of a known family; known families: {known_list()}")


def twin_family(source: str) -> Family | None:
    """The family whose tiny twin `source` names (`lookalike:tiny-twin`, ...), else None."""
    return next((f for f in families().values() if f.twin_source == source), None)


def target_set_names() -> list[str]:
    """Every family's target set names (the config accepts any; the family checks its own at training)."""
    return list(dict.fromkeys(n for f in families().values() for n in f.lora_targets))


# ---------------------------------------------------------------- settings that mean nothing for a family

# The settings of each way of guiding. A family uses one way (`Family.guidance`); a setting of the other way,
# changed from its default, would be silently ignored, so `check_settings` refuses it.
GUIDANCE_SETTINGS = {
    "embedded": ("generate.guidance", "train.guidance"),
    "cfg": ("generate.cfg", "generate.negative_prompt"),
}
_HOW = {
    "embedded": "its guidance is distilled into an embedding that generate.guidance (train.guidance when "
                "training) feeds, so it draws with one forward per step and no negative prompt",
    "cfg": "it has no guidance embedding and draws with true classifier-free guidance, set by generate.cfg "
           "and generate.negative_prompt",
}


def check_settings(cfg, fam: Family) -> None:
    """Refuse a setting of the way of guiding `fam` does not use, when it differs from its default: a
    ConfigError naming the setting, the family and what to set instead."""
    from lookalike.errors import ConfigError

    for way, names in GUIDANCE_SETTINGS.items():
        if way == fam.guidance:
            continue
        for name in names:
            section, key = name.split(".")
            values = getattr(cfg, section)
            value, default = getattr(values, key), type(values).model_fields[key].default
            if value != default:
                raise ConfigError(f"{name} = {value!r} means nothing for {fam.title} (model.source = "
                                  f"{cfg.model.source!r}): {_HOW[fam.guidance]}. Remove {name} (or set it back "
                                  f"to {default!r})")


# ---------------------------------------------------------------- conditionings, whatever is inside


def cond_rows(cond: Cond, index) -> Cond:
    """The rows `index` (a bool mask, a slice or indices) of every tensor."""
    out = {}
    for k, v in cond.items():
        i = index.to(v.device) if hasattr(index, "to") else index
        out[k] = v[i]
    return out


def _padded(tensors: list, dim: int) -> list:
    """`tensors` zero-padded at the end of `dim` to the longest. Only for a conditioning with a "mask" (Z-Image,
    Qwen-Image: captions differ in length, 0 marks padding, so zeros are what padding means); the callers
    leave mask-less ones (FLUX) as they are, where a length mismatch is an error."""
    import torch

    longest = max(t.shape[dim] for t in tensors)
    out = []
    for t in tensors:
        if t.shape[dim] < longest:
            pad = list(t.shape)
            pad[dim] = longest - t.shape[dim]
            t = torch.cat([t, t.new_zeros(pad)], dim=dim)
        out.append(t)
    return out


def cond_cat(conds) -> Cond:
    """Conditionings of the same family stacked along the batch dimension ([B_i, L_i, ...] -> [ΣB_i, max L_i,
    ...]: a conditioning with a mask zero-pads sequences of different lengths, see `_padded`)."""
    import torch

    conds = list(conds)
    pad = "mask" in conds[0]
    return {k: torch.cat(_padded([c[k] for c in conds], 1) if pad and conds[0][k].dim() > 1 else [c[k] for c in conds])
            for k in conds[0]}


def cond_stack(items) -> Cond:
    """Per-item conditionings without a batch dimension ({name: [L_i, ...]}) -> one batch {name: [B, max L_i,
    ...]} (with a mask: zero-padded, see `_padded`)."""
    import torch

    items = list(items)
    pad = "mask" in items[0]
    return {k: torch.stack(_padded([c[k] for c in items], 0) if pad and items[0][k].dim() > 0 else [c[k] for c in items])
            for k in items[0]}


def cond_to(cond: Cond, device=None, dtype=None) -> Cond:
    """Every floating tensor to `device` and `dtype`; integer and bool tensors (masks, ids) keep their dtype."""
    return {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in cond.items()}


def cond_repeat(cond: Cond, times: int) -> Cond:
    """Each row repeated `times` times in place: [B, ...] -> [B·times, ...] (row i at i·times ... i·times+times-1)."""
    return {k: v.repeat_interleave(times, dim=0) for k, v in cond.items()}
