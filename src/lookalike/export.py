"""Exporting a trained LoRA: diffusers/PEFT format and kohya/ComfyUI format, with metadata.

Two files, each loading at strength 1.0 exactly as trained in every reader we target:

* `lora.safetensors`, diffusers keys (`transformer.<module>.lora_A.weight` / `.lora_B.weight`), with
  **alpha / rank folded into lora_B** and neither `.alpha` tensors nor diffusers' `lora_adapter_metadata`
  header. A file without alphas means scale 1.0 to every reader: diffusers (no metadata and no alpha ->
  lora_alpha = rank per module, `get_peft_kwargs`), ComfyUI (no `<module>.alpha` tensor -> 1.0), and
  anything else that multiplies B @ A. Why not the other consistent layout, diffusers keys plus
  `<module>.alpha` tensors: `FluxPipeline.lora_state_dict` (FLUX.1) reads those, but
  `Flux2LoraLoaderMixin` (FLUX.2 dev and klein, diffusers 0.42.1) passes `.alpha` keys through to
  `load_lora_weights`, which refuses the file ("Invalid adapter checkpoint"); and diffusers refuses
  `.alpha` tensors next to `lora_adapter_metadata` anyway. The old layout (alpha only in
  `lora_adapter_metadata`) loaded at alpha/rank in diffusers but at 1.0 in ComfyUI: twice the strength
  at lookalike's rank 32 / alpha 16. Old files still load in diffusers and `lookalike generate`.
* `lora-kohya.safetensors`, kohya/sd-scripts keys (`lora_unet_double_blocks_0_img_attn_qkv.lora_down...`)
  with `.alpha` tensors = the trained alpha, through `flux_keys.lora_to_kohya`.

Both headers carry the same fields (strings only): lookalike's own `lookalike.*` (trigger, rank, alpha,
targets, base model, steps; `read_header` returns these), the sd-scripts `ss_*` fields UIs and model
sites read (network module, dim, alpha, base model version, output name, tag frequency of the captions,
training comment, resolution), and `modelspec.*` (Stability's sai_model_spec 1.0.1: architecture,
implementation, title, resolution, date, trigger phrase). `lookalike.alpha` is the alpha training used;
`ss_network_alpha` describes the file's tensors, so in the folded diffusers file it equals the rank.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Mapping

HEADER_PREFIX = "lookalike."
MODELSPEC_VERSION = "1.0.1"

def tag_frequency(trigger: str, captions: Iterable[str]) -> dict[str, dict[str, int]]:
    """sd-scripts' `ss_tag_frequency`: {"1_<trigger>": {tag: count}}, tags = comma-separated caption parts
    (one dataset folder, one repeat, as ai-toolkit writes it)."""
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(t.strip() for t in caption.split(",") if t.strip())
    return {f"1_{trigger}": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))}


def _resolution(resolution) -> tuple[int, int] | None:
    if resolution is None:
        return None
    if isinstance(resolution, (int, float)):
        return int(resolution), int(resolution)
    if isinstance(resolution, str):
        w, _, h = resolution.lower().partition("x")
        return int(w), int(h or w)
    w, h = resolution
    return int(w), int(h)


def header(
    trigger: str, rank: int, alpha: float, targets, base_model: str, steps: int, *,
    family: str | None = None, architecture: str | None = None, base_version: str | None = None,
    resolution: int | tuple[int, int] | str | None = None, captions: Iterable[str] | None = None,
    title: str | None = None, output_name: str | None = None, comment: str | None = None,
    date: datetime | str | None = None,
) -> dict[str, str]:
    """The metadata fields written into every exported LoRA's safetensors header (strings only).

    Without `family`, only lookalike's own six fields (what this returned before; the other keywords
    need a family). With `family` (a model family's name: "flux1", "flux2-dev", "flux2-klein"), also the
    `ss_*` and `modelspec.*` fields, from the family's `export` constants (`lookalike.models.<family>`);
    `architecture` and `base_version` override them. `resolution`: the training size (1024, (1024, 768) or "1024x768").
    `captions`: the training captions, for `ss_tag_frequency`. `title` / `output_name` default to the
    trigger; `date` to now (ISO 8601, seconds).
    """
    own = {
        f"{HEADER_PREFIX}trigger": trigger,
        f"{HEADER_PREFIX}rank": str(rank),
        f"{HEADER_PREFIX}alpha": str(alpha),
        f"{HEADER_PREFIX}targets": json.dumps(list(targets)),
        f"{HEADER_PREFIX}base_model": base_model,
        f"{HEADER_PREFIX}steps": str(steps),
    }
    if family is None:
        given = {k for k, v in dict(architecture=architecture, base_version=base_version, resolution=resolution,
                                    captions=captions, title=title, output_name=output_name, comment=comment,
                                    date=date).items() if v is not None}
        if given:
            raise ValueError(f"header({', '.join(sorted(given))}=...) needs family=, a model family's name")
        return own
    from lookalike.errors import ModelLoadError
    from lookalike.models.family import family as get_family

    try:
        consts = get_family(family).export
    except ModelLoadError as e:
        raise ValueError(str(e)) from None
    if date is None:
        date = datetime.now().replace(microsecond=0)
    date_text = date if isinstance(date, str) else date.isoformat()
    title = title or trigger
    meta = {
        **own,
        "ss_network_module": consts["network_module"],
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(alpha)),
        "ss_base_model_version": base_version or consts["base_version"],
        "ss_sd_model_name": base_model,
        "ss_output_name": output_name or title,
        "ss_steps": str(steps),
        "ss_training_comment": comment or (
            f"lookalike LoRA of {trigger!r} on {base_model}, rank {rank}, alpha {alpha:g}, {steps} steps; "
            f"write {trigger!r} in the prompt"),
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": architecture or consts["architecture"],
        "modelspec.implementation": consts["implementation"],
        "modelspec.title": title,
        "modelspec.date": date_text,
        "modelspec.trigger_phrase": trigger,
    }
    size = _resolution(resolution)
    if size:
        meta["ss_resolution"] = f"({size[0]}, {size[1]})"
        meta["modelspec.resolution"] = f"{size[0]}x{size[1]}"
    if captions is not None:
        captions = list(captions)
        meta["ss_tag_frequency"] = json.dumps(tag_frequency(trigger, captions))
        meta["ss_num_train_images"] = str(len(captions))
    return meta


def save_tensors(tensors: Mapping, path: str | Path, metadata: dict[str, str]) -> Path:
    """Write `tensors` (moved to the CPU, made contiguous) and `metadata` to `path` as safetensors, atomically:
    a temporary sibling renamed over `path`, so a crash never leaves half a file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
    os.replace(tmp, path)
    return path




def _config_value(config, name: str, default=None):
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def peft_scale(lora_config, module: str, rank: int) -> float:
    """The scale PEFT applies to `module`'s B @ A: alpha / rank (alpha / sqrt(rank) with rsLoRA), alpha
    from `alpha_pattern` when one of its patterns names the module, else `lora_alpha`."""
    from peft.utils.other import get_pattern_key

    pattern = dict(_config_value(lora_config, "alpha_pattern", None) or {})
    alpha = float(pattern.get(get_pattern_key(list(pattern), module), _config_value(lora_config, "lora_alpha")))
    return alpha / (math.sqrt(rank) if _config_value(lora_config, "use_rslora", False) else rank)


def fold_alpha(state: Mapping, lora_config, prefix: str = "") -> dict:
    """PEFT LoRA weights -> the same LoRA at scale 1.0: each lora_B times its module's PEFT scale, keys
    given `prefix` (e.g. "transformer.") unless they already start with it."""
    out = {}
    for key, tensor in state.items():
        name = key.removeprefix(prefix)
        module, sep, suffix = name.partition(".lora_B.")
        if sep:
            rank = state[key[: key.index(".lora_B.")] + ".lora_A.weight"].shape[0]
            tensor = (tensor.float() * peft_scale(lora_config, module, rank)).to(tensor.dtype)
        elif ".lora_A." not in name:
            raise ValueError(f"LoRA weight {key!r} is neither a lora_A nor a lora_B weight")
        out[prefix + name] = tensor
    return out


def save_diffusers_lora(state: Mapping, lora_config, path: str | Path, meta: dict[str, str], *,
                        pipeline_cls=None) -> Path:
    """Write a LoRA in diffusers keys that diffusers and ComfyUI both apply as trained (see the module doc).

    `state` is PEFT-named (from `lora_state_dict`, with or without the `transformer.` prefix);
    `lora_config` is its peft `LoraConfig` (or its `to_dict()`), whose alpha is folded into lora_B.
    `pipeline_cls` (the family's pipeline class) names the component prefix (`transformer_name`,
    "transformer" for every family so far, the default). `meta` is written into the header, its
    `ss_network_alpha` set to the rank to describe the folded tensors.
    """
    prefix = f"{getattr(pipeline_cls, 'transformer_name', 'transformer')}."
    tensors = fold_alpha(state, lora_config, prefix)
    metadata = {"format": "pt", **meta}
    if "ss_network_alpha" in metadata:
        metadata["ss_network_alpha"] = str(float(_config_value(lora_config, "r")))
    return save_tensors(tensors, path, metadata)


def save_kohya_lora(state: Mapping, alpha: float, module_dims: Mapping[str, int], path: str | Path,
                    meta: dict[str, str]) -> Path:
    """Write a LoRA in kohya/ComfyUI keys (`lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`)."""
    from lookalike.models.flux_keys import lora_to_kohya

    return save_tensors(lora_to_kohya(dict(state), alpha=alpha, module_dims=module_dims), path, meta)


def save_prefixed_lora(state: Mapping, alpha: float, prefix: str, path: str | Path, meta: dict[str, str]) -> Path:
    """Write a LoRA as `<prefix><diffusers module>.lora_A/B.weight` plus a `<prefix><module>.alpha` tensor per
    module (the trained alpha, unfolded): the layout ComfyUI reads for families whose diffusers names it maps
    itself (FLUX.2, Z-Image, Qwen-Image); it scales by alpha / rank only from `.alpha` tensors."""
    import torch

    tensors = {}
    for key, value in state.items():
        name = key.removeprefix("transformer.")
        tensors[prefix + name] = value
        module, sep, _ = name.partition(".lora_A.")
        if sep:
            tensors[f"{prefix}{module}.alpha"] = torch.tensor(float(alpha))
    return save_tensors(tensors, path, meta)


def read_header(path: str | Path) -> dict[str, str]:
    """The lookalike fields of an exported LoRA's header, without the prefix."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    return {k[len(HEADER_PREFIX):]: v for k, v in metadata.items() if k.startswith(HEADER_PREFIX)}
