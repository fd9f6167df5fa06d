"""Batches over the cache: bucketed, seeded, resumable at any step, split across ranks.

Every random choice is a function of (seed, epoch) or (seed, micro-batch index): which photos share a
batch, their order, caption dropout, and (in the training step) σ and ε. So a run resumed at step k
replays exactly what an uninterrupted run would have done from step k; there is no RNG state to lose.

Micro-batch m of rank r belongs to epoch m // per_epoch; each epoch shuffles the photos within their
bucket (same latent size, so they stack), cuts batches, shuffles the batches, deals them out to ranks,
and pads the last round by wrapping so every rank runs the same number of steps.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass

import torch

from lookalike.models.family import cond_stack


def epoch_batches(sizes: list[tuple[int, int]], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches of item indices: same-size items together, shuffled by (seed, epoch).

    A bucket with fewer items than `batch_size` makes a smaller batch rather than dropping photos.
    """
    rng = random.Random(f"{seed}:epoch:{epoch}")
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, size in enumerate(sizes):
        groups[tuple(size)].append(i)
    batches = []
    for size in sorted(groups):
        idx = groups[size]
        rng.shuffle(idx)
        batches += [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    rng.shuffle(batches)
    return batches


@dataclass(frozen=True)
class Plan:
    """Cadences derived from the data and the settings, stated in the first log lines."""

    photos: int
    batches_per_epoch: int  # over all ranks
    world_size: int
    accumulation: int
    epochs: int
    max_steps: int | None

    @property
    def micro_batches_per_epoch(self) -> int:
        """Per rank, padded to whole optimiser steps."""
        per_rank = math.ceil(self.batches_per_epoch / self.world_size)
        return math.ceil(per_rank / self.accumulation) * self.accumulation

    @property
    def steps_per_epoch(self) -> int:
        return self.micro_batches_per_epoch // self.accumulation

    @property
    def total_steps(self) -> int:
        steps = self.epochs * self.steps_per_epoch
        return min(steps, self.max_steps) if self.max_steps else steps


def make_plan(sizes, cfg, world_size: int = 1) -> Plan:
    return Plan(
        photos=len(sizes),
        batches_per_epoch=len(epoch_batches(sizes, cfg.train.batch_size, cfg.runtime.seed, 0)),
        world_size=world_size,
        accumulation=cfg.train.gradient_accumulation,
        epochs=cfg.train.epochs,
        max_steps=cfg.train.max_steps,
    )


def rank_batches(batches: list[list[int]], rank: int, world_size: int, count: int) -> list[list[int]]:
    """The `count` batches rank `rank` runs this epoch: every world_size-th one, wrapping around to pad."""
    return [batches[(rank + world_size * j) % len(batches)] for j in range(count)]


class BatchStream(torch.utils.data.IterableDataset):
    """An endless stream of batch dicts starting at micro-batch `start`; the trainer stops at max_steps.

    Each dict: latents [B, C, h, w], cond (the family's text conditioning, {name: [B, ...]}), grounding
    [B] bool (photos of other people), index (micro-batch number), epoch; class_cond (each item's class
    caption, when the items carry one) and, with `blank`, the empty caption once per item (for the
    preservation losses). With probability `caption_dropout` an item's text is replaced by the cached
    empty caption.
    """

    def __init__(self, items, empty, plan: Plan, batch_size: int, seed: int, rank: int = 0,
                 start: int = 0, caption_dropout: float = 0.0, blank: bool = False):
        self.items, self.empty, self.plan = items, empty, plan
        self.batch_size, self.seed, self.rank, self.start = batch_size, seed, rank, start
        self.caption_dropout, self.blank = caption_dropout, blank
        self.sizes = [tuple(it.latent.shape[-2:]) for it in items]
        self._epoch: tuple[int, list[list[int]]] | None = None  # (epoch, this rank's batches)

    def _rank_batches(self, epoch: int) -> list[list[int]]:
        if self._epoch is None or self._epoch[0] != epoch:
            batches = epoch_batches(self.sizes, self.batch_size, self.seed, epoch)
            self._epoch = epoch, rank_batches(batches, self.rank, self.plan.world_size,
                                              self.plan.micro_batches_per_epoch)
        return self._epoch[1]

    def batch(self, m: int) -> dict:
        """Micro-batch number m of this rank."""
        epoch, j = divmod(m, self.plan.micro_batches_per_epoch)
        idx = self._rank_batches(epoch)[j]
        drop = random.Random(f"{self.seed}:dropout:{self.rank}:{m}")
        texts = [self.empty if drop.random() < self.caption_dropout else self.items[i].cond for i in idx]
        out = {
            "latents": torch.stack([self.items[i].latent for i in idx]).float(),
            "cond": cond_stack(texts),
            "grounding": torch.tensor([self.items[i].grounding for i in idx], dtype=torch.bool),
            "index": torch.tensor(m),
            "epoch": torch.tensor(epoch),
        }
        if all(getattr(self.items[i], "class_cond", None) is not None for i in idx):  # items without one: none
            out["class_cond"] = cond_stack([self.items[i].class_cond for i in idx])
        if self.blank:
            out["blank"] = cond_stack([self.empty] * len(idx))
        return out

    def __iter__(self):
        m = self.start
        while True:
            yield self.batch(m)
            m += 1
