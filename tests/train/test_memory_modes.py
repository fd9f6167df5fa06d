"""Memory modes: int8 and NF4 bases on the twin train the same fp32 LoRA to nearly the same losses."""

import pytest
import torch

from lookalike.config import TrainConfig
from lookalike.models.quantize import (
    QuantizedLinear,
    apply_memory_mode,
    block_linears,
    dequantize_int8,
    dequantize_nf4,
    nf4_codebook,
    quantize_int8,
    quantize_nf4,
    weight_bytes,
)
from lookalike.train.lora import add_lora
from lookalike.train.step import Batch, predict_velocity, training_loss

SEED_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_nf4_codebook_is_qloras_normal_float4():
    # the NF4 table of QLoRA (Dettmers et al. 2023, appendix E), rounded to 4 places
    published = [-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0,
                 0.0796, 0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0]
    torch.testing.assert_close(nf4_codebook(), torch.tensor(published), atol=1e-4, rtol=0)


def test_round_trips_store_fewer_bytes_with_bounded_error():
    w = torch.randn(96, 128, generator=torch.Generator().manual_seed(0))
    q8, s8 = quantize_int8(w)
    q4, s4 = quantize_nf4(w)
    assert (q8.dtype, q8.shape, s8.shape) == (torch.int8, w.shape, (96, 1))
    assert (q4.dtype, q4.numel(), s4.numel()) == (torch.uint8, w.numel() // 2, w.numel() // 64)
    err8 = (dequantize_int8(q8, s8, torch.float32) - w).norm() / w.norm()
    err4 = (dequantize_nf4(q4, s4, w.shape, torch.float32) - w).norm() / w.norm()
    assert float(err8) < 0.01 and 0.05 < float(err4) < 0.12, (err8, err4)  # NF4 on Gaussian weights: ~9%
    # each weight went to its nearest level: the error is at most half the widest gap times the block's absmax
    worst = (dequantize_nf4(q4, s4, w.shape, torch.float32) - w).abs().max()
    assert float(worst) <= 0.5 * 0.2770 * float(w.abs().max())


@pytest.mark.parametrize("mode", ["low", "lowest"])
def test_quantized_linear_backward_saves_codes_not_the_weight(mode):
    """dx equals the gradient through the de-quantised weight, and autograd keeps no float copy of W."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 64)
    layer = QuantizedLinear(linear, mode)
    x = torch.randn(3, 128, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    y.square().sum().backward()
    x2 = x.detach().clone().requires_grad_()
    torch.nn.functional.linear(x2, layer.dequantized(torch.float32), linear.bias).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    assert not any(t.is_floating_point() and t.numel() >= 128 * 64 for t in saved), [t.shape for t in saved]


@pytest.mark.parametrize("mode", ["low", "lowest"])
def test_quantized_linear_under_autocast_computes_in_the_autocast_dtype(mode):
    """Lightning's bf16-mixed: an fp32 input (as after an autocast LayerNorm) gives a bf16 output like
    nn.Linear's, and an fp32 gradient for the fp32 input."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 64)
    layer = QuantizedLinear(linear, mode)
    x = torch.randn(3, 128, requires_grad=True)
    with torch.autocast("cpu", torch.bfloat16):
        y, ref = layer(x), torch.nn.functional.linear(x, layer.dequantized(torch.float32), linear.bias)
    assert y.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(y, ref)
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32


def _train(twin_dir, mode: str, steps: int = 4):
    """LoRA training on the twin's transformer in `mode`, with fixed data and noise.

    Returns (transformer, MemoryReport, the untrained velocity prediction, the per-step losses)."""
    from lookalike.models.source import load_transformer, resolve_source

    transformer = load_transformer(resolve_source(str(twin_dir)), torch.float32)
    report = apply_memory_mode(transformer, mode)
    add_lora(transformer, 4, 4.0, SEED_TARGETS, seed=0)
    transformer.train()
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.randn(2, 16, 8, 8, generator=g),
                  {"t5": torch.randn(2, 16, 32, generator=g), "pooled": torch.randn(2, 32, generator=g)})
    with torch.no_grad():  # the untrained model's velocity at fixed noise levels: [2, 16, 8, 8]
        noisy = torch.randn(2, 16, 8, 8, generator=g)
        first = predict_velocity(transformer, noisy, torch.tensor([0.3, 0.8]), batch, 1.0)
    losses = []
    for i in range(steps):
        loss, _ = training_loss(transformer=transformer, batch=batch, train=TrainConfig(),
                                generator=torch.Generator().manual_seed(i))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return transformer, report, first, losses


@pytest.fixture(scope="module")
def fp32_run(twin_dir):
    return _train(twin_dir, "balanced")


# measured on the twin: prediction error 0.07% (int8) and 1.6% (NF4); loss error at most 1e-5 and 1.2e-3
@pytest.mark.parametrize("mode, max_prediction_error, max_loss_error", [("low", 0.005, 1e-3), ("lowest", 0.05, 1e-2)])
def test_low_modes_train_the_fp32_lora_to_the_same_losses(twin_dir, fp32_run, mode, max_prediction_error,
                                                          max_loss_error):
    base, base_report, base_first, base_losses = fp32_run
    transformer, report, first, losses = _train(twin_dir, mode)
    prediction_error = float((first - base_first).norm() / base_first.norm())
    assert 0 < prediction_error < max_prediction_error
    # the base really is quantised: every block Linear, and the bytes went down
    assert report.quantized == len(block_linears(base)) > 0 and not report.skipped
    assert not block_linears(transformer), "a block Linear was left in full precision"
    assert sum(type(m) is QuantizedLinear for m in transformer.modules()) == report.quantized
    assert all(not p.requires_grad for n, p in transformer.named_parameters() if "lora_" not in n)
    assert report.weight_bytes < (0.5 if mode == "low" else 0.35) * base_report.weight_bytes
    # the LoRA is fp32, trainable, outside the quantised matmul, and it moved
    lora = {n: p for n, p in transformer.named_parameters() if "lora_" in n}
    assert lora and all(p.dtype == torch.float32 and p.requires_grad for p in lora.values())
    assert type(transformer.transformer_blocks[0].attn.to_q.base_layer) is QuantizedLinear
    assert any(float(p.detach().abs().sum()) > 0 for n, p in lora.items() if "lora_B" in n)
    # the losses: within a relative `max_loss_error` of the fp32 base at every step, but not identical to it
    rel = [abs(a - b) / b for a, b in zip(losses, base_losses)]
    assert 0 < max(rel) < max_loss_error, (losses, base_losses)


def test_balanced_mode_changes_nothing(twin_dir):
    from lookalike.models.source import load_transformer, resolve_source

    transformer = load_transformer(resolve_source(str(twin_dir)), torch.float32)
    before = weight_bytes(transformer)
    report = apply_memory_mode(transformer, "balanced")
    assert (report.quantized, report.weight_bytes) == (0, before)
    assert not any(isinstance(m, QuantizedLinear) for m in transformer.modules())


def test_memory_setting_is_checked_by_the_config():
    from lookalike.config import load_config
    from lookalike.errors import ConfigError

    assert load_config(overrides=["train.memory=lowest"]).train.memory == "lowest"
    assert TrainConfig().memory == "balanced"
    with pytest.raises(ConfigError, match="train.memory"):
        load_config(overrides=["train.memory=tiny"])


@pytest.mark.slow
def test_lookalike_train_with_an_nf4_base_exports_an_fp32_lora(tmp_path):
    """The whole train stage (Lightning, checkpoints, previews, both exports) on an NF4 base."""
    from safetensors.torch import load_file

    from helpers import make_photos, run_cli

    photos = make_photos(tmp_path / "photos", 4)
    out = run_cli(["train", tmp_path / "run", "--photos", photos, "--preset", "tiny", "--set", "train.epochs=2",
                   "--set", "train.memory=lowest", "--set", "train.sample_every=2"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "memory mode lowest" in out.stderr and "40 block Linears quantised" in out.stderr
    lora = load_file(str(tmp_path / "run" / "train" / "lora.safetensors"))
    assert lora and all(v.dtype == torch.float32 for v in lora.values())
    assert any(float(v.abs().sum()) > 0 for k, v in lora.items() if "lora_B" in k)  # it trained
    assert (tmp_path / "run" / "train" / "lora-kohya.safetensors").exists()
