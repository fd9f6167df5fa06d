"""Exporting a trained LoRA: diffusers/PEFT format and kohya/ComfyUI format, with metadata.

Both files carry the same header fields (trigger word, rank, alpha, targets, base model, steps) so a
LoRA found on disk months later still says what it is. The diffusers file also carries peft's
config under `lora_adapter_metadata`: without it a reload assumes alpha = rank and the output is
wrong whenever they differ (16 vs 32 in the write-up's recipe).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Mapping

HEADER_PREFIX = "lookalike."


def header(trigger: str, rank: int, alpha: float, targets, base_model: str, steps: int) -> dict[str, str]:
    """The metadata fields written into every exported LoRA's safetensors header (strings only)."""
    return {
        f"{HEADER_PREFIX}trigger": trigger,
        f"{HEADER_PREFIX}rank": str(rank),
        f"{HEADER_PREFIX}alpha": str(alpha),
        f"{HEADER_PREFIX}targets": json.dumps(list(targets)),
        f"{HEADER_PREFIX}base_model": base_model,
        f"{HEADER_PREFIX}steps": str(steps),
    }


def _save_atomic(tensors: dict, path: Path, metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
    os.replace(tmp, path)
    return path


def save_diffusers_lora(state: Mapping, lora_config, path: str | Path, meta: dict[str, str]) -> Path:
    """Write a LoRA that `FluxPipeline.load_lora_weights` reads with the right alpha.

    `state` is PEFT-named (from `lora_state_dict`); diffusers adds the `transformer.` prefix and
    peft's config; we add `meta` to the same header.
    """
    from diffusers import FluxPipeline
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent if path.parent.exists() else None) as tmp:
        FluxPipeline.save_lora_weights(
            tmp, transformer_lora_layers=dict(state), weight_name="lora.safetensors",
            transformer_lora_adapter_metadata=lora_config.to_dict(),
        )
        written = Path(tmp) / "lora.safetensors"
        with safe_open(str(written), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        return _save_atomic(load_file(str(written)), path, {**metadata, **meta})


def save_kohya_lora(state: Mapping, alpha: float, module_dims: Mapping[str, int], path: str | Path,
                    meta: dict[str, str]) -> Path:
    """Write a LoRA in kohya/ComfyUI keys (`lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`)."""
    from lookalike.models.flux_keys import lora_to_kohya

    return _save_atomic(lora_to_kohya(dict(state), alpha=alpha, module_dims=module_dims), Path(path), meta)


def read_header(path: str | Path) -> dict[str, str]:
    """The lookalike fields of an exported LoRA's header, without the prefix."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    return {k[len(HEADER_PREFIX):]: v for k, v in metadata.items() if k.startswith(HEADER_PREFIX)}
