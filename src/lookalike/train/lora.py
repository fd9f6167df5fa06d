"""LoRA adapters on the frozen transformer, through peft.

W' = W + (alpha / rank)·B·A on every targeted Linear; W stays frozen (bf16 on a GPU), A and B are
trained in fp32 so that small updates are not rounded away.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

from lookalike.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraSummary:
    """What `add_lora` did: the peft config, the wrapped module names and the trainable count."""

    config: "peft.LoraConfig"  # noqa: F821
    modules: list[str]
    trainable: int
    total: int


def add_lora(transformer, rank: int, alpha: float, targets: str | Sequence[str], seed: int = 0) -> LoraSummary:
    """Freeze `transformer`, wrap the `targets` Linears with a LoRA, cast the LoRA weights to fp32.

    `targets`: module-name suffixes, or the name of one of the model family's target sets (`seed`, ...).

    A is initialised from `seed` (peft's Kaiming init), B at zero, so the model starts unchanged.
    Raises ConfigError if no module matches `lora.targets`.
    """
    import torch
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    from lookalike.models.family import family_of_module

    family = family_of_module(transformer)
    targets = expand_wildcards(transformer, family.targets(targets))
    transformer.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            transformer.add_adapter(config)
        except ValueError as e:
            raise ConfigError(
                f"lora.targets = {list(targets)}: no such module in the {family.title} transformer ({e}). "
                f"Use module names such as {', '.join(family.lora_targets['seed'])}, or a target set: "
                f"{', '.join(family.lora_targets)}"
            ) from None
    cast_training_params(transformer, torch.float32)
    modules = sorted({n.rsplit(".lora_", 1)[0] for n, p in transformer.named_parameters() if p.requires_grad})
    trainable = sum(p.numel() for p in transformer.parameters() if p.requires_grad)
    total = sum(p.numel() for p in transformer.parameters())
    log.debug("LoRA rank %d, alpha %g on %d modules: %s trainable parameters of %s (%.3f%%)",
             rank, alpha, len(modules), f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return LoraSummary(config, modules, trainable, total)


def expand_wildcards(transformer, targets: Sequence[str]) -> list[str]:
    """Entries with a `*` (e.g. `single_transformer_blocks.*.attn.to_out`) -> the model's module names they
    match, in order; other entries stay suffixes for peft. A pattern that matches nothing is dropped
    (peft then reports the whole list if nothing at all matches)."""
    from fnmatch import fnmatchcase

    if not any("*" in t for t in targets):
        return list(targets)
    names = [n for n, _ in transformer.named_modules()]
    out: list[str] = []
    for t in targets:
        found = [n for n in names if fnmatchcase(n, t) or fnmatchcase(n, f"*.{t}")] if "*" in t else [t]
        out += [n for n in found if n not in out]
    return out


def lora_state_dict(transformer) -> dict:
    """The trained LoRA weights in PEFT naming (`...to_q.lora_A.weight`), without the `transformer.` prefix."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(transformer)
