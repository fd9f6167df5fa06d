"""`lookalike eval RUN`: the fixed suite for the base model once, then for each saved checkpoint.

    RUN/eval/base/<group>/*.png, <group>-grid.png      the base model (no LoRA)
    RUN/eval/step-000250/<group>/*.png, ...            each checkpoint, same prompts and seeds
    RUN/eval/metrics.json                              per-checkpoint rows, the recommendation and why
    RUN/eval/metrics.md                                the same as a table

Every image comes from the one sampler (`lookalike.generate.sample`); text is encoded once, before any
LoRA is loaded (lookalike's LoRAs adapt the transformer only). A judge (toy scorer or dlib faces) reads
the images; `recommend` picks the checkpoint.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from lookalike.errors import ConfigError, LookalikeError

log = logging.getLogger(__name__)

STAGE = "eval"
STEP_FILE = re.compile(r"step-(\d+)\.safetensors$")
# the eval settings a recommendation is made with, saved beside it (the report shows these, not the config's)
BOUND_SETTINGS = ("min_likeness", "max_leakage", "max_elsewhere", "min_preservation", "max_copy")


@dataclass(frozen=True)
class Checkpoint:
    """One saved LoRA: the optimiser step it was saved at and its file."""

    step: int
    path: Path

    @property
    def name(self) -> str:
        return f"step-{self.step:06d}"


def find_checkpoints(run, steps: list[int] | None = None) -> list[Checkpoint]:
    """RUN/train/checkpoints/step-*.safetensors and RUN/train/lora.safetensors (step from its header),
    one per step, sorted; only `steps` when given. Raises naming the fix when there are none."""
    from lookalike.export import read_header

    found = {int(m.group(1)): p for p in sorted(run.checkpoints_dir.glob("step-*.safetensors"))
             if (m := STEP_FILE.search(p.name))}
    if run.lora.is_file():
        step = int(read_header(run.lora).get("steps", -1))
        found.setdefault(step, run.lora)  # the last snapshot and the final export hold the same weights
    if not found:
        raise LookalikeError(f"{run.train_dir} holds no LoRA checkpoint ({run.checkpoints_dir.name}/step-*.safetensors "
                             f"or {run.lora.name}); train first: `lookalike train {run.root}`")
    if steps:
        missing = sorted(set(steps) - set(found))
        if missing:
            raise ConfigError(f"--step {', '.join(map(str, missing))}: no checkpoint of that step in {run.train_dir}; "
                              f"saved steps: {', '.join(map(str, sorted(found)))}")
        found = {s: found[s] for s in steps}
    return [Checkpoint(s, p) for s, p in sorted(found.items())]


@dataclass
class Drawn:
    """One model's suite: {group: PIL images} and {group: judge readings}, prompt-major then seed."""

    images: dict
    readings: dict


def draw(ready, suite, judge, folder: Path | None = None, on_image=None) -> Drawn:
    """Draw every group of `suite` with the one sampler (`ready`: a `Prepared` pipeline); write PNGs and a grid
    per group under `folder`."""
    from lookalike.generate import contact_sheet, save_sample

    images, readings = {}, {}
    for group, prompts in suite.groups:
        samples = []
        for s in ready.draw(prompts, suite.seeds):
            samples.append(s)
            if on_image:
                on_image(s)
        if folder is not None:
            (folder / group).mkdir(parents=True, exist_ok=True)
            for i, s in enumerate(samples):
                save_sample(s, folder / group, i)
            contact_sheet(samples, columns=len(suite.seeds)).save(folder / f"{group}-grid.png")
        images[group] = [s.image for s in samples]
        readings[group] = judge.read(images[group])
    return Drawn(images, readings)


def load_for_eval(cfg, texts: list[str]):
    """The model loaded once, `texts` encoded once and the text encoders dropped (FLUX.1's T5 alone is
    ~9.5 GB): a `Prepared` pipeline on its device."""
    from lookalike.generate import prepare_pipeline, settings_from_config
    from lookalike.models.source import model_and_family
    from lookalike.runtime import decide_runtime

    source, _ = model_and_family(cfg)
    runtime = decide_runtime(cfg.runtime.device, cfg.runtime.dtype)
    log.info("evaluating on %s (%s)", runtime.device, runtime.reason)
    return prepare_pipeline(source, runtime, texts, settings_from_config(cfg.generate))


def with_lora(ready, path: Path, draw_fn):
    """Run `draw_fn()` with the LoRA at `path` loaded at weight 1, then unload it (the base is untouched)."""
    from lookalike.config import LoraSpec
    from lookalike.models.lora import apply_loras

    apply_loras(ready.pipe, [LoraSpec(path=str(path))])
    try:
        return draw_fn()
    finally:
        ready.pipe.unload_lora_weights()


def checkpoint_row(ck: Checkpoint, judge, base: Drawn, tuned: Drawn) -> dict:
    """One row of metrics.json: the LoRA's metrics, preservation against the base, the headline four."""
    metrics = judge.metrics(tuned.readings)
    kept = judge.preservation(base.images, base.readings, tuned.images, tuned.readings)
    return {"step": ck.step, "name": ck.name, "file": str(ck.path), "lora": metrics, "preservation": kept,
            "scores": judge.headline(metrics, kept)}


def evaluate_run(cfg, run, steps: list[int] | None = None, judge=None, on_image=None) -> dict:
    """Base once, then every checkpoint (or `steps`), on the judge's suite; writes RUN/eval/. Returns metrics.json."""
    from lookalike.evaluate.judges import make_judge
    from lookalike.evaluate.recommend import recommend
    from lookalike.rundir import write_json_atomic

    checkpoints = find_checkpoints(run, steps)
    judge = judge or make_judge(cfg, run)
    suite = judge.suite
    started = time.time()
    ready = load_for_eval(cfg, suite.texts)
    settings = ready.settings
    folder = run.stage(STAGE)  # = run.eval_metrics.parent
    base = draw(ready, suite, judge, folder / "base", on_image)
    rows = []
    for ck in checkpoints:
        tuned = with_lora(ready, ck.path, lambda: draw(ready, suite, judge, folder / ck.name, on_image))
        rows.append(checkpoint_row(ck, judge, base, tuned))
        log.info("%s: %s", ck.name, ", ".join(f"{k} {_num(v)}" for k, v in rows[-1]["scores"].items()))
    rows = merge_rows(run.eval_metrics, rows, suite.fingerprint())
    base_metrics = judge.metrics(base.readings)
    result = {"judge": judge.about(), "suite": suite.to_json(), "settings": settings.__dict__,
              "base": {"metrics": base_metrics, "scores": judge.headline(base_metrics, None)},
              "checkpoints": rows, "recommendation": recommend(rows, cfg.eval),
              "bounds": {k: getattr(cfg.eval, k) for k in BOUND_SETTINGS},
              "images": suite.images * (1 + len(checkpoints)), "seconds": round(time.time() - started, 1)}
    write_json_atomic(run.eval_metrics, result)
    run.eval_metrics.with_suffix(".md").write_text(markdown(result) + "\n", encoding="utf-8")
    run.write_manifest(folder, STAGE, checkpoints=[r["name"] for r in rows], judge=judge.name,
                       recommended=result["recommendation"]["step"], images=result["images"])
    return result


def merge_rows(path: Path, rows: list[dict], fingerprint: str) -> list[dict]:
    """Rows of an earlier eval of the same suite (other steps) kept beside the new ones, sorted by step."""
    if not path.is_file():
        return rows
    old = json.loads(path.read_text())
    if old.get("suite", {}).get("fingerprint") != fingerprint:
        return rows
    new = {r["step"] for r in rows}
    return sorted([r for r in old["checkpoints"] if r["step"] not in new] + rows, key=lambda r: r["step"])


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


HEADLINE = (("likeness", "likeness"), ("leakage", "leakage"), ("elsewhere", "person, no trigger"),
            ("preservation", "preservation"))


def markdown(result: dict) -> str:
    """Base and every checkpoint, the headline four as columns, and the recommendation under the table."""
    lines = ["| model | " + " | ".join(label for _, label in HEADLINE) + " |", "|---" * (len(HEADLINE) + 1) + "|"]
    rows = [("base", result["base"]["scores"])] + [(r["name"], r["scores"]) for r in result["checkpoints"]]
    lines += [f"| {name} | " + " | ".join(_num(s[k]) for k, _ in HEADLINE) + " |" for name, s in rows]
    lines += ["", recommendation_line(result["recommendation"])]
    return "\n".join(lines)


def recommendation_line(rec: dict) -> str:
    """'recommended: step-000500 (why)', or 'no checkpoint recommended: why, and what to try'."""
    if rec["name"]:
        return f"recommended: {rec['name']} ({rec['reason']})"
    return f"no checkpoint recommended: {rec['reason']}"
