"""Memory modes: how the frozen base transformer is stored, and what that costs.

    balanced  bf16 base weights (23.8 GB for FLUX.1-dev's 11.9B parameters)
    low       8-bit weight-only base: int8 with one scale per output row (~12 GB)
    lowest    4-bit NF4 weight-only base: 64-weight blocks, one scale each (~6.7 GB)

Only the Linear layers inside the transformer blocks are quantised (the model family names its block
lists; FLUX.1-dev's 19 double and 38 single blocks hold 11.8B of its 11.9B parameters); the embedders
and the output layer stay in the base dtype. The weights are de-quantised
to the activations' dtype one layer at a time, inside the matmul, and the backward pass de-quantises
again rather than keeping the full-precision copy: the saving holds with and without checkpointing.

The LoRA is never quantised: peft wraps the quantised layer and adds its own fp32 A and B outside
the quantised matmul, so small updates are not rounded away (ai-toolkit#309: LoRA weights rounded
away on a quantised base; replicate/cog-flux#24: LoRAs needing strength 1.7 on an fp8 base).
Quantise *before* `add_lora` (a layer already wrapped by peft is quantised through its `base_layer`).

Pure torch, no kernel library: it runs wherever torch does, the CPU tests included, and
`torch.compile` can fuse the de-quantisation into the surrounding graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

log = logging.getLogger(__name__)

MemoryMode = Literal["balanced", "low", "lowest"]
MEMORY_MODES: dict[str, str] = {
    "balanced": "bf16 base weights (fastest; the most memory)",
    "low": "int8 weight-only base, one scale per output row (about half the weight memory)",
    "lowest": "NF4 4-bit weight-only base, one scale per 64 weights (about a quarter)",
}
NF4_BLOCK = 64


# ---------------------------------------------------------------- the number formats (pure functions)


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: w [O, I] -> (q int8 [O, I], scale fp32 [O, 1]) with w ≈ q·scale."""
    scale = w.detach().float().abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
    q = torch.round(w.detach().float() / scale).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(q int8 [O, I], scale [O, 1]) -> w [O, I] in `dtype`."""
    return (q.float() * scale.float()).to(dtype)


def nf4_codebook() -> torch.Tensor:
    """The 16 NormalFloat4 levels of QLoRA (Dettmers et al. 2023), sorted, in [-1, 1], 0 exact.

    Quantiles of N(0, 1): 8 for the positive half and 7 for the negative half (so that 0 is a level),
    taken between probability 1 - δ and 1/2 with δ = (1/32 + 1/30) / 2, then scaled to max |level| = 1.
    """
    delta = 0.5 * (1 / 32 + 1 / 30)
    q = lambda n: torch.special.ndtri(torch.linspace(1 - delta, 0.5, n, dtype=torch.float64)[:-1])  # noqa: E731
    pos, neg = q(9), -q(8)
    levels = torch.cat([pos / pos.max(), torch.zeros(1, dtype=torch.float64), neg / neg.abs().max()])
    return levels.sort().values.float()


def quantize_nf4(w: torch.Tensor, block: int = NF4_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise NF4: w (numel divisible by 2·block) -> (packed uint8 [numel/2], absmax scale fp32 [numel/block]).

    Each block of `block` consecutive weights is divided by its absolute maximum and each value is
    rounded to the nearest of the 16 levels; two 4-bit level indices share one byte.
    """
    flat = w.detach().float().reshape(-1, block)
    scale = flat.abs().amax(dim=1).clamp_min(1e-12)
    levels = nf4_codebook().to(w.device)
    midpoints = (levels[1:] + levels[:-1]) / 2
    idx = torch.bucketize((flat / scale[:, None]).reshape(-1), midpoints).to(torch.uint8)  # nearest level
    return (idx[0::2] << 4) | idx[1::2], scale


def dequantize_nf4(packed: torch.Tensor, scale: torch.Tensor, shape: torch.Size, dtype: torch.dtype,
                   block: int = NF4_BLOCK, levels: torch.Tensor | None = None) -> torch.Tensor:
    """(packed uint8 [numel/2], scale [numel/block]) -> w of `shape` in `dtype`. `levels`: the
    codebook already on the device (layers keep it as a buffer), else computed here."""
    levels = nf4_codebook().to(packed.device) if levels is None else levels
    idx = torch.stack([packed >> 4, packed & 15], dim=-1).reshape(-1).int()
    w = levels.float()[idx].reshape(-1, block) * scale[:, None].float()
    return w.reshape(shape).to(dtype)


# ---------------------------------------------------------------- the layer


def _dequantize(q: torch.Tensor, scale: torch.Tensor, levels: torch.Tensor | None, shape: torch.Size,
                dtype: torch.dtype) -> torch.Tensor:
    """int8 codes when `levels` is None, packed NF4 codes otherwise -> W of `shape` in `dtype`."""
    if levels is None:
        return dequantize_int8(q, scale, dtype)
    return dequantize_nf4(q, scale, shape, dtype, levels=levels)


class _QuantizedMatmul(torch.autograd.Function):
    """y = x·Wᵀ + b with W de-quantised on the fly; saves the quantised W, not the de-quantised one.

    The base is frozen: only x gets a gradient (dx = dy·W, W de-quantised again).
    """

    @staticmethod
    def forward(ctx, x, q, scale, levels, bias, shape):
        ctx.save_for_backward(q, scale, levels)
        ctx.shape, ctx.x_dtype = shape, x.dtype
        # under autocast (Lightning's bf16-mixed) the matmul runs in the autocast dtype whatever x's dtype:
        # de-quantise straight to it rather than to fp32 and then again to bf16
        kind = x.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
        return nn.functional.linear(x, _dequantize(q, scale, levels, shape, dtype), bias)

    @staticmethod
    def backward(ctx, dy):
        q, scale, levels = ctx.saved_tensors
        dx = dy @ _dequantize(q, scale, levels, ctx.shape, dy.dtype)
        return dx.to(ctx.x_dtype), None, None, None, None, None


class QuantizedLinear(nn.Linear):
    """A frozen Linear whose weight is stored as int8 (`low`) or NF4 (`lowest`).

    Subclasses nn.Linear so that peft wraps it like any Linear (its LoRA stays fp32, outside).
    `weight` holds the codes (int8 [O, I], or packed NF4 uint8 [O·I/2]); `weight_scale` the fp32
    scales; `levels` the 16 NF4 levels (None for int8). `compute_dtype`: the weight's dtype before.
    """

    def __init__(self, linear: nn.Linear, mode: str, device=None):
        super().__init__(linear.in_features, linear.out_features, bias=False, device="meta")
        device = torch.device(device) if device is not None else linear.weight.device
        w = linear.weight.detach().to(device)
        self.mode, self.compute_dtype = mode, w.dtype
        q, scale = quantize_int8(w) if mode == "low" else quantize_nf4(w)
        self.weight = nn.Parameter(q, requires_grad=False)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("levels", None if mode == "low" else nf4_codebook().to(device), persistent=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(device), requires_grad=False)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight [O, I] in `dtype`."""
        return _dequantize(self.weight, self.weight_scale, self.levels, self._shape(), dtype)

    def _shape(self) -> torch.Size:
        return torch.Size((self.out_features, self.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return _QuantizedMatmul.apply(x, self.weight, self.weight_scale, self.levels, bias, self._shape())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode}"


# ---------------------------------------------------------------- applying a mode to the transformer


@dataclass(frozen=True)
class MemoryReport:
    """What `apply_memory_mode` did: layers quantised, layers left as they were, base weight bytes after."""

    mode: str
    quantized: int
    skipped: list[str]
    weight_bytes: int


def block_linears(transformer: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, Linear) for every Linear inside the transformer blocks its family names, LoRA
    parts excluded. A block list the family names but the model lacks is an error, never a silent no-op.

    A peft-wrapped layer is reached through its `base_layer`.
    """
    from lookalike.models.family import family_of_module

    family = family_of_module(transformer)
    found = []
    for list_name in family.block_lists:
        if not hasattr(transformer, list_name):
            raise ValueError(f"{family.title}'s block list {list_name!r} is not in this {type(transformer).__name__}")
        for block in getattr(transformer, list_name):
            for name, module in block.named_modules():
                if type(module) is nn.Linear and ".lora_" not in f".{name}":
                    parent_name, _, attr = name.rpartition(".")
                    found.append((block.get_submodule(parent_name) if parent_name else block, attr, module))
    return found


def _fits(linear: nn.Linear, mode: str) -> bool:
    return mode == "low" or linear.weight.numel() % (2 * NF4_BLOCK) == 0


def apply_memory_mode(transformer: nn.Module, mode: str, device=None) -> MemoryReport:
    """Quantise the transformer blocks' Linears in place for `mode` (balanced: leave them).

    `device`: where the quantised weights go. Each layer is moved there and quantised on its own,
    so a base loaded on the CPU never needs its full-precision size in GPU memory.
    """
    if mode not in MEMORY_MODES:
        from lookalike.errors import ConfigError

        raise ConfigError(f"train.memory = {mode!r}: expected one of {', '.join(MEMORY_MODES)}")
    quantized, skipped = 0, []
    if mode != "balanced":
        for parent, attr, linear in block_linears(transformer):
            if not _fits(linear, mode):
                skipped.append(attr)
                continue
            setattr(parent, attr, QuantizedLinear(linear, mode, device))
            quantized += 1
    report = MemoryReport(mode, quantized, skipped, weight_bytes(transformer))
    log.info("memory mode %s (%s): %d block Linears quantised, base weights %.2f GB",
             mode, MEMORY_MODES[mode], quantized, report.weight_bytes / 1e9)
    return report


def quantize_device(device: torch.device) -> torch.device:
    """Where this process quantises: its own GPU under DDP (LOCAL_RANK), else `device`."""
    import os

    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers (quantised codes and scales included)."""
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())
