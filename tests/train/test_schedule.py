"""The learning-rate schedule: warm-up, then constant (the write-up) or a decay to 0 at the last step."""

import math
from types import SimpleNamespace

import pytest
import torch

from lookalike.config import load_config
from lookalike.train.module import LoraModule, lr_factor


def test_warmup_then_constant():
    assert [lr_factor(s, 4, 100) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(99, 4, 100) == 1.0 and lr_factor(0, 0, 100) == 1.0


@pytest.mark.parametrize("schedule, middle", [("cosine", 0.5), ("linear", 0.5)])
def test_decays_from_one_after_warmup_to_zero_at_the_end(schedule, middle):
    warmup, total = 10, 110
    assert lr_factor(warmup, warmup, total, schedule) == 1.0
    assert lr_factor(warmup + 50, warmup, total, schedule) == pytest.approx(middle)
    assert lr_factor(total, warmup, total, schedule) == pytest.approx(0.0, abs=1e-12)
    values = [lr_factor(s, warmup, total, schedule) for s in range(warmup, total)]
    assert all(a > b for a, b in zip(values, values[1:]))  # strictly decreasing
    quarter = lr_factor(warmup + 25, warmup, total, schedule)
    assert quarter == pytest.approx((1 + math.cos(math.pi / 4)) / 2 if schedule == "cosine" else 0.75)


def test_the_optimiser_follows_the_configured_schedule():
    cfg = load_config(preset="tiny", overrides=["train.schedule=cosine", "train.warmup_steps=2",
                                                "train.learning_rate=0.01"])
    weight = torch.nn.Linear(2, 2)
    module = LoraModule(weight, cfg, SimpleNamespace(total_steps=12), make_loader=None)
    conf = module.configure_optimizers()
    optimizer, schedule = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    seen = []
    for _ in range(12):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert seen == pytest.approx([0.01 * lr_factor(s, 2, 12, "cosine") for s in range(12)])
    assert seen[0] == pytest.approx(0.005) and seen[2] == pytest.approx(0.01) and seen[-1] < 0.001


def test_unknown_schedule_is_refused_with_the_choices():
    from lookalike.errors import ConfigError

    with pytest.raises(ConfigError, match="train.schedule") as err:
        load_config(preset="tiny", overrides=["train.schedule=exponential"])
    assert "cosine" in str(err.value)


