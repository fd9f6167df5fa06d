"""bench/gpu_train_step.py on the twins' shapes and the toy: the GPU sweep's own code, run on the CPU."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu_train_step.py"
MODELS = ["flux1-dev", "flux2-klein-4b", "flux2-klein-9b", "flux2-dev", "z-image", "qwen-image"]
KINDS = {("balanced", "every"), ("balanced", "half"), ("balanced", "off"), ("low", "every"), ("lowest", "every")}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_train_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("one_thread")


def _records(out: Path) -> tuple[dict, list[dict], dict | None, list[dict]]:
    records = [json.loads(line) for line in (out / "gpu_train_step.jsonl").read_text().splitlines()]
    overhead = [r["overhead"] for r in records if "overhead" in r]
    assert len(overhead) <= 1
    return (records[0]["meta"], [r["cache"] for r in records if "cache" in r], overhead[0] if overhead else None,
            [r for r in records if "case" in r])


def test_tiny_sweep_measures_every_family_mode_and_checkpointing_choice(bench, tmp_path):
    bench.main(["--tiny", "--out", str(tmp_path), "--warmup", "1", "--steps", "2", "--batches", "1",
                "--no-compile", "--cache-n", "1", "--no-overhead"])
    meta, cache, overhead, rows = _records(tmp_path)
    assert meta["peak_tflops"] > 0 and meta["size"] == "tiny (twins)" and meta["models"] == MODELS
    assert overhead is None
    assert [r["case"]["model"] for r in rows] == [m for m in MODELS for _ in KINDS]  # the default: every family
    for model in MODELS:
        mine = [r for r in rows if r["case"]["model"] == model]
        assert {(r["case"]["mode"], r["case"]["checkpointing"]) for r in mine} == KINDS
        for r in mine:
            assert r["status"] == "ok", r
            assert r["s_per_step"] > 0 and 0 < r["mfu"] and math.isfinite(r["loss"])
            assert r["peak_gb"] is None  # no CUDA: "n/a" in the table, not a made-up number
        weights = {r["case"]["mode"]: r["extra"]["weights_gb"] for r in mine}
        assert weights["lowest"] < weights["low"] < weights["balanced"], model
    # each family's own model ran: FLUX.2 dev has a guidance embedding, klein none; their losses differ
    losses = {m: next(r["loss"] for r in rows if r["case"]["model"] == m) for m in MODELS}
    assert losses["flux2-klein-4b"] == losses["flux2-klein-9b"]  # the same twin
    assert len({losses[m] for m in ("flux1-dev", "flux2-klein-4b", "flux2-dev", "z-image", "qwen-image")}) == 5
    assert [c["stage"] for c in cache] == ["VAE encode", "T5 encode"] and all(c["per_s"] > 0 for c in cache)
    table = (tmp_path / "gpu_train_step.md").read_text()
    for model in MODELS:
        assert table.count(f"\n| {model} | balanced | 1 |") == 3
        assert f"| {model} | lowest | 1 | every block | off |" in table
    assert "| VAE encode | 128² photo |" in table and "FLUX.1's parts only" in table


def test_the_twins_have_their_familys_latents_and_conditioning(bench):
    """FLUX.1: 16 channels at 1/8 size with T5 + pooled; FLUX.2: 4x the VAE's channels at 1/16, one text tensor."""
    b = bench.model_batch("flux1-dev", bench.TINY, 2, torch.device("cpu"), torch.float32)
    assert b.latents.shape == (2, 16, 16, 16) and set(b.cond) == {"t5", "pooled"}
    assert b.cond["t5"].shape == (2, 16, 32) and b.cond["pooled"].shape == (2, 32)
    b = bench.model_batch("flux2-dev", bench.TINY, 2, torch.device("cpu"), torch.float32)
    assert b.latents.shape == (2, 32, 8, 8) and set(b.cond) == {"text"} and b.cond["text"].shape == (2, 16, 48)
    b = bench.model_batch("flux2-klein-9b", bench.FULL, 1, torch.device("cpu"), torch.bfloat16)
    assert b.latents.shape == (1, 128, 64, 64) and b.cond["text"].shape == (1, 512, 12288)


def test_framework_overhead_times_lightning_and_the_bare_loop_on_the_same_work(bench, tmp_path):
    bench.main(["--tiny", "--overhead", "--out", str(tmp_path), "--overhead-batch", "2", "--overhead-warmup", "1",
                "--overhead-steps", "3"])
    meta, cache, o, rows = _records(tmp_path)
    assert rows == [] and cache == [] and "overhead_error" not in meta
    assert o["model"] == "toy" and o["device"] == "cpu" and o["batch"] == 2 and o["lora"] == "rank 32 on attention"
    assert len(o["lightning_s"]) == 3 and len(o["bare_s"]) == 6  # 3 timed steps; the bare loop before and after
    assert all(s > 0 for s in o["lightning_s"] + o["bare_s"])
    assert o["lightning_s_per_step"] == pytest.approx(sum(o["lightning_s"]) / 3)
    assert o["ratio"] == pytest.approx(o["lightning_s_per_step"] / o["bare_s_per_step"])
    assert 0 < o["ratio"] < math.inf and 0 < o["ratio_median"] < math.inf
    # Lightning ran 1 + 3 + 1 steps, each bare run 1 + 3; from the same start weights on the same batches with
    # the same σ and ε, every run computed the same losses: the ratio compares the same work
    assert len(o["lightning_losses"]) == 5 and len(o["bare_losses"]) == len(o["bare_again_losses"]) == 4
    assert all(math.isfinite(x) for x in o["lightning_losses"] + o["bare_losses"])
    assert o["max_loss_rel_diff"] < 1e-6
    assert o["lightning_losses"][:4] == pytest.approx(o["bare_losses"], rel=1e-6)
    assert len(set(o["bare_losses"])) == 4  # the weights changed between steps: the optimiser ran
    table = (tmp_path / "gpu_train_step.md").read_text()
    assert "| toy FLUX (lookalike:toy) | cpu | float32 | 2 | 64² / 64 |" in table and "| yes (equal) |" in table


def test_family_choice(bench):
    assert bench.parse_args([]).family == MODELS
    assert bench.parse_args(["--family", "all"]).family == MODELS
    args = bench.parse_args(["--family", "flux2-klein-9b,flux1-dev"])
    assert args.family == ["flux2-klein-9b", "flux1-dev"] and args.overhead_model == "flux2-klein-9b"
    assert args.overhead_batch == 1
    assert bench.parse_args(["--tiny"]).overhead_model == "toy"
    with pytest.raises(SystemExit):
        bench.parse_args(["--family", "flux3"])


def test_out_of_memory_is_a_row_and_the_sweep_goes_on(bench, tmp_path, monkeypatch):
    step = bench.Trainer.step

    def step_that_runs_out_at_batch_2(self, batch):
        if batch.latents.shape[0] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
        return step(self, batch)

    monkeypatch.setattr(bench.Trainer, "step", step_that_runs_out_at_batch_2)
    bench.main(["--tiny", "--out", str(tmp_path), "--warmup", "1", "--steps", "1", "--batches", "1", "2",
                "--modes", "balanced", "--no-compile", "--no-cache-stage", "--no-overhead",
                "--family", "flux2-klein-4b"])
    _, _, _, rows = _records(tmp_path)
    status = {(r["case"]["batch"], r["case"]["checkpointing"]): r["status"] for r in rows}
    assert status == {(b, c): "ok" if b == 1 else "OOM" for b in (1, 2) for c in ("every", "half", "off")}
    assert "| OOM |" in (tmp_path / "gpu_train_step.md").read_text()


def test_a_model_that_does_not_fit_marks_its_cases_and_the_next_one_runs(bench, tmp_path, monkeypatch):
    build = bench.build_transformer

    def dev_balanced_runs_out(model, size, device, dtype, mode, rank):
        if model == "flux2-dev" and mode == "balanced":
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return build(model, size, device, dtype, mode, rank)

    monkeypatch.setattr(bench, "build_transformer", dev_balanced_runs_out)
    bench.main(["--tiny", "--out", str(tmp_path), "--warmup", "0", "--steps", "1", "--batches", "1",
                "--modes", "balanced", "low", "--no-compile", "--no-cache-stage", "--no-overhead",
                "--family", "flux2-dev,flux2-klein-4b"])
    _, _, _, rows = _records(tmp_path)
    assert [(r["case"]["model"], r["case"]["mode"], r["status"]) for r in rows] == (
        [("flux2-dev", "balanced", "OOM building the model")] * 3 + [("flux2-dev", "low", "ok")]
        + [("flux2-klein-4b", "balanced", "ok")] * 3 + [("flux2-klein-4b", "low", "ok")])


def test_cases_that_do_not_fit_the_time_budget_are_skipped(bench, tmp_path):
    bench.main(["--tiny", "--out", str(tmp_path), "--budget-s", "0", "--no-cache-stage", "--no-overhead"])
    _, _, _, rows = _records(tmp_path)
    assert {r["case"]["model"] for r in rows} == set(MODELS)
    assert rows and all(r["status"].startswith("skipped (time budget") for r in rows)


def test_flop_model_gives_the_notes_164_6_tflop_per_1024_image(bench):
    """shared/notes/anchors-performance.md §3: 163.6 TFLOP for the frozen base, 164.6 with the rank-32 LoRA."""
    from lookalike.train.lora import add_lora

    with torch.device("meta"):
        transformer = bench.transformer_class("flux1-dev")(**bench.FLUX1_DEV)
        assert bench.model_flops(transformer, 4096, 512) / 1e12 == pytest.approx(163.6, abs=0.05)
        add_lora(transformer, 32, 16.0, "seed")
    assert bench.model_flops(transformer, 4096, 512) / 1e12 == pytest.approx(164.6, abs=0.05)


@pytest.mark.parametrize("model, params_b, lora_modules", [
    ("flux2-klein-4b", 3.876, 60), ("flux2-klein-9b", 9.079, 80), ("flux2-dev", 32.223, 128)])
def test_flux2_configs_and_their_flops(bench, model, params_b, lora_modules):
    """The published configs give BFL's sizes ("4B", "9B", "32B") and, with the seed targets, the diffusers
    FLUX.2 scripts' LoRA module counts. FLOPs: every block stream (double: image and text; single: joint)
    holds 13·d² weights with MLP ratio 3 (attention 4d², MLP 9d²), so the frozen base costs 2·2·13·d² per
    token per block and attention 3·4·n·d per token per block: (D + S)·n·d·(52·d + 12·n) per image."""
    from lookalike.train.lora import add_lora

    config = bench.MODELS[model].config
    with torch.device("meta"):
        transformer = bench.transformer_class(model)(**config)
        assert sum(p.numel() for p in transformer.parameters()) / 1e9 == pytest.approx(params_b, abs=0.001)
        d, n = config["num_attention_heads"] * config["attention_head_dim"], 4096 + 512
        blocks = config["num_layers"] + config["num_single_layers"]
        assert bench.model_flops(transformer, 4096, 512) == pytest.approx(blocks * n * d * (52 * d + 12 * n), rel=1e-9)
        lora = add_lora(transformer, 32, 32.0, "seed")
    assert len(lora.modules) == lora_modules
    assert any(m.startswith("single_transformer_blocks.") and m.endswith("attn.to_out") for m in lora.modules)


def test_z_image_and_qwen_image_configs_and_their_flops(bench):
    """The published configs give the published sizes (Z-Image "6B", Qwen-Image "20B"), and the seed targets
    one LoRA module per attention Linear of every block. FLOPs per 1024² image (n = 4096 + 512 tokens), frozen
    base 2x its forward, attention 3 · 4·n²·d per block:
    Qwen-Image, 60 double blocks of 12·d² per stream (attention 4d², MLP 8d²): 60·n·d·(48·d + 12·n);
    Z-Image, blocks of 4d² + 3·d·h (SwiGLU, h = 8d/3): 4·(4d² + 3dh) per token, on n tokens in the 30 main
    layers, the image's in the 2 noise refiners and the caption's in the 2 context refiners."""
    from lookalike.train.lora import add_lora

    img, txt = 4096, 512
    n = img + txt
    with torch.device("meta"):
        qwen = bench.transformer_class("qwen-image")(**bench.QWEN_IMAGE)
        z = bench.transformer_class("z-image")(**bench.Z_IMAGE)
    assert sum(p.numel() for p in qwen.parameters()) / 1e9 == pytest.approx(20.430, abs=0.001)
    assert sum(p.numel() for p in z.parameters()) / 1e9 == pytest.approx(6.155, abs=0.001)
    d = 3072
    assert bench.model_flops(qwen, img, txt) == pytest.approx(60 * n * d * (48 * d + 12 * n), rel=1e-9)
    d, h = 3840, 10240
    per_token = 4 * (4 * d * d + 3 * d * h)
    blocks = [(30, n), (2, img), (2, txt)]
    assert bench.model_flops(z, img, txt) == pytest.approx(
        sum(k * (t * per_token + 12 * t * t * d) for k, t in blocks), rel=1e-9)
    assert len(add_lora(qwen, 32, 32.0, "seed").modules) == 4 * 60
    assert len(add_lora(z, 32, 32.0, "seed").modules) == 4 * (30 + 2 + 2)


@pytest.mark.parametrize("model", ["flux1-dev", "flux2-klein-4b"])
def test_selective_checkpointing_gives_the_same_lora_gradients(bench, model):
    """every block, every second block and none: the same loss and LoRA gradients, fewer blocks recomputed."""
    from lookalike.train.step import training_loss

    device = torch.device("cpu")
    transformer = bench.build_transformer(model, bench.TINY, device, torch.float32, "balanced", rank=4)
    with torch.no_grad():  # B starts at 0, which would make every gradient but B's zero
        for name, p in transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    batch = bench.model_batch(model, bench.TINY, 2, device, torch.float32)
    trainer = bench.Trainer(transformer, device, torch.float32)
    grads, counts = [], []
    for policy in ("off", "half", "every"):
        counts.append(bench.set_checkpointing(transformer, policy))
        loss, _ = training_loss(transformer=transformer, batch=batch, train=trainer.train,
                                generator=torch.Generator().manual_seed(0))
        loss.backward()
        grads.append([p.grad.clone() for p in trainer.params])
        trainer.optimizer.zero_grad(set_to_none=True)
    assert counts == [0, 2, 4]
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b)


def test_materialise_fills_a_meta_built_model_on_the_device(bench):
    cls, config = bench.transformer_class("flux1-dev"), bench.TINY.config("flux1-dev")
    model = bench.materialise(lambda: cls(**config), torch.device("cpu"), torch.bfloat16)
    params = dict(model.named_parameters())
    assert all(p.device.type == "cpu" and p.dtype == torch.bfloat16 for p in params.values())
    w = params["transformer_blocks.0.attn.to_q.weight"].float()
    assert abs(float(w.detach().std()) - 0.02) < 0.004
    assert float(params["transformer_blocks.0.attn.to_q.bias"].detach().abs().max()) == 0
    assert float(params["transformer_blocks.0.attn.norm_q.weight"].detach().float().min()) == 1.0


@pytest.mark.slow
def test_a_compiled_case_runs_and_is_undone(bench):
    """torch.compile of every block (here FLUX.2's), through dynamo and AOTAutograd (inductor's C++ build is
    left to the GPU run), then back to eager."""
    device, model = torch.device("cpu"), "flux2-dev"
    args = bench.parse_args(["--tiny", "--warmup", "1", "--steps", "1", "--compile-backend", "aot_eager"])
    trainer = bench.Trainer(bench.build_transformer(model, bench.TINY, device, torch.float32, "lowest", rank=4),
                            device, torch.float32)
    row = bench.run_case(trainer, bench.Case(model, "lowest", 1, "half", True), bench.TINY, torch.float32, args, 1.0)
    assert row.status == "ok" and row.s_per_step > 0 and math.isfinite(row.loss)
    assert all(b._compiled_call_impl is None for b in bench.blocks_of(trainer.transformer))
