"""bench/gpu_train_step.py on the tiny twin's shapes: the GPU sweep's own code, run on the CPU."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu_train_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_train_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(out: Path) -> tuple[dict, list[dict], list[dict]]:
    records = [json.loads(line) for line in (out / "gpu_train_step.jsonl").read_text().splitlines()]
    return records[0]["meta"], [r["cache"] for r in records if "cache" in r], [r for r in records if "case" in r]


def test_tiny_sweep_measures_every_mode_and_checkpointing_choice(bench, tmp_path):
    bench.main(["--tiny", "--out", str(tmp_path), "--warmup", "1", "--steps", "2", "--batches", "1",
                "--no-compile", "--cache-n", "1"])
    meta, cache, rows = _rows(tmp_path)
    assert meta["peak_tflops"] > 0 and meta["size"] == "tiny (twin)"
    kinds = {(r["case"]["mode"], r["case"]["checkpointing"]) for r in rows}
    assert kinds == {("balanced", "every"), ("balanced", "half"), ("balanced", "off"), ("low", "every"),
                     ("lowest", "every")}
    for r in rows:
        assert r["status"] == "ok", r
        assert r["s_per_step"] > 0 and 0 < r["mfu"] and math.isfinite(r["loss"])
        assert r["peak_gb"] is None  # no CUDA: "n/a" in the table, not a made-up number
    weights = {r["case"]["mode"]: r["extra"]["weights_gb"] for r in rows}
    assert weights["lowest"] < weights["low"] < weights["balanced"]
    assert [c["stage"] for c in cache] == ["VAE encode", "T5 encode"] and all(c["per_s"] > 0 for c in cache)
    table = (tmp_path / "gpu_train_step.md").read_text()
    assert table.count("\n| balanced | 1 |") == 3 and "| lowest | 1 | every block | off |" in table
    assert "| VAE encode | 128² photo |" in table


def test_out_of_memory_is_a_row_and_the_sweep_goes_on(bench, tmp_path, monkeypatch):
    step = bench.Trainer.step

    def step_that_runs_out_at_batch_2(self, batch):
        if batch.latents.shape[0] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
        return step(self, batch)

    monkeypatch.setattr(bench.Trainer, "step", step_that_runs_out_at_batch_2)
    bench.main(["--tiny", "--out", str(tmp_path), "--warmup", "1", "--steps", "1", "--batches", "1", "2",
                "--modes", "balanced", "--no-compile", "--no-cache-stage"])
    _, _, rows = _rows(tmp_path)
    status = {(r["case"]["batch"], r["case"]["checkpointing"]): r["status"] for r in rows}
    assert status == {(b, c): "ok" if b == 1 else "OOM" for b in (1, 2) for c in ("every", "half", "off")}
    assert "| OOM |" in (tmp_path / "gpu_train_step.md").read_text()


def test_a_model_that_does_not_fit_marks_its_cases_and_the_next_mode_runs(bench, tmp_path, monkeypatch):
    build = bench.build_transformer

    def balanced_runs_out(size, device, dtype, mode, rank):
        if mode == "balanced":
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return build(size, device, dtype, mode, rank)

    monkeypatch.setattr(bench, "build_transformer", balanced_runs_out)
    bench.main(["--tiny", "--out", str(tmp_path), "--warmup", "0", "--steps", "1", "--batches", "1",
                "--modes", "balanced", "low", "--no-compile", "--no-cache-stage"])
    _, _, rows = _rows(tmp_path)
    assert [(r["case"]["mode"], r["status"]) for r in rows] == [("balanced", "OOM building the model")] * 3 + [
        ("low", "ok")]


def test_cases_that_do_not_fit_the_time_budget_are_skipped(bench, tmp_path):
    bench.main(["--tiny", "--out", str(tmp_path), "--budget-s", "0", "--no-cache-stage"])
    _, _, rows = _rows(tmp_path)
    assert rows and all(r["status"].startswith("skipped (time budget") for r in rows)


def test_flop_model_gives_the_notes_164_6_tflop_per_1024_image(bench):
    """shared/notes/anchors-performance.md §3: 163.6 TFLOP for the frozen base, 164.6 with the rank-32 LoRA."""
    from diffusers import FluxTransformer2DModel

    from lookalike.train.lora import add_lora

    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**bench.FLUX_DEV)
        assert bench.model_flops(transformer, 4096, 512) / 1e12 == pytest.approx(163.6, abs=0.05)
        add_lora(transformer, 32, 16.0, ["to_q", "to_k", "to_v", "to_out.0"])
    assert bench.model_flops(transformer, 4096, 512) / 1e12 == pytest.approx(164.6, abs=0.05)


def test_selective_checkpointing_gives_the_same_lora_gradients(bench):
    """every block, every second block and none: the same loss and LoRA gradients, fewer blocks recomputed."""
    device = torch.device("cpu")
    transformer = bench.build_transformer(bench.TINY, device, torch.float32, "balanced", rank=4)
    with torch.no_grad():  # B starts at 0, which would make every gradient but B's zero
        for name, p in transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    batch = bench.random_batch(bench.TINY, 2, device, torch.float32)
    trainer = bench.Trainer(transformer, device, torch.float32)
    grads, counts = [], []
    for policy in ("off", "half", "every"):
        counts.append(bench.set_checkpointing(transformer, policy))
        from lookalike.train.step import training_loss

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
    from diffusers import FluxTransformer2DModel

    model = bench.materialise(lambda: FluxTransformer2DModel(**bench.TINY_FLUX), torch.device("cpu"), torch.bfloat16)
    params = dict(model.named_parameters())
    assert all(p.device.type == "cpu" and p.dtype == torch.bfloat16 for p in params.values())
    w = params["transformer_blocks.0.attn.to_q.weight"].float()
    assert abs(float(w.detach().std()) - 0.02) < 0.004
    assert float(params["transformer_blocks.0.attn.to_q.bias"].detach().abs().max()) == 0
    assert float(params["transformer_blocks.0.attn.norm_q.weight"].detach().float().min()) == 1.0


@pytest.mark.slow
def test_a_compiled_case_runs_and_is_undone(bench):
    """torch.compile of the repeated blocks, through dynamo and AOTAutograd (inductor's C++ build is left to
    the GPU run), then back to eager."""
    device = torch.device("cpu")
    args = bench.parse_args(["--tiny", "--warmup", "1", "--steps", "1", "--compile-backend", "aot_eager"])
    trainer = bench.Trainer(bench.build_transformer(bench.TINY, device, torch.float32, "lowest", rank=4),
                            device, torch.float32)
    row = bench.run_case(trainer, bench.Case("lowest", 1, "half", True), bench.TINY, torch.float32, args, 1.0)
    assert row.status == "ok" and row.s_per_step > 0 and math.isfinite(row.loss)
    assert all(b._compiled_call_impl is None for b in trainer.transformer.transformer_blocks)
