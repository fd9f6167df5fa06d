"""What happens between steps: checkpoints, previews, validation loss and the progress bar.

Cadences are counted in optimiser steps from the batch's micro-batch index, so they line up the
same way in an uninterrupted run and a resumed one. Files are written by rank 0 only.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

import lightning as L
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)


def steps_done(batch: dict, accumulation: int) -> int | None:
    """The optimiser step count after this micro-batch, or None if it did not end an optimiser step."""
    n = int(batch["index"]) + 1
    return n // accumulation if n % accumulation == 0 else None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a checkpoint to a temporary file, then rename: `kill -9` mid-save keeps the previous one."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        tmp = Path(f"{path}.tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)


class Checkpoints(L.Callback):
    """Every `every` steps (and at the end): the full resumable state, and a LoRA-only snapshot.

    resume/last.ckpt: LoRA weights, optimiser, scheduler, loop counters; the one before is kept as
    resume/previous.ckpt (a hard link made before the new one is written, so a kill at any moment leaves
    last.ckpt whole). checkpoints/step-000250.safetensors: the LoRA alone, kept for evaluation.
    If the loss turns NaN right after a save (or right after the state a resume started from), that
    state holds the weights that diverged: it is dropped and the previous one becomes last.ckpt again.
    """

    def __init__(self, every: int, total: int, accumulation: int, resume_path: Path, save_lora, resumed: bool = False):
        self.every, self.total, self.accumulation = every, total, accumulation
        self.resume_path, self.save_lora, self.resumed = resume_path, save_lora, resumed
        self.previous = resume_path.with_name("previous.ckpt")
        self.last_saved: int | None = None
        self.last_snapshot: Path | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        if self.resumed:  # last.ckpt holds the restored step, as if just saved
            self.last_saved = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = steps_done(batch, self.accumulation)
        if step is None or not (step % self.every == 0 or step == self.total):
            return
        self.save_state(trainer, step)
        if trainer.is_global_zero:
            self.last_snapshot = self.save_lora(step)

    def save_state(self, trainer, step: int) -> None:
        """resume/last.ckpt at optimiser step `step` (called on every rank: saving is collective)."""
        if self.last_saved == step:
            return  # the cadence has already saved this step
        if trainer.is_global_zero and self.resume_path.exists():
            _link_or_copy(self.resume_path, self.previous)
        trainer.save_checkpoint(self.resume_path)
        self.last_saved = step

    def on_exception(self, trainer, pl_module, exception) -> None:
        from lookalike.train.module import TrainingDiverged

        diverged_right_after_save = isinstance(exception, TrainingDiverged) and self.last_saved == trainer.global_step
        if not (diverged_right_after_save and trainer.is_global_zero and self.previous.exists()):
            return
        os.replace(self.previous, self.resume_path)
        if self.last_snapshot is not None:
            self.last_snapshot.unlink(missing_ok=True)
        log.warning("the checkpoint of step %d held the weights that diverged: removed; %s is the one before it",
                    self.last_saved, self.resume_path)


def _link_or_copy(source: Path, target: Path) -> None:
    """Make `target` hold what `source` holds now, replacing it in one rename; `source` stays."""
    import shutil

    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)  # the next save replaces `source` by a rename, so the link keeps the old bytes
    except OSError:  # a file system without hard links
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def checkpoint_step(path: Path) -> int | None:
    """The optimiser step a resumable checkpoint holds, or None if there is none (reads the counters only)."""
    import torch

    if not Path(path).exists():
        return None
    try:  # mmap: the tensors stay on disk, only the small dict of counters is read
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:  # not a zip-format file: read it whole
        state = torch.load(path, map_location="cpu", weights_only=False)
    return int(state["global_step"])


class GracefulStop(L.Callback):
    """Ctrl-C asks (`requested`); training stops at the next optimiser-step boundary with its state saved.

    Every rank takes part in the decision, so all stop at the same step whichever rank saw the signal;
    `stopped_at` is then the step saved in resume/last.ckpt. A request during the last step lets the run end.
    """

    def __init__(self, checkpoints: Checkpoints):
        self.checkpoints = checkpoints
        self.requested = False
        self.stopped_at: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = steps_done(batch, self.checkpoints.accumulation)
        if step is None or step >= self.checkpoints.total:
            return
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        self.checkpoints.save_state(trainer, step)
        self.stopped_at = step
        trainer.should_stop = True


class Previews(L.Callback):
    """Draw the preview prompts before training (epoch 0), every `every` epochs, and at the last step."""

    def __init__(self, make_sampler, every: int, steps_per_epoch: int, total: int, accumulation: int,
                 samples_dir: Path, gif_dir: Path, weights=contextlib.nullcontext):
        self.make_sampler, self.sampler, self.weights = make_sampler, None, weights  # weights(): which LoRA draws
        self.every, self.steps_per_epoch, self.total, self.accumulation = every, steps_per_epoch, total, accumulation
        self.samples_dir, self.gif_dir = samples_dir, gif_dir

    def _draw(self, trainer, epoch: int, step: int) -> None:
        from lookalike.train.previews import write_progress_gifs

        if not trainer.is_global_zero:
            return
        if self.sampler is None:
            self.sampler = self.make_sampler()
        with self.weights():
            self.sampler.draw(self.samples_dir / f"epoch-{epoch:04d}", epoch, step)
        write_progress_gifs(self.samples_dir, self.gif_dir)

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step == 0:
            self._draw(trainer, 0, 0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = steps_done(batch, self.accumulation)
        if step is None:
            return
        epoch, within = divmod(step, self.steps_per_epoch)
        if (within == 0 and epoch % self.every == 0) or step == self.total:
            self._draw(trainer, epoch if within == 0 else epoch + 1, step)


class EpochValidation(L.Callback):
    """At each epoch end: the fixed-σ, fixed-noise loss on held-out photos and on a few training photos."""

    TRAIN_SUBSET = 4

    def __init__(self, holdout, train_items, steps_per_epoch: int, accumulation: int):
        self.holdout, self.train_items = holdout, train_items
        self.steps_per_epoch, self.accumulation = steps_per_epoch, accumulation

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = steps_done(batch, self.accumulation)
        if step is None or step % self.steps_per_epoch:
            return
        fixed = pl_module.validation_losses(self.train_items, limit=self.TRAIN_SUBSET)
        pl_module.log("val/train_fixed_loss", fixed, rank_zero_only=True)
        if self.holdout:
            pl_module.log("val/loss", pl_module.validation_losses(self.holdout), rank_zero_only=True)


class StepBar(L.Callback):
    """One progress bar over optimiser steps: step, loss, epoch, speed and time left."""

    def __init__(self, total: int, steps_per_epoch: int, accumulation: int):
        self.total, self.steps_per_epoch, self.accumulation = total, steps_per_epoch, accumulation
        self.bar = None

    def on_train_start(self, trainer, pl_module) -> None:
        from tqdm.auto import tqdm

        if trainer.is_global_zero:
            self.bar = tqdm(total=self.total, initial=trainer.global_step, unit="step", dynamic_ncols=True,
                            desc="training")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = steps_done(batch, self.accumulation)
        if self.bar is None or step is None:
            return
        loss = trainer.callback_metrics.get("train/loss")
        self.bar.set_postfix(loss=f"{float(loss):.4f}" if loss is not None else "?",
                             epoch=step // self.steps_per_epoch, refresh=False)
        self.bar.update(step - self.bar.n)

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._close()


def lora_digest(transformer) -> str:
    """A short hash of the LoRA weights: equal on every rank after a correct DDP run."""
    from lookalike.train.lora import lora_state_dict

    h = hashlib.sha256()
    for k, v in sorted(lora_state_dict(transformer).items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class RankDigests(L.Callback):
    """At the end of training every rank hashes its LoRA; rank 0 keeps all hashes (they must agree)."""

    def __init__(self):
        self.digests: list[str] = []

    def on_train_end(self, trainer, pl_module) -> None:
        import torch

        mine = lora_digest(pl_module.transformer)
        value = torch.tensor([int(mine, 16) & (2**62 - 1)], dtype=torch.int64, device=pl_module.device)
        gathered = trainer.strategy.all_gather(value).reshape(-1).tolist()
        self.digests = [f"{int(v):016x}" for v in gathered]
