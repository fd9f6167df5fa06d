"""What a training run will cost before it starts: GPU memory and time, as a labelled *estimate*.

No GPU run has measured lookalike yet (BENCHMARKS.md), so these numbers come from a FLOP and memory
model of FLUX.1-dev (../shared/notes/anchors-performance.md, sections 3.2-3.6), anchored on published
measurements:
- model FLOPs per image: forward 2·6.455e9·T (the linears a token passes through) + 4·T²·3072·57
  (joint attention), backward with a frozen base 1.2x the forward (2.2x in all); T = image tokens
  (H/16·W/16) + text tokens;
- speed: 37% of the GPU's dense bf16 peak on model FLOPs (the best published FLUX LoRA number, SimpleTuner's
  Chroma sweep on an H100, no checkpointing), +30% time with per-block gradient checkpointing (SimpleTuner's
  measured overhead on an H100);
- memory: the base's weights by memory mode (README: 23.8 / 12.0 / 6.8 GB for FLUX.1-dev), fp32 LoRA with
  grads and AdamW (16 bytes per parameter), checkpointed block inputs (T·3072·2 bytes per block per image),
  ~0.6 GB working set per image, ~3 GB of CUDA context and workspaces; without checkpointing ~9 GB of
  activations per 1024² image (SimpleTuner: 26.2 -> 17.7 GiB at batch 1 when it was turned on).
Models other than FLUX.1-dev-sized ones get no GPU estimate; on a CPU only the toy model has a measured speed.
"""

from __future__ import annotations

from dataclasses import dataclass

# Dense bf16 tensor-core peaks, TFLOP/s (vendor data sheets, without sparsity).
GPU_PEAK_TFLOPS = {"H200": 989, "H100": 989, "GH200": 989, "B200": 2250, "A100": 312, "L40S": 362, "L40": 181,
                   "A6000": 155, "RTX 6000 Ada": 364, "4090": 165, "3090": 71, "A10": 125, "L4": 121}
MFU = 0.37
CHECKPOINT_SLOWDOWN = 1.30

# FLUX.1-dev's transformer (diffusers transformer_flux.py): width 3072, 19 + 38 blocks, 11.9B parameters.
FLUX1_BLOCKS, FLUX1_WIDTH, FLUX1_TOKEN_PARAMS = 57, 3072, 6.455e9
WEIGHTS_GB = {"balanced": 23.8, "low": 12.0, "lowest": 6.8}  # bf16 / int8 / NF4 (README, measured sizes)
SEED_LORA_PARAMS_PER_RANK = 37.36e6 / 32  # 190 modules x (3072 + 3072) per rank (the write-up's targets)

# The toy model on the 2-core CI machine: 800 steps of batch 8 in 224 s with the toy preset (BENCHMARKS.md).
TOY_CPU_SECONDS_PER_STEP = 0.28
# ... and drawing with it: 40 grounding images of 20 steps at 64², batch 8, in 15 s (`lookalike ground`, 2026-12-03).
TOY_CPU_SECONDS_PER_IMAGE_STEP = 0.019


@dataclass
class Estimate:
    steps: int
    seconds: float | None  # None: unknown for this model and device
    memory_gb: float | None  # GPU memory; None on a CPU or for an unknown model
    basis: str  # where the numbers come from, said to the user

    def line(self) -> str:
        parts = [f"{self.steps} training steps"]
        if self.memory_gb is not None:
            parts.append(f"~{self.memory_gb:.0f} GB of GPU memory")
        if self.seconds is not None:
            parts.append(f"~{_duration(self.seconds)}")
        return ", ".join(parts) + f" ({self.basis})"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def tokens(width: int, height: int, text_tokens: int) -> int:
    """Sequence length of one FLUX.1 sample: 2x2-packed latent patches of 8x-downsampled pixels, plus text."""
    return (width // 16) * (height // 16) + text_tokens


def flux1_forward_tflop(t: int) -> float:
    """Model FLOPs of one forward pass of one sample (one denoising step of one image), TFLOP, for T tokens."""
    return (2 * FLUX1_TOKEN_PARAMS * t + 4 * t * t * FLUX1_WIDTH * FLUX1_BLOCKS) / 1e12


def flux1_model_tflop(t: int) -> float:
    """Model FLOPs of one training sample (forward + frozen-base backward), TFLOP, for T tokens."""
    return 2.2 * flux1_forward_tflop(t)


def flux1_memory_gb(t: int, batch: int, rank: int, memory: str, checkpointing: bool) -> float:
    """Peak GPU memory of one FLUX.1-dev LoRA step, GB (see the module docstring)."""
    lora = rank * SEED_LORA_PARAMS_PER_RANK * 16 / 1e9
    if checkpointing:
        activations = batch * (t * FLUX1_WIDTH * 2 * FLUX1_BLOCKS / 1e9 + 0.6)
    else:
        activations = batch * 9.0 * t / 4608
    return WEIGHTS_GB[memory] + lora + activations + 3.0


def gpu_peak(name: str | None) -> float | None:
    """The dense bf16 peak of a GPU named like torch names it ('NVIDIA H100 80GB HBM3'), or None."""
    if not name:
        return None
    for key, peak in sorted(GPU_PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0])):
        if key.lower() in name.lower():
            return float(peak)
    return None


def is_flux1_size(source: str) -> bool:
    return "flux.1" in source.lower() or source.lower().endswith(("flux1-dev.safetensors", "flux1-schnell.safetensors"))


def training_estimate(cfg, steps: int, device: str, gpu_name: str | None) -> Estimate:
    """The estimate for `steps` optimiser steps of `cfg`'s recipe on `device` ('cuda', 'cpu', ...)."""
    t = cfg.train
    source = cfg.model.source
    if source == "lookalike:toy" and device == "cpu":
        scale = t.batch_size * t.gradient_accumulation / 8
        return Estimate(steps, steps * TOY_CPU_SECONDS_PER_STEP * scale, None,
                        "estimate: the toy model's measured speed on 2 CPU cores")
    from lookalike.models.family import twin_family

    if twin_family(source) is not None:
        return Estimate(steps, None, None, "the tiny twin: seconds")
    if not is_flux1_size(source):
        return Estimate(steps, None, None, "no estimate for this model yet (the FLOP model is FLUX.1-dev's)")
    side = cfg.dataset.resolution
    n = tokens(side, side, cfg.dataset.max_sequence_length)
    memory = flux1_memory_gb(n, t.batch_size, cfg.lora.rank, t.memory, t.gradient_checkpointing)
    if device != "cuda":
        return Estimate(steps, None, round(memory, 1), "estimate for a GPU; this machine has none")
    peak = gpu_peak(gpu_name)
    basis = f"estimate for {gpu_name}" if peak else f"estimate as if on an H100 ({gpu_name or 'GPU'} not in the table)"
    per_image = flux1_model_tflop(n) / ((peak or 989.0) * MFU)
    seconds = steps * t.batch_size * t.gradient_accumulation * per_image
    if t.gradient_checkpointing:
        seconds *= CHECKPOINT_SLOWDOWN
    return Estimate(steps, seconds, round(memory, 1), basis + ", from a FLOP model until GPU benchmarks exist")


def drawing_estimate(cfg, images: int, device: str, gpu_name: str | None) -> str:
    """What drawing `images` images at the training resolution with the generate settings costs (the ground
    stage), as one line: '40 images of 28 steps, ~3 min (estimate ...)'."""
    from lookalike.models.family import twin_family

    steps = cfg.generate.steps
    head = f"{images} images of {steps} steps"
    if cfg.model.source == "lookalike:toy" and device == "cpu":
        seconds = images * steps * TOY_CPU_SECONDS_PER_IMAGE_STEP
        return f"{head}, ~{_duration(seconds)} (estimate: the toy model's measured speed on 2 CPU cores)"
    if twin_family(cfg.model.source) is not None:
        return f"{head} (the tiny twin: seconds)"
    if not is_flux1_size(cfg.model.source) or device != "cuda":
        return f"{head} (no time estimate for this model and device yet)"
    side = cfg.dataset.resolution
    per_step = flux1_forward_tflop(tokens(side, side, cfg.generate.max_sequence_length)) / ((gpu_peak(gpu_name) or 989.0) * MFU)
    return f"{head}, ~{_duration(images * steps * per_step)} (estimate from the FLOP model)"
