"""The train stage: read the cache, build the LoRA model, hand it to Lightning, export the result.

    RUN/train/resume/last.ckpt                 full resumable state (LoRA, optimiser, counters)
    RUN/train/checkpoints/step-000250.safetensors  LoRA snapshots (diffusers format)
    RUN/train/samples/epoch-0025/*.png, progress-*.gif
    RUN/train/logs/{tensorboard,csv}/attempt-N/  TensorBoard events and metrics.csv, one folder per attempt
    RUN/train/lora.safetensors, lora-kohya.safetensors, manifest.json
    RUN/train/lora-raw.safetensors              with train.ema_decay: the last raw weights (the rest: their average)
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from lookalike.errors import ConfigError, Interrupted
from lookalike.rundir import RunDir

log = logging.getLogger(__name__)

STAGE = "train"

# What defines the run: the model, the photos and captions, the LoRA's shape and the seed. A resume must
# keep these; the recipe in `train` (learning rate, batch split, cadences) may change, e.g. after a NaN
# loss or running out of memory, at the price of no longer matching an uninterrupted run bit for bit.
def resume_settings(cfg) -> dict:
    """The settings that must match between a run and its resume (those fixed once training starts)."""
    from lookalike.config.run import identity_settings

    return identity_settings(cfg)


def resume_fingerprint(cfg) -> str:
    return hashlib.sha256(repr(sorted(resume_settings(cfg).items())).encode()).hexdigest()[:16]


@dataclass
class TrainReport:
    folder: Path
    steps: int
    lora: Path | None
    kohya: Path | None
    rank_digests: list[str]


def is_child_process() -> bool:
    """True in the extra processes Lightning launches for DDP (they skip caching and folder checks)."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0


def lightning_precision(runtime) -> str:
    """Lightning's precision flag. The base is already in its dtype and the LoRA in fp32, so on a GPU
    autocast runs both in bf16/fp16 while the optimiser updates fp32 LoRA weights; on a CPU, plain fp32."""
    name = str(runtime.dtype).removeprefix("torch.")
    if runtime.device.type == "cpu" or name == "float32":
        return "32-true"
    return "bf16-mixed" if name == "bfloat16" else "16-mixed"


def out_of_memory_error(cfg, err: Exception) -> ConfigError:
    """Turn CUDA's out-of-memory into the settings to lower, in the order they help."""
    t = cfg.train
    tips = []
    if t.batch_size > 1:
        tips.append(f"train.batch_size={max(1, t.batch_size // 2)} with "
                    f"train.gradient_accumulation={t.gradient_accumulation * 2} (same effective batch)")
    if not t.gradient_checkpointing:
        tips.append("train.gradient_checkpointing=true")
    if cfg.dataset.resolution > 512:
        tips.append(f"dataset.resolution={cfg.dataset.resolution * 3 // 4 // 16 * 16}")
    if cfg.lora.rank > 16:
        tips.append(f"lora.rank={cfg.lora.rank // 2}")
    return ConfigError(
        f"out of GPU memory while training ({str(err).splitlines()[0][:160]}). Lower one of: " + "; ".join(tips)
        + ". Checkpoints already written are kept: resume with --resume after changing a setting that may change "
        "on resume, or start a new run folder"
    )


def continue_with(run: RunDir, resume_hint: str | None, settings: tuple[str, ...] = ()) -> str:
    """How to continue a stopped run, completing "to continue, ...": `resume_hint` (another verb's own way,
    e.g. "run the same `lookalike fit ...` again") or `lookalike train RUN --resume`, with `settings` to change."""
    sets = "".join(f" --set {s}" for s in settings)
    if resume_hint is None:
        return f"run `lookalike train {run.root} --resume{sets}`"
    return resume_hint + (f" with `{sets.strip()}`" if sets else "")


def diverged_error(cfg, run: RunDir, err, precision: str, resume_hint: str | None = None):
    """A NaN/Inf loss's message: what is saved to go on from, and a change that fits the precision.

    Called after Lightning's exception hooks, so `Checkpoints` has already dropped a state that held the
    diverged weights. Resuming such a state with a lower learning rate meets the same loss again (the loss
    is computed before the update), so only an earlier one is offered for `--resume`."""
    from lookalike.train.callbacks import checkpoint_step
    from lookalike.train.module import TrainingDiverged

    lr = cfg.train.learning_rate
    if precision == "16-mixed":
        change, why = "train.precision=bf16", "fp16 overflows where bf16, with fp32's range, does not"
    else:
        change, why = f"train.learning_rate={lr / 2:g}", f"half the current {lr:g}"
    saved, path = checkpoint_step(run.resume_checkpoint), run.resume_checkpoint
    again = f"start again in a new run folder with `--set {change}` ({why})"
    if err.step == 0:
        advice = (f"No update had been made yet, so the learning rate is not the cause: check model.source and "
                  f"train.precision ({precision})")
    elif saved is None:
        advice = f"No state was saved before it, so there is nothing to resume: {again}"
    elif saved < err.step or precision == "16-mixed":
        advice = f"Step {saved} is saved in {path}: to continue from it ({why}), {continue_with(run, resume_hint, (change,))}"
    else:
        advice = (f"The state saved in {path} is step {saved}, the weights whose loss diverged, so resuming it at a "
                  f"lower learning rate meets the same loss: {again}")
    return TrainingDiverged(err.loss, err.step, advice)


def interrupted_error(run: RunDir, step: int, total: int, resume_hint: str | None = None) -> Interrupted:
    return Interrupted(f"Ctrl-C at step {step} of {total}: the state at that step is saved in "
                       f"{run.resume_checkpoint}; to continue, {continue_with(run, resume_hint)}")


def aborted_error(run: RunDir, step: int, resume_hint: str | None = None) -> Interrupted:
    """A second Ctrl-C left mid-step: what the last save holds (writes are atomic: last.ckpt is whole)."""
    from lookalike.train.callbacks import checkpoint_step

    saved = checkpoint_step(run.resume_checkpoint)
    if saved is None:
        return Interrupted(f"Ctrl-C twice: training stopped at once at step {step}, before any state was saved; "
                           "run the same command again to start over")
    return Interrupted(f"Ctrl-C twice: training stopped at once at step {step}; the last saved state is step {saved} "
                       f"in {run.resume_checkpoint}; to continue from there, {continue_with(run, resume_hint)}")


@contextmanager
def ctrl_c_stops(stop):
    """While training: the first Ctrl-C asks `stop` (a GracefulStop) to end at the next step with its state
    saved; the second raises Interrupted at once, and later ones are ignored while that unwinds. The
    previous handler comes back afterwards. Only the main thread may set handlers: elsewhere, no change."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum, frame):
        if not stop.requested:
            stop.requested = True
            log.warning("Ctrl-C: stopping after this step, with its state saved (Ctrl-C again to stop at once)")
            return
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise Interrupted("Ctrl-C twice: training stopped at once")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def train_stage(cfg, run: RunDir, resume: bool = False, resume_hint: str | None = None) -> TrainReport:
    """Train the LoRA on RUN/cache; `resume` continues from RUN/train/resume/last.ckpt.

    Ctrl-C ends training at the next step with its state saved and raises `Interrupted`. That message and
    a NaN loss's say how to continue: `resume_hint`, completing "to continue, ..." (default: run
    `lookalike train RUN --resume`); a verb that resumes its own way passes its own.
    """
    import lightning as L
    import torch
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from lookalike.data.cache import load_cache
    from lookalike.data.loader import BatchStream, make_plan
    from lookalike.models.quantize import apply_memory_mode, quantize_device
    from lookalike.models.source import load_transformer, model_and_family
    from lookalike.runtime import training_runtime
    from lookalike.train import callbacks as cb
    from lookalike.train.ema import LoraEma
    from lookalike.train.lora import add_lora
    from lookalike.train.module import LoraModule

    if logging.getLogger().level > logging.DEBUG:  # Lightning resets these at import: banners, tips
        for chatty in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    if cfg.train.ema_decay and cfg.train.strategy == "fsdp":
        raise ConfigError("train.ema_decay needs the whole LoRA on every device, which train.strategy=fsdp shards; "
                          "use train.strategy=ddp, or set train.ema_decay=0")
    folder = run.stage(STAGE)
    if resume and not run.resume_checkpoint.exists():
        raise ConfigError(f"--resume: {run.resume_checkpoint} does not exist; nothing to resume. Run without --resume")
    source, family = model_and_family(cfg)
    data = load_cache(run, family.name)
    runtime = training_runtime(cfg)
    world = cfg.train.devices * cfg.train.num_nodes
    plan = make_plan([tuple(it.latent.shape[-2:]) for it in data.train], cfg, world)
    transformer = load_transformer(source, runtime.dtype)
    apply_memory_mode(transformer, cfg.train.memory, quantize_device(runtime.device))  # before the LoRA: it stays fp32
    if cfg.train.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    lora = add_lora(transformer, cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets, seed=cfg.runtime.seed)
    _log_start(cfg, runtime, lora, plan, data)
    captions = [it.caption for it in data.train]

    def make_loader(start: int, rank: int):
        stream = BatchStream(data.train, data.empty, plan, cfg.train.batch_size, cfg.runtime.seed, rank, start,
                             cfg.train.caption_dropout, blank=cfg.train.blank_prior_weight > 0)
        return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=0)

    ema = LoraEma(cfg.train.ema_decay, plan.accumulation) if cfg.train.ema_decay else None

    def averaged():
        """The LoRA weights snapshots, previews and the export use: the average with train.ema_decay."""
        return ema.applied(module) if ema else nullcontext()

    def save_snapshot(step: int) -> Path:
        with averaged():
            return _export(cfg, family, transformer, lora, step, run.checkpoint(step), captions=captions)

    def make_sampler():
        from lookalike.generate import PromptEmbedding, prepare_pipeline, settings_from_config
        from lookalike.train.previews import PreviewSampler

        # the negative prompt the family samples against (generate.negative_prompt, else the empty caption)
        negative = data.negative or PromptEmbedding("", {k: v[None] for k, v in data.empty.items()})
        ready = prepare_pipeline(source, runtime, [], settings_from_config(cfg.generate), transformer=transformer,
                                 embeddings=data.prompts, negative=negative)
        return PreviewSampler(ready, cfg.generate.seeds, {"model": cfg.model.source, "run": str(run.root)})

    accum, total = plan.accumulation, plan.total_steps
    digests = cb.RankDigests()
    checkpoints = cb.Checkpoints(cfg.train.checkpoint_every, total, accum, run.resume_checkpoint, save_snapshot, resume)
    stop = cb.GracefulStop(checkpoints)
    callbacks = [
        cb.StepBar(total, plan.steps_per_epoch, accum),
        cb.EpochValidation(data.holdout, data.train, plan.steps_per_epoch, accum),
        checkpoints,
        digests,
        stop,  # last: the step's own saves, validation and previews come first
    ]
    if cfg.train.strategy != "fsdp":  # FSDP shards the weights: a rank-0-only forward would hang
        callbacks.insert(1, cb.Previews(make_sampler, cfg.train.sample_every, plan.steps_per_epoch, total, accum,
                                        folder / "samples", folder, weights=averaged))
    if ema:
        callbacks.insert(0, ema)  # first: a step's snapshot and previews see the average after that step
    attempt = _next_attempt(folder / "logs" / "csv")
    loggers = [TensorBoardLogger(folder / "logs" / "tensorboard", name="", version=attempt, default_hp_metric=False),
               CSVLogger(folder / "logs" / "csv", name="", version=attempt, flush_logs_every_n_steps=10)]  # the app's live curves
    trainer = L.Trainer(
        accelerator="cpu" if runtime.device.type == "cpu" else "gpu",
        devices=cfg.train.devices, num_nodes=cfg.train.num_nodes, strategy=cfg.train.strategy,
        precision=lightning_precision(runtime), max_steps=total, max_epochs=-1,
        accumulate_grad_batches=accum, gradient_clip_val=cfg.train.max_grad_norm or None,
        logger=loggers, log_every_n_steps=1, callbacks=callbacks, plugins=[cb.AtomicCheckpointIO()],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, use_distributed_sampler=False,
    )
    transformer.train()  # FLUX has no dropout or batch norm: this only keeps Lightning from warning
    module = LoraModule(transformer, cfg, plan, make_loader)
    started = time.time()
    _fit(trainer, module, cfg, run, resume, stop, lightning_precision(runtime), resume_hint)
    if stop.stopped_at is not None:
        if trainer.is_global_zero:
            raise interrupted_error(run, stop.stopped_at, total, resume_hint)
        return TrainReport(folder, stop.stopped_at, None, None, [])  # DDP ranks > 0 end quietly
    report = TrainReport(folder, trainer.global_step, None, None, digests.digests)
    if trainer.is_global_zero:
        if ema:
            _export(cfg, family, transformer, lora, trainer.global_step, run.lora_raw, captions=captions)
        with averaged():
            report.lora = _export(cfg, family, transformer, lora, trainer.global_step, run.lora, captions=captions)
            report.kohya = _export(cfg, family, transformer, lora, trainer.global_step, run.lora_kohya, kohya=True,
                                   captions=captions)
        run.write_manifest(
            folder, STAGE, steps=trainer.global_step, epochs=trainer.global_step // plan.steps_per_epoch,
            resumed=resume, seconds=round(time.time() - started, 2), device=str(runtime.device),
            precision=lightning_precision(runtime), world_size=world, trainable=lora.trainable,
            lora=report.lora.name, kohya=report.kohya.name, rank_digests=report.rank_digests,
            ema_decay=cfg.train.ema_decay or None, lora_raw=run.lora_raw.name if ema else None,
            final_loss=_metric(trainer, "train/loss"), final_fixed_loss=_metric(trainer, "val/train_fixed_loss"),
        )
        if stop.requested:  # Ctrl-C during the last step: the run ended and is exported; stop the caller too
            rest = f"; to go on with what comes next, {resume_hint}" if resume_hint else ""
            raise Interrupted(f"Ctrl-C during the last step: training finished ({trainer.global_step} steps) and the "
                              f"LoRA is saved in {run.lora}{rest}")
    return report


def _fit(trainer, module, cfg, run: RunDir, resume: bool, stop, precision: str, resume_hint: str | None) -> None:
    """`trainer.fit` with Ctrl-C turned into a graceful stop, and failures into what the user can do."""
    import signal

    import torch

    from lookalike.train.module import TrainingDiverged

    with ctrl_c_stops(stop):
        try:
            trainer.fit(module, ckpt_path=str(run.resume_checkpoint) if resume else None)
        except torch.cuda.OutOfMemoryError as e:
            raise out_of_memory_error(cfg, e) from None
        except TrainingDiverged as e:
            raise diverged_error(cfg, run, e, precision, resume_hint) from None
        except Interrupted:  # the second Ctrl-C: DDP ranks this process launched go too, as Lightning does
            if trainer.strategy.launcher is not None:
                trainer.strategy.launcher.kill(getattr(signal, "SIGKILL", signal.SIGTERM))
            raise aborted_error(run, trainer.global_step, resume_hint) from None


def _metric(trainer, name: str) -> float | None:
    value = trainer.callback_metrics.get(name)
    return None if value is None else round(float(value), 6)


def _next_attempt(logs: Path) -> str:
    n = 1
    while (logs / f"attempt-{n}").exists():
        n += 1
    return f"attempt-{n}"


def _export(cfg, family, transformer, lora, step: int, path: Path, kohya: bool = False, captions=None) -> Path:
    """Write the current LoRA to `path` (diffusers format, or `family`'s ComfyUI format) with the
    lookalike, `ss_*` and `modelspec.*` headers."""
    from lookalike.export import header, save_diffusers_lora
    from lookalike.train.lora import lora_state_dict

    state = {k: v.detach().float().cpu() for k, v in lora_state_dict(transformer).items()}
    meta = header(cfg.dataset.trigger, cfg.lora.rank, cfg.lora.alpha, family.targets(cfg.lora.targets),
                  cfg.model.source, step, family=family.name, resolution=cfg.dataset.resolution,
                  captions=captions, output_name=path.stem)
    if kohya:
        return family.save_comfy_lora(transformer, state, lora.config, path, meta)
    return save_diffusers_lora(state, lora.config, path, meta, pipeline_cls=family.load_class("pipeline"))


def _log_start(cfg, runtime, lora, plan, data) -> None:
    """The first lines a user reads: where, in what precision, how much trains, and the cadences."""
    t = cfg.train
    log.info("training on %s (%s); base %s, LoRA weights fp32, Lightning precision %s",
             runtime.device, runtime.reason, str(runtime.dtype).removeprefix("torch."), lightning_precision(runtime))
    log.info("LoRA rank %d, alpha %g on %d modules: %s trainable parameters (%.3f%% of %s)",
             cfg.lora.rank, cfg.lora.alpha, len(lora.modules), f"{lora.trainable:,}",
             100 * lora.trainable / lora.total, f"{lora.total:,}")
    log.info("%d training photos (%d held out), batch %d x accumulation %d x %d device(s): %d steps per epoch, "
             "%d epochs = %d steps", len(data.train), len(data.holdout), t.batch_size, t.gradient_accumulation,
             plan.world_size, plan.steps_per_epoch, t.epochs, plan.total_steps)
    log.info("checkpoint every %d steps, previews every %d epochs (every %d steps), validation every epoch",
             t.checkpoint_every, t.sample_every, t.sample_every * plan.steps_per_epoch)
