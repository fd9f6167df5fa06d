"""Loading a model of any known family from wherever the user has it, behind one small interface.

A model source is one of:
  * a hub id such as `black-forest-labs/FLUX.1-dev` (gated: needs the licence accepted and a token),
  * a local diffusers folder (the layout `save_pretrained` writes, with model_index.json),
  * a single `.safetensors` transformer file such as ComfyUI's `flux1-dev.safetensors`; the VAE,
    text encoders, tokenizers and scheduler then come from `model.components`,
  * `lookalike:tiny-twin` (FLUX.1) or another family's `lookalike:tiny-*`: a seeded random-weight
    twin, built on first use,
  * `lookalike:toy`, the pretrained toy FLUX shipped in the package (`lookalike.toy`): a folder.

Every kind is first resolved to a local folder (a hub id through the hub cache), then its family is
read (model_index.json's pipeline class, or the single file's keys: `lookalike.models.family`) and
it is loaded with that family's diffusers classes, through their own `from_pretrained` /
`from_single_file`. Only the parts a stage needs are fetched and loaded: generation needs the whole
pipeline, training only the transformer.
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

DEFAULT_COMPONENTS = "black-forest-labs/FLUX.1-dev"  # for a single file of no recognisable family
TWIN_SOURCE = "lookalike:tiny-twin"
TOY_SOURCE = "lookalike:toy"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from. `ref` is a hub id, a folder or a file, by `kind`."""

    kind: Literal["hub", "folder", "single_file", "twin"]
    ref: str
    revision: str | None = None
    components: "ModelSource | None" = None  # for single_file: where the other parts live

    def __str__(self) -> str:
        return self.ref if self.kind != "single_file" else f"{self.ref} (+ {self.components})"


def resolve_source(source: str, components: str | None = None, revision: str | None = None) -> ModelSource:
    """Classify `model.source` without loading anything. Raises ModelLoadError for a missing path."""
    from lookalike.models.family import twin_family

    if twin_family(source) is not None:
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
        parts = resolve_source(components or _default_components(path), revision=revision)
        if parts.kind == "single_file":
            raise ModelLoadError(f"model.components = {components!r} must be a diffusers folder or hub id, not a file")
        return ModelSource("single_file", str(path), components=parts)
    if HUB_ID.match(source) and not source.startswith((".", "~")) and not source.endswith(".safetensors"):
        return ModelSource("hub", source, revision=revision)
    raise ModelLoadError(
        f"model.source = {source!r} does not exist (looked for the path {path.resolve()}). "
        "Fix the path, or use a hub id such as black-forest-labs/FLUX.1-dev, or lookalike:tiny-twin"
    )


def _default_components(path: Path) -> str:
    """Where the VAE and text encoders of a single transformer file come from when model.components is not
    set: its family's published model (FLUX.1-dev when the file is not recognised; loading says why)."""
    from lookalike.models.family import family_of_keys

    try:
        fam = family_of_keys(_file_keys(path)[:200], str(path))
    except (ModelLoadError, OSError):
        return DEFAULT_COMPONENTS
    return fam.default_components or DEFAULT_COMPONENTS


def _file_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ModelLoadError(f"model.source = {str(path)!r} is not a readable .safetensors file ({e})") from None


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
    """Download (or find in the hub cache) only the given parts of a hub pipeline (and its model_index.json)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub import errors as hf

    try:
        folder = snapshot_download(source.ref, revision=source.revision, allow_patterns=_hub_patterns(parts))
    except (hf.HfHubHTTPError, hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled, hf.RepositoryNotFoundError) as e:
        raise _hub_error(source.ref, e) from None
    except OSError as e:  # connection errors surface as OSError subclasses
        raise _hub_error(source.ref, e) from None
    return Path(folder)


# Which parts a stage needs, by name: "all" (generation), "transformer" (training), "encode" (the cache
# stage: VAE, text encoders, scheduler), "sample" (previews: VAE and scheduler, the transformer is live).
PART_SETS = ("all", "transformer", "encode", "sample")


def parts_of(family, which: str) -> tuple[str, ...]:
    """The pipeline folder's subfolders that `which` (one of PART_SETS) needs for `family`."""
    core = {"all": ("transformer", "vae", "scheduler") + family.text_parts, "transformer": ("transformer",),
            "encode": ("vae", "scheduler") + family.text_parts, "sample": ("vae", "scheduler")}
    return core[which]


def local_folder(source: ModelSource, which: str = "all") -> tuple[Path, "Family"]:  # noqa: F821
    """(the local diffusers folder behind a folder, hub or twin source, its family), fetching the parts
    `which` names if needed."""
    from lookalike.models.family import family_of_folder, twin_family

    if source.kind == "twin":
        from lookalike.models.twin import ensure_twin

        folder = ensure_twin(twin_family(source.ref).name)
    elif source.kind == "hub":
        folder = _hub_folder(source, ())
        _check_pipeline_folder(folder, source)
        if which:
            folder = _hub_folder(source, parts_of(family_of_folder(folder, _where(source)), which))
    elif source.kind == "folder":
        folder = Path(source.ref)
    else:
        raise ValueError(f"a single-file source has no folder of its own: {source}")
    return folder, _check_pipeline_folder(folder, source, which)


def _where(source: ModelSource) -> str:
    return f"model.source = {source.ref!r}"


def _check_pipeline_folder(folder: Path, source: ModelSource, which: str | None = None):
    """The family of a diffusers pipeline folder; a clear error for a folder that is none, or lacks parts."""
    from lookalike.models.family import family_of_folder

    index = folder / "model_index.json"
    if not index.exists():
        hint = ""
        if any(folder.glob("*.safetensors")):
            hint = " It holds .safetensors files: point model.source at the file itself to load it as a single file."
        raise ModelLoadError(
            f"{_where(source)} is not a diffusers pipeline folder: it has no model_index.json.{hint} "
            "Use the folder that contains model_index.json (e.g. a download of black-forest-labs/FLUX.1-dev)."
        )
    family = family_of_folder(folder, _where(source))
    missing = [p for p in parts_of(family, which) if not (folder / p).is_dir()] if which else []
    if missing:
        raise ModelLoadError(
            f"{_where(source)} is missing the part(s) {', '.join(missing)}; "
            "the download may be incomplete: download it again"
        )
    return family


def _check_single_file(path: Path):
    """The family of a .safetensors transformer file; an error saying what it looks like if it is none."""
    from lookalike.models.family import family_of_keys

    keys = _file_keys(path)
    if any("lora" in k for k in keys[:50]):
        raise ModelLoadError(
            f"model.source = {str(path)!r} is a LoRA, not a base model; pass it to `generate --lora` instead"
        )
    return family_of_keys(keys, f"model.source = {str(path)!r}")


def source_family(source: ModelSource):
    """The family of the model behind `source` (reads model_index.json or the file's keys, loads nothing).
    A single transformer file joins the pipeline of `model.components` (FLUX.2 dev or klein)."""
    if source.kind == "single_file":
        return _single_file_family(source)[0]
    return local_folder(source, which=None)[1]


def _single_file_family(source: ModelSource, which: str | None = None):
    """(family, components folder) of a single-file source: the file's transformer, the components' pipeline."""
    path = Path(source.ref)
    family = _check_single_file(path)
    folder, parts_family = local_folder(source.components, which)
    if parts_family.transformer_class != family.transformer_class:
        raise ModelLoadError(
            f"model.source = {str(path)!r} is a {family.title} transformer but model.components "
            f"({source.components}) holds a {parts_family.title} model; set model.components to a "
            f"{family.title} model (e.g. {family.default_components})"
        )
    return parts_family, folder


def load_transformer(source: ModelSource, dtype):
    """Load only the transformer (what training needs), in `dtype`, on the CPU."""
    if source.kind == "single_file":
        path = Path(source.ref)
        family, config_folder = _single_file_family(source, "transformer")
        log.info("loading transformer from single file %s (config from %s)", path, source.components)
        try:
            return family.load_class("transformer").from_single_file(
                str(path), config=str(config_folder), subfolder="transformer", torch_dtype=dtype
            )
        except (RuntimeError, IndexError, KeyError, ValueError) as e:
            raise ModelLoadError(
                f"model.source = {str(path)!r}: diffusers could not read it as a {family.title} transformer "
                f"({type(e).__name__}: {str(e)[:200]}). Is it a {family.title} transformer, and does "
                f"model.components ({source.components}) hold the matching model?"
            ) from None
    folder, family = local_folder(source, "transformer")
    log.info("loading transformer from %s", folder)
    return family.load_class("transformer").from_pretrained(folder, subfolder="transformer", torch_dtype=dtype)


def _parts_folder(source: ModelSource, which: str):
    """(folder, family) holding the parts other than the transformer: `model.components` for a single file."""
    return local_folder(source.components if source.kind == "single_file" else source, which)


def load_pipeline(source: ModelSource, dtype, with_transformer: bool = True):
    """Load the family's pipeline in `dtype`, on the CPU: whole for generation, or without the transformer
    (VAE, text encoders, tokenizers, scheduler: what the cache stage needs)."""
    if not with_transformer:
        folder, family = _parts_folder(source, "encode")
        log.info("loading VAE and text encoders from %s", folder)
        return family.load_class("pipeline").from_pretrained(folder, transformer=None, torch_dtype=dtype)
    if source.kind == "single_file":
        transformer = load_transformer(source, dtype)
        folder, family = local_folder(source.components, "encode")
        log.info("loading VAE, text encoders and scheduler from %s", folder)
        return family.load_class("pipeline").from_pretrained(folder, transformer=transformer, torch_dtype=dtype)
    folder, family = local_folder(source)
    log.info("loading pipeline from %s", folder)
    return family.load_class("pipeline").from_pretrained(folder, torch_dtype=dtype)


def load_sampling_parts(source: ModelSource, dtype):
    """The VAE and scheduler only: with a transformer already in memory and cached prompt embeddings,
    that is all the sampler needs (training previews). Returns (vae, scheduler)."""
    import diffusers

    folder, family = _parts_folder(source, "sample")
    vae = family.load_class("vae").from_pretrained(folder, subfolder="vae", torch_dtype=dtype)
    scheduler_cls = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    return vae, getattr(diffusers, scheduler_cls).from_pretrained(folder, subfolder="scheduler")


def model_source(model_cfg) -> ModelSource:
    """`ModelSource` from the config's `model` section."""
    return resolve_source(model_cfg.source, model_cfg.components, model_cfg.revision)


def model_and_family(cfg):
    """(ModelSource, Family) of the config's model, with the config's settings checked against the family
    (a setting that means nothing for it is refused: `family.check_settings`)."""
    from lookalike.models.family import check_settings

    source = model_source(cfg.model)
    family = source_family(source)
    check_settings(cfg, family)
    return source, family


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
