"""Device/dtype decisions and the run directory."""

import json

import numpy as np
import pytest
import torch

from lookalike.errors import ConfigError
from lookalike.rundir import RunDir
from lookalike.runtime import decide_runtime


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU choice")
def test_auto_on_cpu_is_fp32_with_a_reason(caplog):
    caplog.set_level("INFO")
    rt = decide_runtime("auto", "auto")
    assert rt.device.type == "cpu" and rt.dtype == torch.float32
    assert "no GPU found" in rt.reason and "fp32" in rt.reason
    assert "runtime: device cpu, dtype float32" in caplog.text


def test_explicit_dtype_is_honoured():
    assert decide_runtime("cpu", "bf16").dtype == torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_names_the_setting_and_the_fix():
    with pytest.raises(ConfigError, match="runtime.device = 'cuda'.*use --device cpu"):
        decide_runtime("cuda")


def test_unknown_device_is_refused():
    with pytest.raises(ConfigError, match="expected auto, cpu, cuda, cuda:N or mps"):
        decide_runtime("gpu0")


def test_run_dir_creates_nothing_until_asked(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.config_path == tmp_path / "run" / "config.yaml"
    assert not (tmp_path / "run").exists()


def test_stage_folders_never_collide_and_manifests_round_trip(tmp_path):
    run = RunDir(tmp_path / "run")
    a, b = run.new_stage_folder("generate"), run.new_stage_folder("generate")
    assert a != b and a.parent == b.parent == tmp_path / "run" / "generate"
    run.write_manifest(a, "generate", images=["x.png"])
    record = RunDir.read_manifest(a)
    assert record["stage"] == "generate" and record["images"] == ["x.png"] and "finished" in record
    assert json.loads((a / "manifest.json").read_text()) == record
    assert RunDir.read_manifest(b) is None


@pytest.mark.gpu
def test_twin_generates_on_cuda_in_bf16(twin_dir, tmp_path):
    from PIL import Image

    from lookalike.config import load_config
    from lookalike.generate import generate_to_folder

    cfg = load_config(preset="tiny", overrides=[f"model.source={twin_dir}", "runtime.device=auto"])
    (path,) = generate_to_folder(cfg, ["Arthur"], tmp_path)
    assert decide_runtime().dtype == torch.bfloat16
    assert np.asarray(Image.open(path)).std() > 0
