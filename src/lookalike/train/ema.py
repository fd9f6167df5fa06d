"""An exponential moving average (EMA) of the LoRA weights, kept beside training (`train.ema_decay`).

Along one run at a constant learning rate the toy world's likeness moved by ±0.1 from one checkpoint to the
next: the weights follow the last few batches. The average of the weights over the last ~1/(1-decay)
optimiser steps moves less. With `train.ema_decay` > 0 the snapshots, previews and the exported LoRA are
the averaged weights; the last raw weights are exported too (RUN/train/lora-raw.safetensors). The average
is part of the resumable state, so a resumed run ends with the same average as an uninterrupted one.
"""

from __future__ import annotations

from contextlib import contextmanager

import lightning as L
import torch

from lookalike.train.callbacks import steps_done


def decay_at(updates: int, decay: float) -> float:
    """The decay of the `updates`-th update (from 0): min(decay, (1 + n) / (10 + n)), so the first steps
    do not leave the average stuck near the initial weights (0.1, 0.18, 0.25, ... up to `decay`)."""
    return min(decay, (1 + updates) / (10 + updates))


def ema_update(shadow: dict, params: dict, decay: float) -> None:
    """shadow <- decay·shadow + (1 - decay)·params, in place, for every name of `shadow`."""
    with torch.no_grad():
        for name, avg in shadow.items():
            avg.lerp_(params[name].detach().to(avg.dtype), 1.0 - decay)


class LoraEma(L.Callback):
    """Updates the average after every optimiser step (before the checkpoints and previews of that step)."""

    def __init__(self, decay: float, accumulation: int):
        self.decay, self.accumulation = decay, accumulation
        self.shadow: dict[str, torch.Tensor] | None = None
        self.updates = 0

    @staticmethod
    def _trainable(pl_module) -> dict:
        return {n: p for n, p in pl_module.named_parameters() if p.requires_grad}

    def on_train_start(self, trainer, pl_module) -> None:
        if self.shadow is None:  # a fresh run (a resume has restored it from the checkpoint)
            self.shadow = {n: p.detach().float().clone() for n, p in self._trainable(pl_module).items()}
        else:
            self.shadow = {n: t.to(pl_module.device) for n, t in self.shadow.items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if steps_done(batch, self.accumulation) is None:
            return
        ema_update(self.shadow, self._trainable(pl_module), decay_at(self.updates, self.decay))
        self.updates += 1

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state_dict: dict) -> None:
        self.shadow, self.updates = state_dict["shadow"], int(state_dict["updates"])

    @contextmanager
    def applied(self, pl_module):
        """Inside: the module's LoRA weights are the average; after: the raw weights again, bit for bit."""
        params = self._trainable(pl_module)
        raw = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(raw[n])
