"""Loading FLUX.1 from wherever the user has it, behind one small interface.

A model source is one of:
  * a hub id such as `black-forest-labs/FLUX.1-dev` (gated: needs the licence accepted and a token),
  * a local diffusers folder (the layout `save_pretrained` writes, with model_index.json),
  * a single `.safetensors` transformer file such as ComfyUI's `flux1-dev.safetensors`; the VAE,
    text encoders, tokenizers and scheduler then come from `model.components`,
  * `lookalike:tiny-twin`, the seeded random-weight twin (built on first use),
  * `lookalike:toy`, the pretrained toy FLUX shipped in the package (`lookalike.toy`): a folder.

Every kind is first resolved to a local folder (a hub id through the hub cache), then loaded with
diffusers' own `from_pretrained` / `from_single_file`. Only the parts a stage needs are fetched and
loaded: generation needs the whole pipeline, training only the transformer.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lookalike.errors import ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_COMPONENTS = "black-forest-labs/FLUX.1-dev"
TWIN_SOURCE = "lookalike:tiny-twin"
TOY_SOURCE = "lookalike:toy"
PIPELINE_CLASSES = {"FluxPipeline"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
ALL_PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")


@dataclass(frozen=True)
class ModelSource:
    """Where a FLUX model comes from. `ref` is a hub id, a folder or a file, by `kind`."""

    kind: Literal["hub", "folder", "single_file", "twin"]
    ref: str
    revision: str | None = None
    components: "ModelSource | None" = None  # for single_file: where the other parts live

    def __str__(self) -> str:
        return self.ref if self.kind != "single_file" else f"{self.ref} (+ {self.components})"


def resolve_source(source: str, components: str | None = None, revision: str | None = None) -> ModelSource:
    """Classify `model.source` without loading anything. Raises ModelLoadError for a missing path."""
    if source == TWIN_SOURCE:
        return ModelSource("twin", source)
    if source == TOY_SOURCE:
        from lookalike.toy import TOY_FOLDER

        if not (TOY_FOLDER / "model_index.json").exists():
            raise ModelLoadError(
                f"model.source = {source!r}: the toy model's weights are missing from {TOY_FOLDER}; "
                "reinstall lookalike, or rebuild them with `lookalike toy pretrain`"
            )
        return ModelSource("folder", str(TOY_FOLDER))
    path = Path(source).expanduser()
    if path.is_dir():
        return ModelSource("folder", str(path), components=None)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ModelLoadError(
                f"model.source = {source!r} is a file but not a .safetensors checkpoint; "
                "give a diffusers folder, a hub id, or a single .safetensors transformer file"
            )
        parts = resolve_source(components or DEFAULT_COMPONENTS, revision=revision)
        if parts.kind == "single_file":
            raise ModelLoadError(f"model.components = {components!r} must be a diffusers folder or hub id, not a file")
        return ModelSource("single_file", str(path), components=parts)
    if HUB_ID.match(source) and not source.startswith((".", "~")) and not source.endswith(".safetensors"):
        return ModelSource("hub", source, revision=revision)
    raise ModelLoadError(
        f"model.source = {source!r} does not exist (looked for the path {path.resolve()}). "
        "Fix the path, or use a hub id such as black-forest-labs/FLUX.1-dev, or lookalike:tiny-twin"
    )


def _hub_patterns(parts: tuple[str, ...]) -> list[str]:
    return ["model_index.json"] + [f"{p}/*" for p in parts]


def _hub_error(repo: str, err: Exception) -> ModelLoadError:
    """Turn huggingface_hub's exceptions into one message with the three ways out."""
    from huggingface_hub import errors as hf

    ways_out = (
        f"  1. accept the licence at https://huggingface.co/{repo} (signed in),\n"
        "  2. log in with `hf auth login`, or export HF_TOKEN=<a read token>,\n"
        "  3. or point model.source at local files: a diffusers folder, or a single flux1-dev.safetensors "
        "with model.components set to a folder holding the VAE and text encoders."
    )
    if isinstance(err, hf.GatedRepoError):
        why = f"{repo} is gated and this account has not been granted access"
    elif isinstance(err, hf.RepositoryNotFoundError):
        why = f"{repo} was not found on the hub, or is private and no valid token was sent"
    elif isinstance(err, (hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled)):
        why = (
            f"{repo} is not in the local hub cache and the hub cannot be reached "
            "(offline, or HF_HUB_OFFLINE=1)"
        )
    elif isinstance(err, hf.RevisionNotFoundError):
        return ModelLoadError(f"model.revision: {repo} has no such revision ({err}); leave it empty for main")
    else:
        why = f"downloading {repo} failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return ModelLoadError(f"cannot load model.source = {repo!r}: {why}. To fix it:\n{ways_out}")


def _hub_folder(source: ModelSource, parts: tuple[str, ...]) -> Path:
    """Download (or find in the hub cache) only the given parts of a hub pipeline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub import errors as hf

    try:
        folder = snapshot_download(source.ref, revision=source.revision, allow_patterns=_hub_patterns(parts))
    except (hf.HfHubHTTPError, hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled, hf.RepositoryNotFoundError) as e:
        raise _hub_error(source.ref, e) from None
    except OSError as e:  # connection errors surface as OSError subclasses
        raise _hub_error(source.ref, e) from None
    return Path(folder)


def local_folder(source: ModelSource, parts: tuple[str, ...] = ALL_PARTS) -> Path:
    """The local diffusers folder behind a folder, hub or twin source (fetching `parts` if needed)."""
    if source.kind == "twin":
        from lookalike.models.twin import ensure_twin

        folder = ensure_twin()
    elif source.kind == "hub":
        folder = _hub_folder(source, parts)
    elif source.kind == "folder":
        folder = Path(source.ref)
    else:
        raise ValueError(f"a single-file source has no folder of its own: {source}")
    _check_pipeline_folder(folder, source, parts)
    return folder


def _check_pipeline_folder(folder: Path, source: ModelSource, parts: tuple[str, ...]) -> None:
    """Refuse a folder that is not a FLUX.1 diffusers pipeline, saying what it is instead."""
    index = folder / "model_index.json"
    name = source.ref
    if not index.exists():
        hint = ""
        if any(folder.glob("*.safetensors")):
            hint = " It holds .safetensors files: point model.source at the file itself to load it as a single file."
        raise ModelLoadError(
            f"model.source = {name!r} is not a diffusers pipeline folder: it has no model_index.json.{hint} "
            "Use the folder that contains model_index.json (e.g. a download of black-forest-labs/FLUX.1-dev)."
        )
    try:
        cls = json.loads(index.read_text()).get("_class_name")
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{index} is not valid JSON ({e}); re-download the model") from None
    if cls not in PIPELINE_CLASSES:
        raise ModelLoadError(
            f"model.source = {name!r} holds a {cls}, not a FLUX.1 pipeline (model_index.json _class_name); "
            "lookalike trains FLUX.1 models: use black-forest-labs/FLUX.1-dev or a folder saved from a FluxPipeline"
        )
    missing = [p for p in parts if not (folder / p).is_dir()]
    if missing:
        raise ModelLoadError(
            f"model.source = {name!r} is missing the part(s) {', '.join(missing)}; "
            "the download may be incomplete: download it again"
        )


def _check_single_file(path: Path) -> None:
    """Refuse a .safetensors file that is not a FLUX.1 transformer, saying what it looks like."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ModelLoadError(f"model.source = {str(path)!r} is not a readable .safetensors file ({e})") from None
    if any("lora" in k for k in keys[:50]):
        raise ModelLoadError(
            f"model.source = {str(path)!r} is a LoRA, not a base model; pass it to `generate --lora` instead"
        )
    flux_markers = ("double_blocks.", "single_blocks.", "transformer_blocks.")
    if not any(m in k for k in keys for m in flux_markers):
        raise ModelLoadError(
            f"model.source = {str(path)!r} has no FLUX transformer weights (no double_blocks/single_blocks keys); "
            "give the flux1-dev.safetensors transformer file, a diffusers folder, or a hub id"
        )


def _parts_folder(source: ModelSource, parts: tuple[str, ...]) -> Path:
    """The folder holding `parts` other than the transformer: `model.components` for a single file."""
    return local_folder(source.components if source.kind == "single_file" else source, parts=parts)


def load_transformer(source: ModelSource, dtype) -> "FluxTransformer2DModel":  # noqa: F821
    """Load only the FLUX transformer (what training needs), in `dtype`, on the CPU."""
    from diffusers import FluxTransformer2DModel

    if source.kind == "single_file":
        path = Path(source.ref)
        _check_single_file(path)
        config_folder = local_folder(source.components, parts=("transformer",))
        log.info("loading transformer from single file %s (config from %s)", path, source.components)
        try:
            return FluxTransformer2DModel.from_single_file(
                str(path), config=str(config_folder), subfolder="transformer", torch_dtype=dtype
            )
        except (RuntimeError, IndexError, KeyError, ValueError) as e:
            raise ModelLoadError(
                f"model.source = {str(path)!r}: diffusers could not read it as a FLUX.1 transformer "
                f"({type(e).__name__}: {str(e)[:200]}). Is it a FLUX.1 dev/schnell transformer, and does "
                f"model.components ({source.components}) hold the matching model?"
            ) from None
    folder = local_folder(source, parts=("transformer",))
    log.info("loading transformer from %s", folder)
    return FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer", torch_dtype=dtype)


def load_pipeline(source: ModelSource, dtype, with_transformer: bool = True) -> "FluxPipeline":  # noqa: F821
    """Load the FluxPipeline in `dtype`, on the CPU: whole for generation, or without the transformer
    (VAE, text encoders, tokenizers, scheduler: what the cache stage needs)."""
    from diffusers import FluxPipeline

    if not with_transformer:
        folder = _parts_folder(source, tuple(p for p in ALL_PARTS if p != "transformer"))
        log.info("loading VAE and text encoders from %s", folder)
        return FluxPipeline.from_pretrained(folder, transformer=None, torch_dtype=dtype)
    if source.kind == "single_file":
        transformer = load_transformer(source, dtype)
        folder = local_folder(source.components, parts=tuple(p for p in ALL_PARTS if p != "transformer"))
        log.info("loading VAE, text encoders and scheduler from %s", folder)
        return FluxPipeline.from_pretrained(folder, transformer=transformer, torch_dtype=dtype)
    folder = local_folder(source)
    log.info("loading pipeline from %s", folder)
    return FluxPipeline.from_pretrained(folder, torch_dtype=dtype)


def load_sampling_parts(source: ModelSource, dtype):
    """The VAE and scheduler only: with a transformer already in memory and cached prompt embeddings,
    that is all the sampler needs (training previews). Returns (vae, scheduler)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

    folder = _parts_folder(source, ("vae", "scheduler"))
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype)
    return vae, FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")


def model_source(model_cfg) -> ModelSource:
    """`ModelSource` from the config's `model` section."""
    return resolve_source(model_cfg.source, model_cfg.components, model_cfg.revision)


def source_identity(source: ModelSource) -> str:
    """A string that changes when the weights behind `source` may have changed, for cache keys.

    Hub sources: id and revision. Local files and folders: path plus size and mtime of every
    .safetensors file, so re-downloading or replacing a model invalidates what was encoded with it.
    """
    parts = [source.kind, source.ref, source.revision or ""]
    if source.components is not None:
        parts.append(source_identity(source.components))
    path = Path(source.ref)
    if source.kind in ("folder", "single_file"):
        files = [path] if path.is_file() else sorted(path.rglob("*.safetensors"))
        parts += [f"{f.relative_to(path.parent)}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
    return "|".join(parts)
