"""Applying zero, one or several LoRA files to a pipeline, each with its own weight.

Files are checked before diffusers sees them, so a wrong file gets a message that names it and
says what it is instead: not a LoRA, a LoRA for another model family, or shapes for another size.
kohya/sd-scripts FLUX.1 files (every key `lora_unet_<BFL module>.{lora_down.weight, lora_up.weight,
alpha}`, what `lookalike train` writes as `lora-kohya.safetensors`) convert through our own key table,
`flux_keys.lora_from_kohya`, which reads every width from the loaded model, when the pipeline's
transformer is FLUX.1's. Every other format (diffusers/PEFT, ComfyUI, XLabs, ...) goes through the
pipeline class's own `lora_state_dict` (`type(pipe).lora_state_dict`: FluxPipeline's, Flux2's, ...).
Either way the result is validated against the loaded model before anything is loaded.

lookalike's own diffusers file (`lora.safetensors`) has alpha folded into lora_B and no alpha anywhere
(see `lookalike.export`), so every loader applies it at scale 1.0. Older lookalike files keep alpha in
diffusers' `lora_adapter_metadata` header, which diffusers reads only when it opens the file itself:
such files are handed to `load_lora_weights` by path. A diffusers-keyed file with `<module>.alpha`
tensors whose pipeline loader leaves the alphas in place (FLUX.2's, diffusers 0.42.1, which then refuses
the file) has them folded here, as for kohya files.
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


def _is_flux1(pipe) -> bool:
    """Whether `pipe` is of the FLUX.1 family, the model `flux_keys`' kohya table describes."""
    from lookalike.models.family import family_of_module

    return family_of_module(pipe).name == "flux1"


def is_kohya_flux(state: dict) -> bool:
    """Whether every key is a kohya FLUX transformer key (`lora_unet_...`), the layout our table reads."""
    from lookalike.models.flux_keys import KOHYA_PREFIX

    return bool(state) and all(k.startswith(KOHYA_PREFIX) for k in state)


def kohya_to_peft(pipe, state: dict, path: Path) -> dict:
    """A kohya FLUX.1 LoRA -> diffusers/PEFT state dict (`transformer.<module>.lora_A/B.weight`, fp32)
    whose plain product B @ A is the file's ΔW: alpha / r is folded into each lora_A (r, in).

    Why our table and not diffusers': diffusers' importer (0.42.1) hard-codes FLUX.1-dev's widths
    (it asserts when splitting a fused qkv / linear1 of any other size: the tiny twin, the toy model)
    and drops the global modules (img_in, final_layer, ...) silently; `lora_from_kohya` reads the widths
    from `pipe.transformer` and knows every module diffusers' importer knows, so one tested table serves
    export and import. Why fold: diffusers loads a plain state dict with PEFT scale 1 (lora_alpha = r),
    which is also what its own kohya importer relies on after folding the same factor.
    """
    from lookalike.models.flux_keys import PEFT_PREFIX, lora_from_kohya, module_out_features

    try:
        peft_state, alphas = lora_from_kohya(state, module_out_features(pipe.transformer))
    except LoraError as e:
        raise LoraError(f"{str(path)!r} is not a kohya FLUX.1 LoRA for this model: {e}") from None
    out = {k: v.float() for k, v in peft_state.items()}
    for module, alpha in alphas.items():
        key = f"{PEFT_PREFIX}{module}.lora_A.weight"
        out[key] = out[key] * (alpha / out[key].shape[0])
    return out


def _diffusers_state(pipe, state: dict, path: Path) -> dict:
    """Any other LoRA layout -> diffusers' state dict, through the pipeline class's own converters."""
    try:
        converted = type(pipe).lora_state_dict(dict(state))
    except Exception as e:  # diffusers' converters raise assorted errors on foreign layouts
        raise LoraError(f"{str(path)!r} is not a FLUX.1 LoRA that diffusers can read ({type(e).__name__}: {e})") from None
    return converted[0] if isinstance(converted, tuple) else converted


def fold_alphas(state: dict, path: Path) -> dict:
    """`<module>.alpha` tensors left in a diffusers state dict -> alpha / rank folded into each lora_A
    (r, in), the alpha keys dropped: a dict every loader applies at scale 1.0."""
    out = {k: v for k, v in state.items() if not k.endswith(".alpha")}
    for key in [k for k in state if k.endswith(".alpha")]:
        a_key = key.removesuffix(".alpha") + ".lora_A.weight"
        if a_key not in out:
            raise LoraError(f"{str(path)!r} has {key} but no {a_key}: a LoRA alpha without its weights")
        a = out[a_key]
        out[a_key] = (a.float() * (float(state[key]) / a.shape[0])).to(a.dtype)
    return out


def prepare_lora(pipe, path: Path) -> dict | str:
    """Check a LoRA file against `pipe`'s modules and shapes; -> what `pipe.load_lora_weights` gets.

    kohya FLUX.1 files give the state dict our table made (alpha folded in), and so do diffusers-keyed
    files whose `.alpha` tensors the pipeline's loader would not take. Every other file gives its path:
    diffusers reads the PEFT config (lora_alpha) that an older lookalike diffusers file keeps in its
    header only when it opens the file itself. Raises LoraError naming the file and the problem.
    """
    state = read_lora(path)
    kohya = is_kohya_flux(state) and _is_flux1(pipe)
    converted = kohya_to_peft(pipe, state, path) if kohya else _diffusers_state(pipe, state, path)
    folded = not kohya and any(k.endswith(".alpha") for k in converted)
    if folded:
        converted = fold_alphas(converted, path)
    if not any(k.startswith(("transformer.", "text_encoder.")) for k in converted):
        raise LoraError(f"{str(path)!r} has no weights for the FLUX transformer or text encoder")
    _module_shapes(pipe.transformer, "transformer", converted, path)
    if getattr(pipe, "text_encoder", None) is not None:
        _module_shapes(pipe.text_encoder, "text_encoder", converted, path)
    return converted if kohya or folded else str(path)


def check_lora(pipe, path: Path) -> None:
    """Validate a LoRA file against a loaded pipeline; raise LoraError naming the problem."""
    prepare_lora(pipe, path)


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
    loadable = [prepare_lora(pipe, f) for f in files]
    names: list[str] = []
    for spec, f, what in zip(specs, files, loadable):
        name = _adapter_name(spec, set(names))
        pipe.load_lora_weights(what, adapter_name=name)
        names.append(name)
        log.info("LoRA %s: %s at weight %g", name, f, spec.weight)
    pipe.set_adapters(names, adapter_weights=[float(s.weight) for s in specs])
    return names
