"""The EMA of the LoRA weights: the update by hand, per optimiser step only, and the swap that restores bit for bit."""

import pytest
import torch

from lookalike.train.ema import LoraEma, decay_at, ema_update


class Tiny(torch.nn.Module):
    """Stands in for the LightningModule: two trainable tensors and a frozen one."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        self.b = torch.nn.Parameter(torch.tensor([[0.5]]))
        self.frozen = torch.nn.Parameter(torch.tensor([9.0]), requires_grad=False)
        self.device = torch.device("cpu")


def test_decay_warms_up_then_holds():
    assert [round(decay_at(n, 0.99), 4) for n in (0, 1, 2, 8)] == [0.1, 0.1818, 0.25, 0.5]
    assert decay_at(10_000, 0.99) == 0.99 and decay_at(0, 0.05) == 0.05


def test_update_by_hand():
    shadow = {"w": torch.tensor([1.0, 0.0])}
    ema_update(shadow, {"w": torch.tensor([3.0, 10.0])}, decay=0.75)
    assert torch.equal(shadow["w"], torch.tensor([1.5, 2.5]))  # 0.75·old + 0.25·new


def test_the_callback_averages_after_each_optimiser_step_and_applies_then_restores():
    m = Tiny()
    ema = LoraEma(decay=0.9, accumulation=2)
    ema.on_train_start(None, m)
    assert set(ema.shadow) == {"a", "b"}  # the trainable weights only
    expected = {"a": m.a.detach().clone(), "b": m.b.detach().clone()}
    updates = 0
    for index in range(6):  # micro-batches 0..5 with accumulation 2: optimiser steps end at 1, 3, 5
        with torch.no_grad():
            m.a.add_(float(index + 1))
            m.b.mul_(-1.5)
        ema.on_train_batch_end(None, m, None, {"index": torch.tensor(index)}, index)
        if index % 2 == 1:
            d = min(0.9, (1 + updates) / (10 + updates))
            expected = {"a": d * expected["a"] + (1 - d) * m.a.detach(), "b": d * expected["b"] + (1 - d) * m.b.detach()}
            updates += 1
    assert ema.updates == 3
    for name in expected:
        torch.testing.assert_close(ema.shadow[name], expected[name], rtol=0, atol=1e-6)

    raw = {"a": m.a.detach().clone(), "b": m.b.detach().clone()}
    with ema.applied(m):
        assert torch.equal(m.a, ema.shadow["a"]) and torch.equal(m.b, ema.shadow["b"])
        assert m.frozen.item() == 9.0
    assert torch.equal(m.a, raw["a"]) and torch.equal(m.b, raw["b"])
    with pytest.raises(RuntimeError), ema.applied(m):  # restored even when the body fails
        raise RuntimeError
    assert torch.equal(m.a, raw["a"])

    resumed = LoraEma(decay=0.9, accumulation=2)
    resumed.load_state_dict(ema.state_dict())
    resumed.on_train_start(None, m)
    assert resumed.updates == 3 and torch.equal(resumed.shadow["a"], ema.shadow["a"])
