"""The LightningModule: a frozen transformer with a LoRA, trained on cached tensors.

Lightning owns the loop (devices, precision, accumulation, clipping, checkpoint files, loggers);
this module owns only what is specific to lookalike: which weights train, the step, the optimiser,
and what a checkpoint holds (the LoRA, never the frozen 12B base).
"""

from __future__ import annotations

import hashlib
import logging
import math

import lightning as L
import torch

from lookalike.errors import LookalikeError
from lookalike.train.run import resume_fingerprint
from lookalike.train.step import Batch, fixed_noise_loss, training_loss

log = logging.getLogger(__name__)


class TrainingDiverged(LookalikeError):
    """The loss became NaN or Inf with `step` optimiser steps done; `advice` says what is kept and what to change
    (the train stage adds it once the checkpoints have been sorted out)."""

    def __init__(self, loss: float, step: int, advice: str = ""):
        self.loss, self.step = loss, step
        super().__init__(f"the training loss became {loss} at step {step}; training stopped before the optimiser step"
                         + (f". {advice}" if advice else ""))


def step_generator(seed: int, rank: int, micro_batch: int) -> torch.Generator:
    """The CPU generator for σ and ε of one micro-batch: a function of (seed, rank, index), nothing else."""
    digest = hashlib.sha256(f"{seed}:noise:{rank}:{micro_batch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str = "constant") -> float:
    """The learning rate's multiplier at optimiser step `step` (from 0): linear warm-up from 1/warmup to 1
    over `warmup_steps`, then 1 (`constant`) or decaying towards 0 at `total_steps` (`cosine`, `linear`)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress


def check_finite(loss: torch.Tensor, step: int) -> None:
    """Stop on a NaN or Inf loss, before it reaches the weights."""
    if not torch.isfinite(loss):
        raise TrainingDiverged(loss.item(), step)


class LoraModule(L.LightningModule):
    """Trains the LoRA weights of `transformer` (already wrapped by `add_lora`) with flow matching.

    `plan` holds the cadences; `make_loader(start, rank)` returns the training DataLoader from
    micro-batch `start`.
    """

    def __init__(self, transformer, cfg, plan, make_loader):
        super().__init__()
        self.transformer = transformer
        self.cfg, self.plan, self.make_loader = cfg, plan, make_loader
        self.strict_loading = False  # checkpoints hold the LoRA only; the frozen base comes from the model source

    # ------------------------------------------------------------ data and step

    def train_dataloader(self):
        """Start where the (possibly restored) step count says: resume replays no batch and skips none."""
        return self.make_loader(self.trainer.global_step * self.plan.accumulation, self.global_rank)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        generator = step_generator(self.cfg.runtime.seed, self.global_rank, int(batch["index"]))
        prior = batch["grounding"] if self.cfg.dataset.grounding_target == "base" else None
        loss, sigma = training_loss(self.transformer, as_batch(batch, prior), self.cfg.train, generator)
        check_finite(loss, self.global_step)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/sigma", sigma.mean())
        self.log("train/epoch", batch["epoch"].float())
        return loss

    def validation_losses(self, items, limit: int | None = None) -> float:
        """Mean fixed-noise loss over cached items (one at a time, its σ values in one batch: buckets differ
        in size)."""
        train = self.cfg.train
        sigmas = torch.tensor(train.validation_sigmas)
        losses = []
        for i, it in enumerate(items[:limit]):
            b = Batch(it.latent[None].float().to(self.device), {k: v[None] for k, v in it.cond.items()})
            losses.append(float(fixed_noise_loss(self.transformer, b, sigmas, train.guidance, seed=i,
                                                 max_rows=train.batch_size)))
        return sum(losses) / len(losses)

    # ------------------------------------------------------------ optimiser

    def configure_optimizers(self):
        train = self.cfg.train
        params = [p for p in self.transformer.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=train.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: self.lr_factor(s))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def lr_factor(self, step: int) -> float:
        train = self.cfg.train
        return lr_factor(step, train.warmup_steps, self.plan.total_steps, train.schedule)

    def on_train_start(self) -> None:
        """On resume Lightning restores the optimiser with the old rate; a changed recipe must win."""
        train = self.cfg.train
        optimizer = self.optimizers(use_pl_optimizer=False)
        schedule = self.lr_schedulers()
        for group in optimizer.param_groups:
            group["initial_lr"], group["weight_decay"] = train.learning_rate, train.weight_decay
            group["lr"] = train.learning_rate * self.lr_factor(self.global_step)
        schedule.base_lrs = [train.learning_rate] * len(optimizer.param_groups)

    def on_before_optimizer_step(self, optimizer) -> None:
        self.log("train/lr", optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only the trainable (LoRA) weights: megabytes instead of the base model's 24 GB."""
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["lookalike"] = {"fingerprint": resume_fingerprint(self.cfg)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("lookalike", {}).get("fingerprint")
        if saved != resume_fingerprint(self.cfg):
            raise LookalikeError(
                "the checkpoint to resume was made with another model, dataset, LoRA shape or seed than this run's "
                "config.yaml says; resume with the config it was made with, or start a new run folder"
            )


def as_batch(batch: dict, prior: torch.Tensor | None = None) -> Batch:
    return Batch(batch["latents"], batch["cond"], prior, batch.get("class_cond"), batch.get("blank"))
