"""Tiny twins: seeded random-weight pipelines of every model family, built from the real diffusers classes.

The real models (FLUX.1-dev, 12B and gated; the others as large) can never be loaded on the machines
that test this project, so every test runs the same loading, training and sampling code on a twin
instead. A twin has the parts, classes and folder layout of its family's published model, at a size
a CPU runs in seconds; each family says how to build its own (`Family.build_twin`). Same seed, same
weights, same images.

`lookalike:tiny-twin` (FLUX.1) and the other families' `lookalike:tiny-*` sources are built on
first use and kept under $LOOKALIKE_HOME (default ~/.cache/lookalike).
"""

from __future__ import annotations

from pathlib import Path

TWIN_SEED = 0
# Bump when a twin's architecture changes so cached copies are rebuilt.
TWIN_VERSION = 1
SINGLE_FILE_NAME = "flux1-twin.safetensors"


def build_twin(seed: int = TWIN_SEED, family: str = "flux1"):
    """The tiny random-weight pipeline of `family`, in memory (~0.1 s)."""
    from lookalike.models.family import family as get

    return get(family).build_twin(seed)


def save_twin(folder: str | Path, seed: int = TWIN_SEED, single_file: bool = True, family: str = "flux1") -> Path:
    """Build the twin and save it as a diffusers folder, like a local copy of the published model.

    With `single_file`, the transformer is also written alone as `<family>-twin.safetensors`, to test
    the single-file path (ComfyUI's `flux1-dev.safetensors`). It is in diffusers' key layout: diffusers'
    converter from the original BFL layout hard-codes FLUX.1's real widths (3072/12288), so no model as
    small as the twin can go through it.
    Writes into a temporary sibling folder first and renames it, so a crash leaves no half twin.
    """
    import os
    import shutil
    import tempfile

    from lookalike.models.family import family as get

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        pipe = build_twin(seed, family)
        pipe.save_pretrained(tmp)
        _rewrite_index(tmp / "model_index.json", get(family).twin_index)
        if single_file:
            save_single_file_transformer(pipe.transformer, tmp / single_file_name(family))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _rewrite_index(path: Path, entries: dict) -> None:
    """Set `entries` in a saved pipeline's model_index.json (a family's twin may name a class differently
    from what `save_pretrained` writes)."""
    if not entries:
        return
    import json

    index = json.loads(path.read_text(encoding="utf-8"))
    index.update(entries)
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def single_file_name(family: str) -> str:
    return SINGLE_FILE_NAME if family == "flux1" else f"{family}-twin.safetensors"


def save_single_file_transformer(transformer, path: str | Path) -> Path:
    """Write a transformer's weights as one .safetensors file (diffusers key layout)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in transformer.state_dict().items()}, str(path))
    return Path(path)


def lookalike_home() -> Path:
    """$LOOKALIKE_HOME, else ~/.cache/lookalike."""
    import os

    return Path(os.environ.get("LOOKALIKE_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lookalike"))


def twin_home(family: str = "flux1") -> Path:
    """Where a family's twin is kept (FLUX.1's keeps the folder name it always had)."""
    name = "tiny-twin" if family == "flux1" else f"tiny-{family}"
    return lookalike_home() / f"{name}-v{TWIN_VERSION}-seed{TWIN_SEED}"


def ensure_twin(family: str = "flux1") -> Path:
    """The cached twin folder of `family`, built on first use (~1 s)."""
    folder = twin_home(family)
    if not (folder / "model_index.json").exists():
        import logging

        logging.getLogger(__name__).info("building the tiny %s twin in %s (first use)", family, folder)
        save_twin(folder, family=family)
    return folder
