"""Speed and memory of one LoRA training step at full size, for every model family, with random weights;
and the framework's overhead: lookalike's Lightning step against a bare loop on the same tensors.

The training-step sweep. For each model in `--family` (default: all of flux1-dev, flux2-klein-4b,
flux2-klein-9b, flux2-dev, z-image, qwen-image) it builds the published transformer config (below, with sources) on the meta
device, allocates it on the GPU and initialises it there (no copy through host memory), adds the rank-32
LoRA on its family's `seed` target set with `add_lora`, and times the project's own step
(`training_loss`, backward, gradient clipping, AdamW) on random cached inputs of the real shapes: 1024²
photos -> 4096 image tokens (FLUX.1, Qwen-Image: 16-channel latents at 1/8 size, packed 2x2; FLUX.2:
128-channel patchified latents at 1/16 size; Z-Image: 16 channels at 1/8, patchified 2x2 by the model), 512
text tokens of the family's text width (FLUX.1 also CLIP pooled 768; Z-Image and Qwen-Image a mask).
For every case (memory mode x batch x checkpointing x torch.compile) it reports the median seconds per
step after warm-up (CUDA events), the peak GPU memory, and the model-FLOP utilisation against a bf16
matrix-product peak measured in the same run. A case that runs out of memory is reported as OOM and the
sweep goes on; cases that would not finish inside the model's share of `--budget-s` (what is left, split
evenly over the models still to run) are reported as skipped.

The framework overhead (`--overhead` alone, part of the default run): lookalike's training step as
`lookalike train` runs it -- `LoraModule` driven by a `lightning.Trainer` with the project's `BatchStream`
data stream, its TensorBoard and CSV loggers, its precision, clipping and per-step callbacks, built as
`lookalike.train.run.train_stage` builds them -- against a bare loop of the same transformer (same LoRA,
same start weights): `training_loss`, backward, the same clipping, AdamW, on the same batches with the same
σ and ε. Both are timed by wall clock over the same step numbers after warm-up; the ratio is the
framework's overhead (aim: <= 1.1). The losses of the two runs are compared too: equal losses show that
both did the same work. With `--tiny` it runs the toy model (`lookalike:toy`, preset `toy`); otherwise the
first model of `--family` at full size (`--overhead-model` chooses).

The cache stage's throughput (VAE encoding 1024² photos, T5-XXL encoding 512-token captions, with random
weights of the real shapes) is measured for FLUX.1's parts only: FLUX.2's VAE and its Qwen3 / Mistral
text encoders are not timed here.

    python bench/gpu_train_step.py --out DIR              # everything, on a GPU (~8 minutes)
    python bench/gpu_train_step.py --family flux2-klein-4b --out DIR
    python bench/gpu_train_step.py --tiny --out DIR       # the same code on the twins' shapes and the toy (CPU)
    python bench/gpu_train_step.py --tiny --overhead --threads 1   # the overhead ratio alone (busy CPU: 1 thread)

Writes DIR/gpu_train_step.md (Markdown tables for BENCHMARKS.md) and DIR/gpu_train_step.jsonl, both
rewritten after every case so that a run cut short still leaves its rows.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

# ---------------------------------------------------------------- the models and the two sizes

# black-forest-labs/FLUX.1-dev transformer/config.json, vae/config.json, text_encoder_2/config.json
FLUX1_DEV = dict(patch_size=1, in_channels=64, out_channels=None, num_layers=19, num_single_layers=38,
                 attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                 pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
# FLUX.2: diffusers scripts/convert_flux2_to_diffusers.py, `get_flux2_transformer_config` ("flux2-dev",
# "klein-4b", "klein-9b"; the hub's transformer/config.json files are gated or not mirrored); the same numbers
# in musubi-tuner src/musubi_tuner/flux_2/flux2_models.py (Flux2Params, Klein4BParams, Klein9BParams) and
# SimpleTuner documentation/quickstart/FLUX2.md. Base and distilled klein checkpoints share their config.
# Built on the meta device with diffusers 0.42.1: 32.22 B (dev), 3.88 B (klein 4B), 9.08 B (klein 9B).
FLUX2_COMMON = dict(patch_size=1, in_channels=128, out_channels=None, attention_head_dim=128,
                    timestep_guidance_channels=256, mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32),
                    rope_theta=2000, eps=1e-6)
FLUX2_DEV = dict(FLUX2_COMMON, num_layers=8, num_single_layers=48, num_attention_heads=48,
                 joint_attention_dim=15360, guidance_embeds=True)  # text: Mistral Small 3.x, 3 layers x 5120
FLUX2_KLEIN_4B = dict(FLUX2_COMMON, num_layers=5, num_single_layers=20, num_attention_heads=24,
                      joint_attention_dim=7680, guidance_embeds=False)  # text: Qwen3-4B, 3 layers x 2560
FLUX2_KLEIN_9B = dict(FLUX2_COMMON, num_layers=8, num_single_layers=24, num_attention_heads=32,
                      joint_attention_dim=12288, guidance_embeds=False)  # text: Qwen3-8B, 3 layers x 4096

# Tongyi-MAI/Z-Image transformer/config.json (base and Turbo are the same; axes_lens 1536 as published, the
# diffusers class default is 1024; musubi-tuner zimage_config.py agrees). Text: Qwen3-4B, hidden layer -2.
Z_IMAGE = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30,
               n_refiner_layers=2, n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True, cap_feat_dim=2560,
               rope_theta=256.0, t_scale=1000.0, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512])
# Qwen/Qwen-Image transformer/config.json (the 2512 release loads with the same class). Text: Qwen2.5-VL-7B.
QWEN_IMAGE = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                  num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56))


@dataclass(frozen=True)
class Model:
    """One benchmarked model: `name` is the --family value and the preset of the same name; `family` the
    lookalike model family (lookalike.models.family) whose hooks, target sets and twin it uses."""

    name: str
    family: str
    title: str
    config: dict  # the published transformer config


MODELS = {m.name: m for m in (
    Model("flux1-dev", "flux1", "FLUX.1 [dev]", FLUX1_DEV),
    Model("flux2-klein-4b", "flux2-klein", "FLUX.2 [klein] 4B", FLUX2_KLEIN_4B),
    Model("flux2-klein-9b", "flux2-klein", "FLUX.2 [klein] 9B", FLUX2_KLEIN_9B),
    Model("flux2-dev", "flux2-dev", "FLUX.2 [dev]", FLUX2_DEV),
    Model("z-image", "z-image", "Z-Image", Z_IMAGE),
    Model("qwen-image", "qwen-image", "Qwen-Image", QWEN_IMAGE),
)}

# Cached latents per family: (transformer in_channels per latent channel, VAE downsampling). FLUX.1: 16
# channels at 1/8 size, packed 2x2 into 64-channel tokens; FLUX.2: 32 VAE channels at 1/8, patchified 2x2
# in the cache to 128 channels at 1/16 size, one token per latent pixel. Z-Image: FLUX.1's VAE, the transformer
# patchifies 2x2 itself; Qwen-Image: 16 channels at 1/8, packed 2x2 like FLUX.1.
LATENT_LAYOUT = {"flux1": (4, 8), "flux2-klein": (1, 16), "flux2-dev": (1, 16), "z-image": (1, 8),
                 "qwen-image": (4, 8)}

FLUX_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2, norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False,
                shift_factor=0.1159, scaling_factor=0.3611)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, feed_forward_proj="gated-gelu")
# FLUX.1's cache-stage parts at the tiny twin's sizes (lookalike.models.flux1.build_twin)
TINY_VAE = dict(FLUX_VAE, block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4)
TINY_T5 = dict(T5_XXL, vocab_size=128, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
               relative_attention_num_buckets=8)


@functools.cache
def twin_config(family_name: str) -> dict:
    """The transformer config of the family's tiny twin (`Family.build_twin`), as constructor arguments."""
    from lookalike.models.family import family

    config = family(family_name).build_twin(0).transformer.config
    return {k: v for k, v in config.items() if not k.startswith("_")}


@dataclass(frozen=True)
class Size:
    """Full size or the twins': input shapes, and FLUX.1's cache-stage parts. side: image pixels;
    text_tokens: text sequence length; matmul_n: side of the square matrices timed for the peak rate."""

    name: str
    tiny: bool
    vae: dict
    t5: dict
    side: int
    text_tokens: int
    matmul_n: int

    def config(self, model: str) -> dict:
        """The transformer config of `model` at this size: the published one, or its family's twin's."""
        return twin_config(MODELS[model].family) if self.tiny else MODELS[model].config


FULL = Size("full", False, FLUX_VAE, T5_XXL, side=1024, text_tokens=512, matmul_n=8192)
TINY = Size("tiny (twins)", True, TINY_VAE, TINY_T5, side=128, text_tokens=16, matmul_n=256)


@dataclass(frozen=True)
class Case:
    model: str  # a MODELS name
    mode: str  # memory mode: balanced / low / lowest
    batch: int
    checkpointing: str  # off / half / every
    compile: bool


@dataclass
class Row:
    case: Case
    status: str = "ok"  # ok, OOM, skipped (...), error (...)
    s_per_step: float | None = None
    first_step_s: float | None = None  # includes compilation when compiled
    peak_gb: float | None = None
    reserved_gb: float | None = None
    tflops: float | None = None
    mfu: float | None = None
    loss: float | None = None
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------- timing and memory


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, object]:
    """Seconds `fn()` takes on `device` (CUDA events on a GPU, perf_counter elsewhere), and its result."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000, out
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def reset_peak(device: torch.device) -> None:
    """Free what the last case left and restart the peak counters (GPU only: nothing is measured on a CPU)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> tuple[float | None, float | None]:
    """(peak allocated, peak reserved) GB since the last reset; None off CUDA."""
    if device.type != "cuda":
        return None, None
    return torch.cuda.max_memory_allocated(device) / 1e9, torch.cuda.max_memory_reserved(device) / 1e9


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, reps: int = 10) -> float:
    """Measured dense matrix-product rate, TFLOP/s: mean of `reps` n x n x n products after 3 warm-ups."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    seconds, _ = timed(lambda: [a @ b for _ in range(reps)], device)
    return 2 * n**3 * reps / seconds / 1e12


# ---------------------------------------------------------------- models with random weights


def materialise(build, device: torch.device, dtype: torch.dtype, seed: int = 0, std: float = 0.02):
    """Build a model on the meta device, allocate it on `device` in `dtype`, fill it with random weights.

    Matrices and convolutions ~ N(0, std²), biases 0, norm scales 1. Nothing passes through host memory.
    A submodule that keeps tables in plain tensor attributes (Qwen-Image's RoPE, `QwenEmbedRope`) is built
    again off the meta device from its own constructor arguments (`_rebuilt`).
    """
    with torch.device("meta"):
        model = build()
    if any(True for _ in model.buffers()):
        raise RuntimeError(f"{type(model).__name__} has buffers, which to_empty would leave uninitialised")
    for name, module in list(model.named_modules()):
        if any(isinstance(v, torch.Tensor) and v.is_meta for v in vars(module).values()):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, _rebuilt(module, name))
    model = model.to(dtype=dtype).to_empty(device=device)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, std)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)
    return model.eval()


def _rebuilt(module, name: str):
    """`module` made again by its class from the attributes named like its constructor's parameters (on the
    default device, parameter-free modules only)."""
    import inspect

    params = [p for p in inspect.signature(type(module).__init__).parameters.values() if p.name != "self"]
    missing = [p.name for p in params if not hasattr(module, p.name) and p.default is inspect.Parameter.empty]
    if missing or any(True for _ in module.parameters()):
        raise RuntimeError(f"{name} ({type(module).__name__}) keeps plain tensors made on the meta device and cannot "
                           f"be rebuilt from its attributes (missing {missing}, or it has parameters)")
    return type(module)(**{p.name: getattr(module, p.name) for p in params if hasattr(module, p.name)})


def transformer_class(model: str):
    from lookalike.models.family import family

    return family(MODELS[model].family).load_class("transformer")


def build_transformer(model: str, size: Size, device, dtype, mode: str, rank: int):
    """`model`'s transformer at `size` with random weights in memory mode `mode`, with the LoRA (fp32) on its
    family's `seed` targets."""
    from lookalike.config.schema import LoraConfig
    from lookalike.models.quantize import apply_memory_mode
    from lookalike.train.lora import add_lora

    cls, config = transformer_class(model), size.config(model)
    transformer = materialise(lambda: cls(**config), device, dtype)
    apply_memory_mode(transformer, mode, device)
    add_lora(transformer, rank, LoraConfig().alpha, "seed", seed=0)
    transformer.to(device).train()
    return transformer


def random_batch(family_name: str, config: dict, side: int, text_tokens: int, batch: int, device, dtype,
                 seed: int = 0):
    """Cached inputs of the real shapes for a model of `family_name` with transformer `config`: latents
    [B, C, h, w] fp32 (as the loader gives them) in the family's layout, and the family's conditioning in
    the cache dtype -- FLUX.1 {"t5": [B, L, D], "pooled": [B, D_clip]}, FLUX.2 {"text": [B, L, D]}, Z-Image and
    Qwen-Image {"text": [B, L, D], "mask": [B, L]} (every token a caption token: the longest captions)."""
    from lookalike.train.step import Batch

    g = torch.Generator(device).manual_seed(seed)
    per_channel, down = LATENT_LAYOUT[family_name]
    h = side // down
    latents = torch.randn(batch, config["in_channels"] // per_channel, h, h, generator=g, device=device)
    width = config["cap_feat_dim"] if family_name == "z-image" else config["joint_attention_dim"]
    text = torch.randn(batch, text_tokens, width, generator=g, device=device).to(dtype)
    if family_name == "flux1":
        pooled = torch.randn(batch, config["pooled_projection_dim"], generator=g, device=device).to(dtype)
        return Batch(latents, {"t5": text, "pooled": pooled})
    if family_name in ("z-image", "qwen-image"):
        mask = torch.ones(batch, text_tokens, device=device, dtype=torch.bool if family_name == "z-image" else torch.long)
        return Batch(latents, {"text": text, "mask": mask})
    return Batch(latents, {"text": text})


def model_batch(model: str, size: Size, batch: int, device, dtype, seed: int = 0):
    """`random_batch` for a MODELS entry at `size`."""
    return random_batch(MODELS[model].family, size.config(model), size.side, size.text_tokens, batch, device,
                        dtype, seed)


# ---------------------------------------------------------------- the FLOP model


# double blocks' text-stream weights (FLUX: ff_context; Qwen-Image: txt_mlp)
TEXT_STREAM = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff_context", "txt_mlp")
MODULATION = (".norm", "_mod.", "adaLN_modulation")  # per-sample modulation: applied once per sample, not per token
# the tokens each kind of block runs over: image + text (joint), image or text alone
JOINT, IMAGE, TEXT = "joint", "image", "text"
BLOCK_TOKENS = {"single_transformer_blocks": JOINT, "layers": JOINT, "noise_refiner": IMAGE, "context_refiner": TEXT}


def _tokens_of(name: str, img: int, txt: int) -> int:
    """Tokens a block Linear is applied to; 0 for the per-sample modulation (adaLN) layers (FLUX.1's and
    Qwen-Image's per block, FLUX.2's shared ones outside the blocks) and everything else outside the blocks."""
    if any(m in f".{name}" for m in MODULATION):
        return 0
    block_list = name.split(".")[0]
    if block_list == "transformer_blocks":  # double-stream: each stream its own weights
        return txt if any(k in name for k in TEXT_STREAM) else img
    return {JOINT: img + txt, IMAGE: img, TEXT: txt}.get(BLOCK_TOKENS.get(block_list), 0)


def model_flops(transformer, img_tokens: int, txt_tokens: int) -> float:
    """Model FLOPs of one training sample with a frozen base (shared/notes/anchors-performance.md §3):
    frozen linears 2x their forward (no weight gradient), attention 3x, LoRA 3x. Embedders, norms,
    RoPE, softmax and the per-sample modulation are left out. Counted from the module shapes and the block
    lists of the family (double blocks: image and text streams, joint attention; single blocks and Z-Image's
    layers: joint; Z-Image's refiners: the image or the caption alone)."""
    from lookalike.models.family import family_of_module

    frozen = lora = 0.0
    for name, m in transformer.named_modules():
        if isinstance(m, torch.nn.Linear):
            f = 2.0 * m.in_features * m.out_features * _tokens_of(name, img_tokens, txt_tokens)
            lora, frozen = (lora + f, frozen) if ".lora_" in name else (lora, frozen + f)
    width = getattr(transformer, "inner_dim", None) or transformer.config.dim
    sequence = {JOINT: img_tokens + txt_tokens, IMAGE: img_tokens, TEXT: txt_tokens}
    attention = 0.0
    for block_list in family_of_module(transformer).block_lists:  # QKᵀ and PV over each block's sequence
        n = sequence[BLOCK_TOKENS.get(block_list, JOINT)]
        attention += 4.0 * n * n * width * len(getattr(transformer, block_list))
    return 2 * frozen + 3 * attention + 3 * lora


# ---------------------------------------------------------------- one case


def blocks_of(transformer) -> list:
    """Every block the family lists (`Family.block_lists`: double, then single blocks)."""
    from lookalike.models.family import family_of_module

    return [b for name in family_of_module(transformer).block_lists for b in getattr(transformer, name)]


def set_checkpointing(transformer, policy: str) -> int:
    """off, every block, or every second block ("half": the selective middle way). Returns the count."""
    from torch.utils.checkpoint import checkpoint

    if policy == "off":
        transformer.disable_gradient_checkpointing()
        return 0
    chosen = {id(b) for i, b in enumerate(blocks_of(transformer)) if policy == "every" or i % 2 == 0}

    def maybe_checkpoint(block, *args):
        if id(block) in chosen:
            return checkpoint(block.__call__, *args, use_reentrant=False)
        return block(*args)

    transformer.enable_gradient_checkpointing(maybe_checkpoint)
    return len(chosen)


def set_compiled(transformer, on: bool, backend: str) -> None:
    """Regional compilation: each block compiled (one graph per block class, as diffusers'
    `compile_repeated_blocks` does), or back to eager."""
    if on:
        # one graph serves every block of a class, but batch sizes, checkpointing and modes each add entries
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for block in blocks_of(transformer):
        if on:
            block.compile(backend=backend)
        else:
            block._compiled_call_impl = None


class Trainer:
    """The project's training step on one transformer: training_loss, backward, clipping, AdamW."""

    def __init__(self, transformer, device, dtype, mode: str = "balanced"):
        from lookalike.config.schema import TrainConfig
        from lookalike.runtime import Runtime
        from lookalike.train.run import lightning_precision

        self.transformer, self.device, self.train, self.mode = transformer, device, TrainConfig(), mode
        self.weight_gb = weight_gb(transformer)
        self.params = [p for p in transformer.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.train.learning_rate,
                                           weight_decay=self.train.weight_decay)  # as LoraModule's
        # what Lightning's precision plugin does around the step (bf16-mixed on a GPU, 32-true on a CPU)
        self.mixed = lightning_precision(Runtime(device, dtype, "bench")) == "bf16-mixed"
        self.calls = 0

    def step(self, batch) -> torch.Tensor:
        from lookalike.train.step import training_loss

        self.calls += 1
        autocast = torch.autocast(self.device.type, torch.bfloat16) if self.mixed else contextlib.nullcontext()
        with autocast:
            loss, _ = training_loss(transformer=self.transformer, batch=batch, train=self.train,
                                    generator=torch.Generator().manual_seed(self.calls))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.train.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def run_case(trainer: Trainer, case: Case, size: Size, dtype, args, peak_tflops: float) -> Row:
    """Warm up, time `args.steps` steps, report; out of memory and other failures become the row's status."""
    device, transformer = trainer.device, trainer.transformer
    row = Row(case)
    set_checkpointing(transformer, case.checkpointing)
    set_compiled(transformer, case.compile, args.compile_backend)
    oom = False
    reset_peak(device)
    try:
        batch = model_batch(case.model, size, case.batch, device, dtype)
        times = [timed(lambda: trainer.step(batch), device)[0] for _ in range(args.warmup)]
        losses = []
        for _ in range(args.steps):
            seconds, loss = timed(lambda: trainer.step(batch), device)
            times.append(seconds)
            losses.append(float(loss))
        row.first_step_s, row.s_per_step = times[0], statistics.median(times[args.warmup:])
        row.loss = statistics.mean(losses)
        row.peak_gb, row.reserved_gb = peak_gb(device)
        flops = case.batch * model_flops(transformer, (size.side // 16) ** 2, size.text_tokens)
        row.tflops = flops / row.s_per_step / 1e12
        row.mfu = row.tflops / peak_tflops
    except torch.OutOfMemoryError:
        oom = True  # handled below, once the traceback no longer holds the step's tensors
    except Exception as e:  # a failing case (e.g. compile on this stack) is a result, not the end of the sweep
        row.status = f"error ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    if oom:
        row.status = "OOM"
        row.peak_gb, row.reserved_gb = peak_gb(device)
    trainer.optimizer.zero_grad(set_to_none=True)
    set_compiled(transformer, False, args.compile_backend)
    reset_peak(device)
    return row


# ---------------------------------------------------------------- the sweep


def plan(args, model: str) -> list[Case]:
    """One model's cases: eager bf16 cases first, then the memory modes, then compiled cases: most useful
    first, so a time budget cuts the least useful ones."""
    batches = args.batches
    cases = [Case(model, "balanced", b, c, False) for b in batches for c in ("every", "half", "off")]
    cases += [Case(model, m, b, "every", False) for m in ("low", "lowest") for b in (batches[0], batches[-1])]
    compiled = [(batches[-1], "every"), (batches[-1], "off"), (batches[0], "off"), (batches[-1], "half")]
    cases += [Case(model, "balanced", b, c, True) for b, c in compiled]
    cases += [Case(model, m, batches[-1], "every", True) for m in ("low", "lowest")]
    if args.no_compile:
        cases = [c for c in cases if not c.compile]
    return [c for c in dict.fromkeys(cases) if c.mode in args.modes]


def predicted_seconds(case: Case, rows: list[Row], args) -> float:
    """A cautious guess at a case's wall time from the same model's rows so far (for the time budget)."""
    done = [r for r in rows if r.s_per_step and r.case.model == case.model]
    if not done:
        return 0.0
    per_image = max(r.s_per_step / r.case.batch for r in done)
    same = [r.s_per_step for r in done if r.case.batch == case.batch and r.case.mode == case.mode]
    step = max(same) if same else per_image * case.batch * (2.0 if case.mode != "balanced" else 1.0)
    return 1.3 * step * (args.warmup + args.steps) + (args.compile_allowance_s if case.compile else 0.0)


def sweep_transformer(size: Size, device, dtype, args, peak_tflops: float, deadline: float, report) -> list[Row]:
    """Every model of `args.family` in turn, each given an even share of the time left (what one leaves
    passes to the next)."""
    rows: list[Row] = []
    for i, model in enumerate(args.family):
        share = (deadline - time.monotonic()) / (len(args.family) - i)
        rows = sweep_model(model, size, device, dtype, args, peak_tflops, time.monotonic() + share, rows, report)
    return rows


def sweep_model(model: str, size: Size, device, dtype, args, peak_tflops: float, deadline: float,
                rows: list[Row], report) -> list[Row]:
    rows = list(rows)
    trainer, mode = None, None
    for case in plan(args, model):
        left = deadline - time.monotonic()
        if predicted_seconds(case, rows, args) > left:
            rows.append(Row(case, status=f"skipped (time budget: {max(left, 0):.0f} s left)"))
            report(rows)
            continue
        if mode != case.mode:
            trainer = None  # free the previous model before building the next
            trainer, mode = _new_trainer(model, size, device, dtype, case.mode, args.rank), case.mode
        if isinstance(trainer, str):  # the model itself did not fit or build
            rows.append(Row(case, status=trainer))
            report(rows)
            continue
        row = run_case(trainer, case, size, dtype, args, peak_tflops)
        row.extra["weights_gb"] = trainer.weight_gb
        rows.append(row)
        report(rows)
        print(f"{case}: {row.status} {row.s_per_step} s/step, peak {row.peak_gb} GB", flush=True)
    trainer = None
    reset_peak(device)
    return rows


def _new_trainer(model: str, size: Size, device, dtype, mode: str, rank: int) -> "Trainer | str":
    """A Trainer on a freshly built model in `mode`, or the reason there is none ("OOM building the model")."""
    torch._dynamo.reset()  # drop compiled graphs that hold the previous model
    reset_peak(device)
    try:
        return Trainer(build_transformer(model, size, device, dtype, mode, rank), device, dtype, mode)
    except torch.OutOfMemoryError:
        failed = "OOM building the model"
    except Exception as e:  # reported in the table, like a failing case
        failed = f"error building the model ({type(e).__name__}: {str(e)[:120]})"
    reset_peak(device)
    return failed


def weight_gb(model) -> float:
    from lookalike.models.quantize import weight_bytes

    return weight_bytes(model) / 1e9


# ---------------------------------------------------------------- the framework's overhead


def overhead_config(model: str, size: Size, device, batch: int | None, total: int):
    """The run's settings as `lookalike train` reads them: the model's own preset (`toy`, `flux1-dev`, ...),
    with one epoch longer than `total` steps (no epoch end, so no validation pass, inside the run), a
    constant learning rate without warm-up (so a plain AdamW is the same optimiser), and the checkpoint
    only at the last step."""
    from lookalike.config.loading import load_config

    overrides = [f"runtime.device={device}", "train.gradient_accumulation=1", "train.epochs=1",
                 f"train.max_steps={total}", "train.warmup_steps=0", "train.schedule=constant",
                 f"train.checkpoint_every={total}"]
    if batch:
        overrides.append(f"train.batch_size={batch}")
    if model != "toy":  # the toy's own preset has its own sizes
        overrides += [f"dataset.resolution={size.side}", f"dataset.max_sequence_length={size.text_tokens}"]
    return load_config(preset=model, overrides=overrides)


def overhead_transformer(model: str, size: Size, cfg, runtime):
    """The transformer as `train_stage` prepares it: the toy's weights (or random ones at `size` for a
    MODELS entry), the memory mode, checkpointing as configured, the configured LoRA."""
    from lookalike.models.quantize import apply_memory_mode, quantize_device
    from lookalike.models.source import load_transformer, model_source
    from lookalike.train.lora import add_lora

    if model == "toy":
        transformer = load_transformer(model_source(cfg.model), runtime.dtype).to(runtime.device)
    else:
        cls, config = transformer_class(model), size.config(model)
        transformer = materialise(lambda: cls(**config), runtime.device, runtime.dtype)
    apply_memory_mode(transformer, cfg.train.memory, quantize_device(runtime.device))
    if cfg.train.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    add_lora(transformer, cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets, seed=cfg.runtime.seed)
    return transformer.to(runtime.device).train()


def cached_items(transformer, cfg, n: int, dtype):
    """`n` cached photos (`lookalike.data.cache.Cached`, on the CPU as `load_cache` gives them) of random
    latents and conditionings of the shapes the config and the model imply, and the empty caption's."""
    from lookalike.data.cache import Cached
    from lookalike.models.family import family_of_module

    name = family_of_module(transformer).name
    b = random_batch(name, dict(transformer.config), cfg.dataset.resolution, cfg.dataset.max_sequence_length,
                     n + 1, "cpu", dtype, seed=cfg.runtime.seed)
    items = [Cached(f"photo-{i}.jpg", "a photo", b.latents[i].to(dtype), {k: v[i] for k, v in b.cond.items()})
             for i in range(n)]
    return items, {k: v[n] for k, v in b.cond.items()}


def _to(value, device):
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value.to(device)


def bare_loop(transformer, cfg, stream, steps: int, runtime) -> tuple[list[float], list[float]]:
    """The same work without the framework: micro-batches 0 .. steps-1 of `stream`, put on the device
    beforehand; per step `training_loss` with the step's own σ/ε generator (as `LoraModule.training_step`),
    backward, clipping, AdamW. Returns (wall seconds per step, losses)."""
    from lookalike.train.module import as_batch, step_generator
    from lookalike.train.run import lightning_precision
    from lookalike.train.step import training_loss

    device, train = runtime.device, cfg.train
    batches = [_to(stream.batch(m), device) for m in range(steps)]
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=train.weight_decay)
    mixed = lightning_precision(runtime) != "32-true"
    grounding = cfg.dataset.grounding_target == "base"
    times, losses = [], []
    for m, batch in enumerate(batches):
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, runtime.dtype) if mixed else contextlib.nullcontext():
            loss, _ = training_loss(transformer, as_batch(batch, batch["grounding"] if grounding else None), train,
                                    step_generator(cfg.runtime.seed, 0, m))
        loss.backward()
        if train.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))  # a sync, as the Lightning step's finiteness check is
        times.append(time.perf_counter() - start)
    return times, losses


def lightning_loop(transformer, cfg, items, empty, plan_, runtime, folder: Path) -> tuple[list[float], list[float]]:
    """`lookalike train`'s loop on cached items: LoraModule, BatchStream through a DataLoader, a Lightning
    Trainer with train_stage's settings, loggers and callbacks (the previews are left out: they need the
    VAE), plus a clock taking the wall time at the end of every step. Returns (the clock's times, losses)."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from lookalike.data.loader import BatchStream
    from lookalike.train import callbacks as cb
    from lookalike.train.module import LoraModule
    from lookalike.train.run import lightning_precision

    class Clock(L.Callback):  # last: after every other callback's per-step work
        def __init__(self):
            self.ends: list[float] = []
            self.losses: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            sync(runtime.device)
            self.ends.append(time.perf_counter())
            self.losses.append(float(outputs["loss"]))

    def make_loader(start: int, rank: int):
        stream = BatchStream(items, empty, plan_, cfg.train.batch_size, cfg.runtime.seed, rank, start,
                             cfg.train.caption_dropout)
        return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=0)

    accum, total = plan_.accumulation, plan_.total_steps
    checkpoints = cb.Checkpoints(cfg.train.checkpoint_every, total, accum, folder / "resume" / "last.ckpt",
                                 lambda step: None)  # the LoRA snapshot (an export) only at the last step
    clock = Clock()
    callbacks = [cb.StepBar(total, plan_.steps_per_epoch, accum),
                 cb.EpochValidation([], items, plan_.steps_per_epoch, accum),
                 checkpoints, cb.RankDigests(), cb.GracefulStop(checkpoints), clock]
    loggers = [TensorBoardLogger(folder / "logs" / "tensorboard", name="", version="attempt-1",
                                 default_hp_metric=False),
               CSVLogger(folder / "logs" / "csv", name="", version="attempt-1")]
    trainer = L.Trainer(
        accelerator="cpu" if runtime.device.type == "cpu" else "gpu", devices=1, num_nodes=1,
        strategy=cfg.train.strategy, precision=lightning_precision(runtime), max_steps=total, max_epochs=-1,
        accumulate_grad_batches=accum, gradient_clip_val=cfg.train.max_grad_norm or None,
        logger=loggers, log_every_n_steps=1, callbacks=callbacks, plugins=[cb.AtomicCheckpointIO()],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, use_distributed_sampler=False, default_root_dir=folder,
    )
    transformer.train()
    trainer.fit(LoraModule(transformer, cfg, plan_, make_loader))
    return clock.ends, clock.losses


def framework_overhead(model: str, size: Size, device, args) -> dict:
    """lookalike's Lightning step against the bare loop: `args.overhead_warmup` steps, then
    `args.overhead_steps` timed ones, in each; the same start weights, batches, σ and ε. The bare loop
    runs before and after the Lightning run (bare, Lightning, bare: a machine that speeds up or slows
    down during the measurement moves both bare runs' times, and their mean is compared)."""
    import logging

    from lookalike.data.loader import BatchStream, make_plan
    from lookalike.runtime import training_runtime

    for chatty in ("lightning.pytorch", "lightning.fabric"):  # as train_stage does: no banners
        logging.getLogger(chatty).setLevel(logging.WARNING)
    warmup, steps = max(1, args.overhead_warmup), args.overhead_steps
    total = warmup + steps + 1  # the last step (checkpoint, LoRA digest) is not timed
    cfg = overhead_config(model, size, device, args.overhead_batch, total)
    runtime = training_runtime(cfg)
    reset_peak(runtime.device)
    transformer = overhead_transformer(model, size, cfg, runtime)
    batch = cfg.train.batch_size
    items, empty = cached_items(transformer, cfg, batch * (total + 1), runtime.dtype)
    plan_ = make_plan([tuple(it.latent.shape[-2:]) for it in items], cfg, 1)
    assert plan_.total_steps == total and plan_.steps_per_epoch > total, plan_
    start = {n: p.detach().clone() for n, p in transformer.named_parameters() if p.requires_grad}

    def restart() -> None:
        """Back on the device (Lightning's teardown moves the model to the CPU) with the start weights and
        no gradients (the last step's stay on the weights)."""
        transformer.to(runtime.device)
        with torch.no_grad():
            for n, p in transformer.named_parameters():
                if n in start:
                    p.copy_(start[n])
                    p.grad = None

    stream = BatchStream(items, empty, plan_, batch, cfg.runtime.seed, 0, 0, cfg.train.caption_dropout)
    before, bare_losses = bare_loop(transformer, cfg, stream, warmup + steps, runtime)
    restart()
    with tempfile.TemporaryDirectory(prefix="gpu-train-step-") as folder:
        ends, lightning_losses = lightning_loop(transformer, cfg, items, empty, plan_, runtime, Path(folder))
    restart()
    after, again = bare_loop(transformer, cfg, stream, warmup + steps, runtime)
    peak, _ = peak_gb(runtime.device)
    transformer = start = None  # free the model before the next one (restart() is not called again)
    reset_peak(runtime.device)

    timed_steps = slice(warmup, warmup + steps)
    lightning = [b - a for a, b in zip(ends[warmup - 1:warmup + steps - 1], ends[timed_steps])]
    bare = before[timed_steps] + after[timed_steps]
    pairs = list(zip(lightning_losses, bare_losses)) + list(zip(again, bare_losses))
    diff = max(abs(a - b) / max(abs(a), abs(b), 1e-12) for a, b in pairs)
    mean_l, mean_b = statistics.mean(lightning), statistics.mean(bare)
    med_l, med_b = statistics.median(lightning), statistics.median(bare)
    title = "toy FLUX (lookalike:toy)" if model == "toy" else f"{MODELS[model].title}, {size.name} size"
    targets = cfg.lora.targets if isinstance(cfg.lora.targets, str) else "+".join(cfg.lora.targets)
    return {
        "model": model, "title": title, "device": str(runtime.device),
        "precision": str(runtime.dtype).removeprefix("torch."), "threads": torch.get_num_threads(), "batch": batch,
        "side": cfg.dataset.resolution, "text_tokens": cfg.dataset.max_sequence_length,
        "lora": f"rank {cfg.lora.rank} on {targets}", "checkpointing": cfg.train.gradient_checkpointing,
        "warmup": warmup, "steps": steps,
        "lightning_s_per_step": mean_l, "bare_s_per_step": mean_b, "ratio": mean_l / mean_b,
        "lightning_median_s": med_l, "bare_median_s": med_b, "ratio_median": med_l / med_b,
        "bare_before_s_per_step": statistics.mean(before[timed_steps]),
        "bare_after_s_per_step": statistics.mean(after[timed_steps]),
        "lightning_s": lightning, "bare_s": bare,
        "lightning_losses": lightning_losses, "bare_losses": bare_losses, "bare_again_losses": again,
        "max_loss_rel_diff": diff, "peak_gb": peak,
    }


# ---------------------------------------------------------------- the cache stage (FLUX.1's parts)


def cache_throughput(size: Size, device, dtype, n: int) -> list[dict]:
    """Images/s of FLUX.1's VAE encoding side² photos (the cache stage's `encode_latent`, one photo at a
    time) and captions/s of T5 encoding text_tokens tokens, with random weights of the real shapes."""
    import numpy as np
    from diffusers import AutoencoderKL
    from PIL import Image
    from transformers import T5Config, T5EncoderModel

    from lookalike.data.cache import encode_latent

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size.side, size.side, 3), dtype=np.uint8))
    ids = torch.randint(0, size.t5["vocab_size"], (1, size.text_tokens), device=device)
    return [
        _throughput("VAE encode", f"{size.side}² photo", lambda: AutoencoderKL(**size.vae),
                    lambda vae: encode_latent(vae, image, device, dtype), device, dtype, n),
        _throughput("T5 encode", f"{size.text_tokens}-token caption", lambda: T5EncoderModel(T5Config(**size.t5)),
                    lambda t5: t5(input_ids=ids).last_hidden_state, device, dtype, n),
    ]


def _throughput(name: str, unit: str, build, encode, device, dtype, n: int) -> dict:
    """Materialise `build()` on `device`, time `n` calls of `encode(model)` after one warm-up; the model
    is freed on return."""
    reset_peak(device)
    model = materialise(build, device, dtype)
    with torch.no_grad():
        encode(model)
        seconds, _ = timed(lambda: [encode(model) for _ in range(n)], device)
    peak, _ = peak_gb(device)
    return {"stage": name, "unit": unit, "per_s": n / seconds, "n": n, "peak_gb": peak, "weights_gb": weight_gb(model)}


# ---------------------------------------------------------------- the report


def fmt(value, spec: str = ".2f", none: str = "n/a") -> str:
    return none if value is None else format(value, spec)


def markdown(meta: dict, rows: list[Row], cache: list[dict], overhead: dict | None = None) -> str:
    ck = {"off": "off", "half": "every 2nd block", "every": "every block"}
    lines = [f"{meta['gpu']}, {meta['date']}, torch {meta['torch']}, diffusers {meta['diffusers']}, "
             f"{meta['size']} size, LoRA rank {meta['rank']} on each family's `seed` targets, {meta['dtype']} base; "
             f"measured matmul peak {meta['peak_tflops']:.4g} TFLOP/s ({meta['peak_what']}); "
             f"{meta['warmup']} warm-up + {meta['steps']} timed steps per case (median).", ""]
    if overhead:
        o = overhead
        same = "yes (equal)" if o["max_loss_rel_diff"] == 0 else f"max rel. diff {o['max_loss_rel_diff']:.1e}"
        lines += [f"Framework overhead: lookalike's step (LoraModule in a Lightning Trainer with BatchStream, "
                  f"loggers and callbacks) against a bare loop (training_loss, backward, clipping, AdamW) on the "
                  f"same batches from the same start weights, run before and after it; wall clock, "
                  f"{o['warmup']} warm-up + {o['steps']} timed steps each, {o['threads']} torch thread(s).", "",
                  "| model | device | precision | batch | photo / text tokens | LoRA | checkpointing "
                  "| lookalike s/step (mean / median) | bare loop s/step (mean / median; before, after) "
                  "| overhead ratio (mean / median) | same losses |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
                  f"| {o['title']} | {o['device']} | {o['precision']} | {o['batch']} "
                  f"| {o['side']}² / {o['text_tokens']} | {o['lora']} | {'every block' if o['checkpointing'] else 'off'} "
                  f"| {o['lightning_s_per_step']:.4f} / {o['lightning_median_s']:.4f} | "
                  f"{o['bare_s_per_step']:.4f} / {o['bare_median_s']:.4f}; {o['bare_before_s_per_step']:.4f}, "
                  f"{o['bare_after_s_per_step']:.4f} | {o['ratio']:.3f}x / {o['ratio_median']:.3f}x | {same} |", ""]
    elif meta.get("overhead_error"):
        lines += [f"Framework overhead: failed ({meta['overhead_error']}).", ""]
    if rows:
        lines += ["| model | memory mode | batch | checkpointing | compile | s/step | first step s | peak GB | "
                  "reserved GB | base weights GB | TFLOP/s | MFU | loss | status |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        c = r.case
        lines.append(f"| {c.model} | {c.mode} | {c.batch} | {ck[c.checkpointing]} | {'on' if c.compile else 'off'} | "
                     f"{fmt(r.s_per_step, '.3f', '')} | {fmt(r.first_step_s, '.1f', '')} | {fmt(r.peak_gb)} | "
                     f"{fmt(r.reserved_gb)} | {fmt(r.extra.get('weights_gb'), '.4g', '')} | "
                     f"{fmt(r.tflops, '.4g', '')} | {fmt(r.mfu and 100 * r.mfu, '.1f', '')}{'%' if r.mfu else ''} | "
                     f"{fmt(r.loss, '.4f', '')} | {r.status} |")
    if cache:
        lines += ["", "Cache stage, FLUX.1's parts only (FLUX.2's VAE and text encoders are not timed):", "",
                  "| cache stage | input | per second | peak GB | weights GB |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {c['stage']} | {c['unit']} | {c['per_s']:.2f} | {fmt(c['peak_gb'])} | {c['weights_gb']:.2f} |"
                  for c in cache]
    return "\n".join(lines) + "\n"


def write(out: Path, meta: dict, rows: list[Row], cache: list[dict], overhead: dict | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_train_step.md").write_text(markdown(meta, rows, cache, overhead))
    records = [{"meta": meta}] + [{"cache": c} for c in cache] + ([{"overhead": overhead}] if overhead else [])
    records += [{**asdict(r), "case": asdict(r.case)} for r in rows]
    (out / "gpu_train_step.jsonl").write_text("".join(json.dumps(x) + "\n" for x in records))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    deadline = started + args.budget_s
    size = TINY if args.tiny else FULL
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # as lookalike.runtime decides
    peak = matmul_peak(device, dtype, size.matmul_n)
    meta = run_meta(args, size, device, dtype, peak)
    print(f"matmul peak {peak:.1f} TFLOP/s on {meta['gpu']}", flush=True)
    cache, rows, overhead = [], [], None
    if not args.no_overhead:
        try:
            overhead = framework_overhead(args.overhead_model, size, device, args)
            print(f"framework overhead ({overhead['title']}): {overhead['lightning_s_per_step']:.4f} s/step "
                  f"against {overhead['bare_s_per_step']:.4f}: {overhead['ratio']:.3f}x", flush=True)
        except Exception as e:  # the other parts still run; the failure is the part's result
            overhead = None
            meta["overhead_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            print(f"framework overhead failed: {meta['overhead_error']}", flush=True)
            reset_peak(device)
        write(args.out, meta, rows, cache, overhead)
    if not args.overhead_only and not args.no_cache_stage:
        try:
            cache = cache_throughput(size, device, dtype, args.cache_n)
        except Exception as e:  # the transformer sweep matters more: report and go on
            print(f"cache-stage throughput failed: {type(e).__name__}: {e}", flush=True)
            reset_peak(device)
    write(args.out, meta, rows, cache, overhead)
    if not args.overhead_only:
        rows = sweep_transformer(size, device, dtype, args, peak, deadline,
                                 lambda rows: write(args.out, meta, rows, cache, overhead))
    meta["wall_s"] = round(time.monotonic() - started, 1)
    write(args.out, meta, rows, cache, overhead)
    print((args.out / "gpu_train_step.md").read_text())
    return {"meta": meta, "rows": rows, "cache": cache, "overhead": overhead}


def run_meta(args, size: Size, device, dtype, peak: float) -> dict:
    import diffusers

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()}, no GPU)"
    return {"gpu": gpu, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "size": size.name, "models": [] if args.overhead_only else args.family,
            "rank": args.rank, "dtype": str(dtype).removeprefix("torch."), "peak_tflops": peak,
            "peak_what": f"{size.matmul_n}³ {str(dtype).removeprefix('torch.')} products",
            "warmup": args.warmup, "steps": args.steps, "threads": torch.get_num_threads(),
            "python": sys.version.split()[0]}


def families_arg(text: str) -> list[str]:
    """`--family`: comma-separated MODELS names, or `all`."""
    names = list(MODELS) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown model {', '.join(unknown) or text!r}; known: "
                                         f"{', '.join(MODELS)}, or all")
    return list(dict.fromkeys(names))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", type=families_arg, default=list(MODELS),
                   help=f"models to sweep, comma-separated: {', '.join(MODELS)}, or all (the default)")
    p.add_argument("--tiny", action="store_true", help="the twins' shapes and the toy: the same code, seconds on a CPU")
    p.add_argument("--out", type=Path, default=Path("bench-out"), help="folder for gpu_train_step.md and .jsonl")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="default 1 4 8 (tiny: 1 2)")
    p.add_argument("--modes", nargs="+", default=["balanced", "low", "lowest"], choices=["balanced", "low", "lowest"])
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps per case (the median is reported)")
    p.add_argument("--budget-s", type=float, default=480.0, help="start no case predicted to end after this")
    p.add_argument("--compile-allowance-s", type=float, default=None, help="compile time assumed per compiled case "
                   "(default 90, tiny 20)")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile cases")
    p.add_argument("--no-cache-stage", action="store_true", help="leave out the VAE and T5 throughput")
    p.add_argument("--cache-n", type=int, default=None, help="encodes timed per cache-stage model (default 8, tiny 2)")
    p.add_argument("--overhead", dest="overhead_only", action="store_true",
                   help="only the framework overhead: lookalike's Lightning step against a bare loop")
    p.add_argument("--no-overhead", action="store_true", help="leave out the framework overhead")
    p.add_argument("--overhead-model", default=None, help="toy, or a --family name (default: toy with --tiny, "
                   "else the first --family)")
    p.add_argument("--overhead-batch", type=int, default=None, help="default: the toy preset's 8; 1 for a model")
    p.add_argument("--overhead-warmup", type=int, default=None, help="untimed steps first (default 3, tiny 2)")
    p.add_argument("--overhead-steps", type=int, default=None, help="timed steps (default 10, tiny 12)")
    args = p.parse_args(argv)
    if args.overhead_only and args.no_overhead:
        p.error("--overhead and --no-overhead exclude each other")
    args.batches = sorted(args.batches or ([1, 2] if args.tiny else [1, 4, 8]))
    args.compile_allowance_s = args.compile_allowance_s if args.compile_allowance_s is not None else (
        20.0 if args.tiny else 90.0)
    args.cache_n = args.cache_n or (2 if args.tiny else 8)
    args.overhead_model = args.overhead_model or ("toy" if args.tiny else args.family[0])
    if args.overhead_model != "toy" and args.overhead_model not in MODELS:
        p.error(f"--overhead-model {args.overhead_model!r}: toy or one of {', '.join(MODELS)}")
    if args.overhead_batch is None and args.overhead_model != "toy":
        args.overhead_batch = 1
    args.overhead_warmup = args.overhead_warmup if args.overhead_warmup is not None else (2 if args.tiny else 3)
    args.overhead_steps = args.overhead_steps or (12 if args.tiny else 10)
    return args


if __name__ == "__main__":
    main()
