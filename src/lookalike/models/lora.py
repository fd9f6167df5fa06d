"""Applying zero, one or several LoRA files to a FluxPipeline, each with its own weight.

Files are checked before diffusers sees them, so a wrong file gets a message that names it and
says what it is instead: not a LoRA, a LoRA for another model family, or shapes for another size.
Format conversion (diffusers/PEFT, kohya/ComfyUI, XLabs, ...) is diffusers' own
`FluxPipeline.lora_state_dict`; we only validate its output against the loaded model.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from lookalike.config import LoraSpec
from lookalike.errors import LoraError

log = logging.getLogger(__name__)

LORA_MARKERS = ("lora_A", "lora_B", "lora_down", "lora_up", "lora.down", "lora.up")
# Key fragments that only LoRAs for UNet models (Stable Diffusion 1.x / 2.x / XL) have.
UNET_MARKERS = ("down_blocks", "up_blocks", "mid_block", "input_blocks", "output_blocks", "lora_te_", "lora_te1_")
DEFAULT_FILE = "pytorch_lora_weights.safetensors"


def parse_lora_arg(text: str) -> LoraSpec:
    """`path[:weight]` from the command line, e.g. `style.safetensors:0.8` or `me.safetensors:-0.5`."""
    path, sep, tail = text.rpartition(":")
    if not sep or any(c in tail for c in "/\\") or tail.endswith(".safetensors") or not path:
        return LoraSpec(path=text)
    try:
        return LoraSpec(path=path, weight=float(tail))
    except ValueError:
        raise LoraError(
            f"--lora {text!r}: the weight {tail!r} is not a number; write PATH:WEIGHT, "
            f"e.g. --lora {path}:0.8 (negative weights are allowed)"
        ) from None


def lora_file(path: str | Path) -> Path:
    """The .safetensors file of a LoRA given as a file or as a folder saved by diffusers."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / DEFAULT_FILE
    if not p.is_file():
        raise LoraError(f"LoRA file {str(path)!r} not found; check the path (a .safetensors file or a folder with {DEFAULT_FILE})")
    return p


def read_lora(path: Path) -> dict:
    """The raw tensors of a LoRA file, refusing files that are not LoRAs or are for a UNet model."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for non-safetensors data
        raise LoraError(f"LoRA file {str(path)!r} is not a readable .safetensors file ({e})") from None
    if not any(m in k for k in state for m in LORA_MARKERS):
        raise LoraError(
            f"{str(path)!r} is not a LoRA: none of its {len(state)} tensors has a lora_A/lora_B or "
            "lora_down/lora_up name. If it is a full model checkpoint, use it as model.source instead."
        )
    unet = [k for k in state if any(m in k for m in UNET_MARKERS)]
    if unet:
        raise LoraError(
            f"{str(path)!r} is a LoRA for a UNet model (Stable Diffusion 1.x/2.x/XL: key {unet[0]!r}), "
            "not for FLUX.1; use a LoRA trained for FLUX.1"
        )
    return state


def _module_shapes(root, prefix: str, state: dict, path: Path) -> None:
    """Check every `prefix.<module>.lora_A/B` against the module it will wrap."""
    for key, tensor in state.items():
        m = re.match(rf"^{prefix}\.(.+)\.lora_([AB])\.weight$", key)
        if not m:
            continue
        name, which = m.groups()
        try:
            module = root.get_submodule(name)
        except AttributeError:
            raise LoraError(
                f"{str(path)!r} has weights for {prefix}.{name}, which this model does not have; "
                "the LoRA was made for another model family or architecture"
            ) from None
        module = getattr(module, "base_layer", module)
        want = module.in_features if which == "A" else module.out_features
        got = tensor.shape[1] if which == "A" else tensor.shape[0]
        if got != want:
            side = "input" if which == "A" else "output"
            raise LoraError(
                f"{str(path)!r} does not fit this model: {key} has {side} size {got}, but {prefix}.{name} "
                f"has {want}. The LoRA was trained for a model of another size (e.g. FLUX.1 vs the tiny twin)."
            )


def check_lora(pipe, path: Path) -> None:
    """Validate a LoRA file against a loaded pipeline; raise LoraError naming the problem."""
    state = read_lora(path)
    try:
        converted = type(pipe).lora_state_dict(dict(state))
    except Exception as e:  # diffusers' converters raise assorted errors on foreign layouts
        raise LoraError(f"{str(path)!r} is not a FLUX.1 LoRA that diffusers can read ({type(e).__name__}: {e})") from None
    converted = converted[0] if isinstance(converted, tuple) else converted
    if not any(k.startswith(("transformer.", "text_encoder.")) for k in converted):
        raise LoraError(f"{str(path)!r} has no weights for the FLUX transformer or text encoder")
    _module_shapes(pipe.transformer, "transformer", converted, path)
    if getattr(pipe, "text_encoder", None) is not None:
        _module_shapes(pipe.text_encoder, "text_encoder", converted, path)


def _adapter_name(spec: LoraSpec, taken: set[str]) -> str:
    base = spec.name or re.sub(r"\W+", "_", Path(spec.path).stem).strip("_") or "lora"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    return name


def apply_loras(pipe, specs: list[LoraSpec]) -> list[str]:
    """Load each LoRA as its own adapter and activate all of them with their weights.

    Every file is checked before any is loaded, so a bad third file leaves the pipeline untouched.
    Returns the adapter names, in the order of `specs`.
    """
    if not specs:
        return []
    files = [lora_file(s.path) for s in specs]
    for f in files:
        check_lora(pipe, f)
    names: list[str] = []
    for spec, f in zip(specs, files):
        name = _adapter_name(spec, set(names))
        pipe.load_lora_weights(str(f), adapter_name=name)
        names.append(name)
        log.info("LoRA %s: %s at weight %g", name, f, spec.weight)
    pipe.set_adapters(names, adapter_weights=[float(s.weight) for s in specs])
    return names
