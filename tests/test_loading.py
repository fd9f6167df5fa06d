"""Model loading: folder, single file, hub cache, and every bad source."""

import json
import shutil

import numpy as np
import pytest
import torch

from helpers import draw
from lookalike.errors import ModelLoadError
from lookalike.models.source import load_pipeline, load_transformer, resolve_source
from lookalike.models.twin import SINGLE_FILE_NAME, build_twin


def test_twin_folder_has_flux_layout(twin_dir):
    index = json.loads((twin_dir / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    for part in ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"):
        assert (twin_dir / part).is_dir(), part
    transformer_cfg = json.loads((twin_dir / "transformer" / "config.json").read_text())
    assert transformer_cfg["guidance_embeds"] is True
    assert json.loads((twin_dir / "vae" / "config.json").read_text())["latent_channels"] == 16


def test_same_seed_same_image_different_seed_different(twin_pipe):
    a, b, c = draw(twin_pipe, seed=0), draw(twin_pipe, seed=0), draw(twin_pipe, seed=1)
    assert np.array_equal(a, b)
    assert np.abs(a - c).mean() > 1.0


def test_twin_build_is_deterministic(twin_pipe):
    rebuilt = build_twin()
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        mine, theirs = getattr(twin_pipe, name).state_dict(), getattr(rebuilt, name).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), name


def test_single_file_transformer_loads_same_weights(twin_dir):
    source = resolve_source(str(twin_dir / SINGLE_FILE_NAME), components=str(twin_dir))
    assert source.kind == "single_file"
    from_file = load_transformer(source, torch.float32).state_dict()
    from_folder = load_transformer(resolve_source(str(twin_dir)), torch.float32).state_dict()
    assert from_file.keys() == from_folder.keys()
    assert all(torch.equal(from_file[k], from_folder[k]) for k in from_folder)


def test_single_file_pipeline_draws_same_image(twin_dir, twin_pipe):
    source = resolve_source(str(twin_dir / SINGLE_FILE_NAME), components=str(twin_dir))
    pipe = load_pipeline(source, torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert np.array_equal(draw(pipe), draw(twin_pipe))


def _fake_hub_snapshot(twin_dir, repo="black-forest-labs/FLUX.1-dev"):
    """Lay the twin out in the (test-private) hub cache as if it had been downloaded."""
    from huggingface_hub import constants

    commit = "0" * 40
    root = constants.HF_HUB_CACHE + "/models--" + repo.replace("/", "--")
    shutil.copytree(twin_dir, f"{root}/snapshots/{commit}", dirs_exist_ok=True)
    (twin_dir.parent / "unused").mkdir(exist_ok=True)
    import pathlib

    refs = pathlib.Path(root) / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / "main").write_text(commit)
    return pathlib.Path(root)


def test_hub_id_loads_from_hub_cache_offline(twin_dir, twin_pipe):
    root = _fake_hub_snapshot(twin_dir)
    try:
        source = resolve_source("black-forest-labs/FLUX.1-dev")
        assert source.kind == "hub"
        pipe = load_pipeline(source, torch.float32)
        pipe.set_progress_bar_config(disable=True)
        assert np.array_equal(draw(pipe), draw(twin_pipe))
    finally:
        shutil.rmtree(root)


def test_hub_id_offline_not_cached_says_how_to_fix():
    with pytest.raises(ModelLoadError) as e:
        load_pipeline(resolve_source("black-forest-labs/FLUX.1-dev"), torch.float32)
    msg = str(e.value)
    assert "black-forest-labs/FLUX.1-dev" in msg and "HF_HUB_OFFLINE" in msg
    assert "licence" in msg and "HF_TOKEN" in msg and "local" in msg


def test_missing_path_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist") as e:
        resolve_source(str(tmp_path / "no-such-model"))
    assert "no-such-model" in str(e.value)


def test_folder_that_is_not_a_pipeline(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="no model_index.json") as e:
        load_pipeline(resolve_source(str(tmp_path)), torch.float32)
    assert "single file" in str(e.value)


def test_folder_with_another_pipeline_class(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(ModelLoadError, match="holds a StableDiffusionXLPipeline, which lookalike does not train.*known families: FLUX.1"):
        load_pipeline(resolve_source(str(tmp_path)), torch.float32)


def test_single_file_that_is_not_flux(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "sdxl.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ModelLoadError, match="no transformer weights of a known family"):
        load_transformer(resolve_source(str(path), components="unused/repo"), torch.float32)


def test_non_safetensors_file(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"pickle")
    with pytest.raises(ModelLoadError, match="not a .safetensors checkpoint"):
        resolve_source(str(path))
