"""Speed and memory of one LoRA training step at full FLUX.1-dev size, with random weights.

Builds the published FLUX.1-dev transformer (19 double and 38 single blocks, hidden 3072, 24 heads,
guidance embeddings) on the meta device, allocates it on the GPU and initialises it there (no 24 GB
copy through host memory), adds the rank-32 LoRA on the seed's targets with `add_lora`, and times
the project's own step (`training_loss`, backward, gradient clipping, AdamW) on random cached inputs
of the real shapes: 1024² -> 4096 latent tokens of 64 channels, 512 T5 tokens of 4096, CLIP pooled 768.

For every case (memory mode x batch x checkpointing x torch.compile) it reports the median seconds
per step after warm-up (CUDA events), the peak GPU memory, and the model-FLOP utilisation against a
bf16 matrix-product peak measured in the same run. A case that runs out of memory is reported as
OOM and the sweep goes on; cases that would not finish inside `--budget-s` are reported as skipped.
It also measures the cache stage's throughput: the VAE encoding 1024² photos and T5-XXL encoding
512-token captions, both built the same way.

    python bench/gpu_train_step.py --out DIR          # the full sweep, on a GPU (~8 minutes)
    python bench/gpu_train_step.py --tiny --out DIR   # the same code path on the tiny twin's shapes (CPU, seconds)

Writes DIR/gpu_train_step.md (Markdown tables for BENCHMARKS.md) and DIR/gpu_train_step.jsonl, both
rewritten after every case so that a run cut short still leaves its rows.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

# ---------------------------------------------------------------- the two sizes

# black-forest-labs/FLUX.1-dev transformer/config.json, vae/config.json, text_encoder_2/config.json
FLUX_DEV = dict(patch_size=1, in_channels=64, out_channels=None, num_layers=19, num_single_layers=38,
                attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
FLUX_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2, norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False,
                shift_factor=0.1159, scaling_factor=0.3611)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, feed_forward_proj="gated-gelu")
# The tiny twin's shapes (lookalike.models.twin), for the CPU run of the same code.
TINY_FLUX = dict(FLUX_DEV, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
                 joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))
TINY_VAE = dict(FLUX_VAE, block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4)
TINY_T5 = dict(T5_XXL, vocab_size=128, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
               relative_attention_num_buckets=8)


@dataclass(frozen=True)
class Size:
    """Model configs and input shapes. side: image pixels; t5_tokens x t5_dim; pooled_dim."""

    flux: dict
    vae: dict
    t5: dict
    side: int
    t5_tokens: int
    matmul_n: int  # side of the square matrices timed for the peak rate

    @property
    def t5_dim(self) -> int:
        return self.flux["joint_attention_dim"]

    @property
    def pooled_dim(self) -> int:
        return self.flux["pooled_projection_dim"]


FULL = Size(FLUX_DEV, FLUX_VAE, T5_XXL, side=1024, t5_tokens=512, matmul_n=8192)
TINY = Size(TINY_FLUX, TINY_VAE, TINY_T5, side=128, t5_tokens=16, matmul_n=256)


@dataclass(frozen=True)
class Case:
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
    """
    with torch.device("meta"):
        model = build()
    if any(True for _ in model.buffers()):
        raise RuntimeError(f"{type(model).__name__} has buffers, which to_empty would leave uninitialised")
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


def build_transformer(size: Size, device, dtype, mode: str, rank: int):
    """The FLUX transformer with random weights in memory mode `mode`, with the LoRA (fp32) on the seed's targets."""
    from diffusers import FluxTransformer2DModel

    from lookalike.config.schema import LoraConfig
    from lookalike.models.quantize import apply_memory_mode
    from lookalike.train.lora import add_lora

    transformer = materialise(lambda: FluxTransformer2DModel(**size.flux), device, dtype)
    apply_memory_mode(transformer, mode, device)
    seed_recipe = LoraConfig()  # alpha 16 on to_q, to_k, to_v, to_out.0
    add_lora(transformer, rank, seed_recipe.alpha, seed_recipe.targets, seed=0)
    transformer.to(device).train()
    return transformer


def random_batch(size: Size, batch: int, device, dtype, seed: int = 0):
    """Cached inputs of the real shapes: latents [B, 16, side/8, side/8] fp32 (as the loader gives them),
    T5 [B, L, D_t5] and pooled [B, D_clip] in the cache dtype."""
    from lookalike.train.step import Batch

    g = torch.Generator(device).manual_seed(seed)
    h = size.side // 8
    return Batch(torch.randn(batch, 16, h, h, generator=g, device=device),
                 torch.randn(batch, size.t5_tokens, size.t5_dim, generator=g, device=device).to(dtype),
                 torch.randn(batch, size.pooled_dim, generator=g, device=device).to(dtype))


# ---------------------------------------------------------------- the FLOP model


TEXT_STREAM = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff_context")  # double blocks' text weights


def _tokens_of(name: str, img: int, txt: int) -> int:
    """Tokens a block Linear is applied to; 0 for the per-sample modulation (adaLN) layers."""
    if ".norm" in f".{name}":
        return 0
    if name.startswith("transformer_blocks."):
        return txt if any(k in name for k in TEXT_STREAM) else img
    return img + txt if name.startswith("single_transformer_blocks.") else 0


def model_flops(transformer, img_tokens: int, txt_tokens: int) -> float:
    """Model FLOPs of one training sample with a frozen base (shared/notes/anchors-performance.md §3):
    frozen linears 2x their forward (no weight gradient), attention 3x, LoRA 3x. Embedders, norms,
    RoPE, softmax and the per-sample modulation are left out. Counted from the module shapes."""
    frozen = lora = 0.0
    for name, m in transformer.named_modules():
        if isinstance(m, torch.nn.Linear):
            f = 2.0 * m.in_features * m.out_features * _tokens_of(name, img_tokens, txt_tokens)
            lora, frozen = (lora + f, frozen) if ".lora_" in name else (lora, frozen + f)
    n = img_tokens + txt_tokens
    blocks = len(transformer.transformer_blocks) + len(transformer.single_transformer_blocks)
    attention = 4.0 * n * n * transformer.inner_dim * blocks  # QKᵀ and PV over the joint sequence
    return 2 * frozen + 3 * attention + 3 * lora


# ---------------------------------------------------------------- one case


def set_checkpointing(transformer, policy: str) -> int:
    """off, every block, or every second block ("half": the selective middle way). Returns the count."""
    from torch.utils.checkpoint import checkpoint

    blocks = list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)
    if policy == "off":
        transformer.disable_gradient_checkpointing()
        return 0
    chosen = {id(b) for i, b in enumerate(blocks) if policy == "every" or i % 2 == 0}

    def maybe_checkpoint(block, *args):
        if id(block) in chosen:
            return checkpoint(block.__call__, *args, use_reentrant=False)
        return block(*args)

    transformer.enable_gradient_checkpointing(maybe_checkpoint)
    return len(chosen)


def set_compiled(transformer, on: bool, backend: str) -> None:
    """Regional compilation: each double and single block compiled (one graph per block class)."""
    if on:
        # one graph serves every block of a class, but batch sizes, checkpointing and modes each add entries
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        transformer.compile_repeated_blocks(backend=backend)
        return
    for block in list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks):
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
        batch = random_batch(size, case.batch, device, dtype)
        times = [timed(lambda: trainer.step(batch), device)[0] for _ in range(args.warmup)]
        losses = []
        for _ in range(args.steps):
            seconds, loss = timed(lambda: trainer.step(batch), device)
            times.append(seconds)
            losses.append(float(loss))
        row.first_step_s, row.s_per_step = times[0], statistics.median(times[args.warmup:])
        row.loss = statistics.mean(losses)
        row.peak_gb, row.reserved_gb = peak_gb(device)
        flops = case.batch * model_flops(transformer, (size.side // 16) ** 2, size.t5_tokens)
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


def plan(args) -> list[Case]:
    """Eager bf16 cases first, then the memory modes, then compiled cases: most useful first, so a
    time budget cuts the least useful ones."""
    batches = args.batches
    cases = [Case("balanced", b, c, False) for b in batches for c in ("every", "half", "off")]
    cases += [Case(m, b, "every", False) for m in ("low", "lowest") for b in (batches[0], batches[-1])]
    compiled = [(batches[-1], "every"), (batches[-1], "off"), (batches[0], "off"), (batches[-1], "half")]
    cases += [Case("balanced", b, c, True) for b, c in compiled]
    cases += [Case(m, batches[-1], "every", True) for m in ("low", "lowest")]
    if args.no_compile:
        cases = [c for c in cases if not c.compile]
    return [c for c in dict.fromkeys(cases) if c.mode in args.modes]


def predicted_seconds(case: Case, rows: list[Row], args) -> float:
    """A cautious guess at a case's wall time from the rows so far (for the time budget)."""
    done = [r for r in rows if r.s_per_step]
    if not done:
        return 0.0
    per_image = max(r.s_per_step / r.case.batch for r in done)
    same = [r.s_per_step for r in done if r.case.batch == case.batch and r.case.mode == case.mode]
    step = max(same) if same else per_image * case.batch * (2.0 if case.mode != "balanced" else 1.0)
    return 1.3 * step * (args.warmup + args.steps) + (args.compile_allowance_s if case.compile else 0.0)


def sweep_transformer(size: Size, device, dtype, args, peak_tflops: float, deadline: float, report) -> list[Row]:
    rows: list[Row] = []
    trainer, mode = None, None
    for case in plan(args):
        left = deadline - time.monotonic()
        if predicted_seconds(case, rows, args) > left:
            rows.append(Row(case, status=f"skipped (time budget: {left:.0f} s left)"))
            report(rows)
            continue
        if mode != case.mode:
            trainer = None  # free the previous model before building the next
            trainer, mode = _new_trainer(size, device, dtype, case.mode, args.rank), case.mode
        if isinstance(trainer, str):  # the model itself did not fit or build
            rows.append(Row(case, status=trainer))
            report(rows)
            continue
        row = run_case(trainer, case, size, dtype, args, peak_tflops)
        row.extra["weights_gb"] = trainer.weight_gb
        rows.append(row)
        report(rows)
        print(f"{case}: {row.status} {row.s_per_step} s/step, peak {row.peak_gb} GB", flush=True)
    return rows


def _new_trainer(size: Size, device, dtype, mode: str, rank: int) -> "Trainer | str":
    """A Trainer on a freshly built model in `mode`, or the reason there is none ("OOM building the model")."""
    torch._dynamo.reset()  # drop compiled graphs that hold the previous model
    reset_peak(device)
    try:
        return Trainer(build_transformer(size, device, dtype, mode, rank), device, dtype, mode)
    except torch.OutOfMemoryError:
        failed = "OOM building the model"
    except Exception as e:  # reported in the table, like a failing case
        failed = f"error building the model ({type(e).__name__}: {str(e)[:120]})"
    reset_peak(device)
    return failed


def weight_gb(model) -> float:
    from lookalike.models.quantize import weight_bytes

    return weight_bytes(model) / 1e9


# ---------------------------------------------------------------- the cache stage


def cache_throughput(size: Size, device, dtype, n: int) -> list[dict]:
    """Images/s of the VAE encoding side² photos (the cache stage's `encode_latent`, one photo at a time)
    and captions/s of T5 encoding t5_tokens tokens, with random weights of the real shapes."""
    import numpy as np
    from diffusers import AutoencoderKL
    from PIL import Image
    from transformers import T5Config, T5EncoderModel

    from lookalike.data.cache import encode_latent

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size.side, size.side, 3), dtype=np.uint8))
    ids = torch.randint(0, size.t5["vocab_size"], (1, size.t5_tokens), device=device)
    return [
        _throughput("VAE encode", f"{size.side}² photo", lambda: AutoencoderKL(**size.vae),
                    lambda vae: encode_latent(vae, image, device, dtype), device, dtype, n),
        _throughput("T5 encode", f"{size.t5_tokens}-token caption", lambda: T5EncoderModel(T5Config(**size.t5)),
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


def markdown(meta: dict, rows: list[Row], cache: list[dict]) -> str:
    ck = {"off": "off", "half": "every 2nd block", "every": "every block"}
    lines = [f"{meta['gpu']}, {meta['date']}, torch {meta['torch']}, diffusers {meta['diffusers']}, "
             f"{meta['size']} size, LoRA rank {meta['rank']} on the seed's targets, {meta['dtype']} base; "
             f"measured matmul peak {meta['peak_tflops']:.4g} TFLOP/s ({meta['peak_what']}); "
             f"{meta['warmup']} warm-up + {meta['steps']} timed steps per case (median).", "",
             "| memory mode | batch | checkpointing | compile | s/step | first step s | peak GB | reserved GB | "
             "base weights GB | TFLOP/s | MFU | loss | status |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        c = r.case
        lines.append(f"| {c.mode} | {c.batch} | {ck[c.checkpointing]} | {'on' if c.compile else 'off'} | "
                     f"{fmt(r.s_per_step, '.3f', '')} | {fmt(r.first_step_s, '.1f', '')} | {fmt(r.peak_gb)} | "
                     f"{fmt(r.reserved_gb)} | {fmt(r.extra.get('weights_gb'), '.4g', '')} | "
                     f"{fmt(r.tflops, '.4g', '')} | {fmt(r.mfu and 100 * r.mfu, '.1f', '')}{'%' if r.mfu else ''} | "
                     f"{fmt(r.loss, '.4f', '')} | {r.status} |")
    if cache:
        lines += ["", "| cache stage | input | per second | peak GB | weights GB |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {c['stage']} | {c['unit']} | {c['per_s']:.2f} | {fmt(c['peak_gb'])} | {c['weights_gb']:.2f} |"
                  for c in cache]
    return "\n".join(lines) + "\n"


def write(out: Path, meta: dict, rows: list[Row], cache: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_train_step.md").write_text(markdown(meta, rows, cache))
    records = [{"meta": meta}] + [{"cache": c} for c in cache]
    records += [{**asdict(r), "case": asdict(r.case)} for r in rows]
    (out / "gpu_train_step.jsonl").write_text("".join(json.dumps(x) + "\n" for x in records))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.monotonic()
    deadline = started + args.budget_s
    size = TINY if args.tiny else FULL
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # as lookalike.runtime decides
    peak = matmul_peak(device, dtype, size.matmul_n)
    meta = run_meta(args, size, device, dtype, peak)
    print(f"matmul peak {peak:.1f} TFLOP/s on {meta['gpu']}", flush=True)
    cache = []
    if not args.no_cache_stage:
        try:
            cache = cache_throughput(size, device, dtype, args.cache_n)
        except Exception as e:  # the transformer sweep matters more: report and go on
            print(f"cache-stage throughput failed: {type(e).__name__}: {e}", flush=True)
            reset_peak(device)
    write(args.out, meta, [], cache)
    rows = sweep_transformer(size, device, dtype, args, peak, deadline,
                             lambda rows: write(args.out, meta, rows, cache))
    meta["wall_s"] = round(time.monotonic() - started, 1)
    write(args.out, meta, rows, cache)
    print((args.out / "gpu_train_step.md").read_text())
    return {"meta": meta, "rows": rows, "cache": cache}


def run_meta(args, size: Size, device, dtype, peak: float) -> dict:
    import diffusers

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()}, no GPU)"
    return {"gpu": gpu, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "size": "tiny (twin)" if args.tiny else "FLUX.1-dev",
            "rank": args.rank, "dtype": str(dtype).removeprefix("torch."), "peak_tflops": peak,
            "peak_what": f"{size.matmul_n}³ {str(dtype).removeprefix('torch.')} products",
            "warmup": args.warmup, "steps": args.steps, "python": sys.version.split()[0]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="the tiny twin's shapes: the same code, seconds on a CPU")
    p.add_argument("--out", type=Path, default=Path("bench-out"), help="folder for gpu_train_step.md and .jsonl")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="default 1 4 8 (tiny: 1 2)")
    p.add_argument("--modes", nargs="+", default=["balanced", "low", "lowest"], choices=["balanced", "low", "lowest"])
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps per case (the median is reported)")
    p.add_argument("--budget-s", type=float, default=480.0, help="start no case predicted to end after this")
    p.add_argument("--compile-allowance-s", type=float, default=None, help="compile time assumed per compiled case "
                   "(default 90, tiny 20)")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile cases")
    p.add_argument("--no-cache-stage", action="store_true", help="leave out the VAE and T5 throughput")
    p.add_argument("--cache-n", type=int, default=None, help="encodes timed per cache-stage model (default 8, tiny 2)")
    args = p.parse_args(argv)
    args.batches = sorted(args.batches or ([1, 2] if args.tiny else [1, 4, 8]))
    args.compile_allowance_s = args.compile_allowance_s if args.compile_allowance_s is not None else (
        20.0 if args.tiny else 90.0)
    args.cache_n = args.cache_n or (2 if args.tiny else 8)
    return args


if __name__ == "__main__":
    main()
