"""Device and dtype, decided once at start, with the reason stated."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from lookalike.config.schema import DEVICE_PATTERN
from lookalike.errors import ConfigError

log = logging.getLogger(__name__)

DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass(frozen=True)
class Runtime:
    """Where tensors live and in which precision the frozen model runs."""

    device: "torch.device"  # noqa: F821 (torch is imported lazily)
    dtype: "torch.dtype"  # noqa: F821
    reason: str

    def describe(self) -> str:
        return f"device {self.device}, dtype {str(self.dtype).removeprefix('torch.')} ({self.reason})"


def _pick_device(requested: str):
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda"), f"CUDA GPU found: {torch.cuda.get_device_name(0)}"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps"), "Apple GPU (MPS) found"
        return torch.device("cpu"), "no GPU found"
    if not re.fullmatch(DEVICE_PATTERN, requested):
        raise ConfigError(f"runtime.device = {requested!r}: expected auto, cpu, cuda, cuda:N or mps")
    if requested.startswith("cuda"):
        index = int(requested.split(":")[1]) if ":" in requested else 0
        if not torch.cuda.is_available():
            raise ConfigError(
                f"runtime.device = {requested!r}, but torch sees no CUDA GPU "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                "use --device cpu, or install a CUDA build of torch"
            )
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"runtime.device = {requested!r}, but only {torch.cuda.device_count()} CUDA device(s) are visible; "
                "use cuda:0 or check CUDA_VISIBLE_DEVICES"
            )
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("runtime.device = 'mps', but MPS is not available here; use --device cpu")
    return torch.device(requested), "chosen by runtime.device"


def _pick_dtype(device, requested: str):
    import torch

    if requested != "auto":
        return getattr(torch, DTYPE_NAMES[requested]), "chosen by runtime.dtype"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "bf16: the GPU supports it and FLUX was trained in it"
        return torch.float16, "fp16: this GPU has no bf16"
    if device.type == "mps":
        return torch.bfloat16, "bf16 on MPS halves memory"
    return torch.float32, "fp32 on CPU: bf16 matmuls are slower than fp32 on most CPUs"


def decide_runtime(device: str = "auto", dtype: str = "auto") -> Runtime:
    """Resolve `runtime.device` / `runtime.dtype` settings into one Runtime and log why."""
    dev, dev_reason = _pick_device(device)
    dt, dt_reason = _pick_dtype(dev, dtype)
    runtime = Runtime(dev, dt, f"{dev_reason}; {dt_reason}")
    log.info("runtime: %s", runtime.describe())
    return runtime


def training_runtime(cfg) -> Runtime:
    """Runtime for caching and training (the same, so cached tensors match the model): `runtime.dtype`
    if set, else `train.precision` on a GPU, fp32 on a CPU."""
    import torch

    device, dtype, precision = cfg.runtime.device, cfg.runtime.dtype, cfg.train.precision

    dev, dev_reason = _pick_device(device)
    if dtype != "auto":
        dt, dt_reason = _pick_dtype(dev, dtype)
    elif dev.type == "cpu":
        dt, dt_reason = torch.float32, f"fp32 on CPU (train.precision = {precision} applies on a GPU)"
    else:
        dt, dt_reason = getattr(torch, DTYPE_NAMES[precision]), "chosen by train.precision"
    runtime = Runtime(dev, dt, f"{dev_reason}; {dt_reason}")
    log.info("runtime: %s", runtime.describe())
    return runtime
