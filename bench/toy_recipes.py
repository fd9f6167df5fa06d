"""Identity recipes in the toy world: which way of keeping "everyone looks like me" away works best.

    python bench/toy_recipes.py run RECIPE --seed 0 [--curve] [--out bench/results/toy-recipes.jsonl]
    python bench/toy_recipes.py table [--out bench/results/toy-recipes.jsonl]

Each run is the demo's path (Arthur's 40 photos, the `toy` preset, 800 optimiser steps, training seed
`--seed` = runtime.seed), with one recipe's settings, and `train.ema_decay` on so that one run gives both
the raw final weights and their moving average. Both are drawn on the demo's suite (10 prompts without
Arthur, 10 with him, seeds 0-3) beside the base model, and read by the toy scorer. `--curve` also draws
the trigger prompts (with Grace, hers too: the lower likeness of the two) for every 100-step snapshot (the
average) to find the first step with likeness >= 0.8.
One JSON line per run is appended to `--out`; `table` prints the Markdown table of all lines, the mean
and the range over training seeds per recipe and weights. The `two-*` recipes teach Grace too (her 40
photos as dataset.people, 1200 steps) and are drawn on the suite with her prompts: `table --people 2`.
Rows without a `scorer` hash were read by the first scorer (Arthur or not), shown as v1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

STEPS = 800
EMA = 0.99
CLASS = "dataset.class_phrase=a man"
# the toy preset's peak learning rate until 2026-12-03 (now 3e-3): the recipes measured with it keep it
LR2 = "train.learning_rate=2e-3"
# name -> (scenes of other people as dataset.grounding, settings on top of the toy preset[, people learned])
VARIED = ("ground.phrases=['a man with brown hair', 'a woman with red hair', 'a man with black hair and a beard', "
          "'a woman with blonde hair', 'a man with grey hair']")
# every hair colour the toy world's people wear (scenes.HAIR), on a man and on a woman
VARIED10 = "ground.phrases=" + repr([f"a {who} with {hair} hair" for hair in ("black", "brown", "blonde", "red", "grey")
                                     for who in ("man", "woman")])
RECIPES = {
    "none": (0, [LR2]),
    "others": (40, [LR2]),  # the toy preset until 2026-12-03: 40 captioned scenes of others, target base, weight 4
    "ground": (0, [LR2, "ground.count=40", CLASS]),  # 40 images the base model draws from Arthur's captions
    "class-prior": (0, [LR2, "train.class_prior_weight=1", CLASS]),
    "class-prior4": (0, [LR2, "train.class_prior_weight=4", CLASS]),
    "blank": (0, [LR2, "train.blank_prior_weight=1"]),
    "ground+class-prior": (0, [LR2, "ground.count=40", CLASS, "train.class_prior_weight=1"]),
    "others+class-prior": (40, [LR2, "train.class_prior_weight=1", CLASS]),
    "ground+blank": (0, [LR2, "ground.count=40", CLASS, "train.blank_prior_weight=1"]),
    "ground80": (0, [LR2, "ground.count=80", CLASS]),
    "ground+others": (40, [LR2, "ground.count=40", CLASS]),
    # the drawn people described as the toy world's captions describe people (hair, beard), in turn
    "ground-varied": (0, [LR2, "ground.count=40", VARIED]),
    # a constant learning rate (the write-up's schedule), where an average of the weights should matter most
    "others-constant": (40, ["train.schedule=constant", "train.learning_rate=1e-3"]),
    "ground-constant": (0, ["ground.count=40", CLASS, "train.schedule=constant", "train.learning_rate=1e-3"]),
    # the toy preset pushed harder where the sampler decides who is drawn: more steps at high σ, a higher peak
    # rate, a weaker pull of the grounding photos towards the base model
    "others-shift5": (40, [LR2, "train.shift=5"]),
    "others-lr3e-3": (40, ["train.learning_rate=3e-3"]),  # the toy preset from 2026-12-03
    "others-weight2": (40, [LR2, "train.grounding_weight=2"]),
    "others-lr4e-3": (40, ["train.learning_rate=4e-3"]),
    "ground-varied-lr3e-3": (0, ["ground.count=40", VARIED, "train.learning_rate=3e-3"]),
    "ground-varied10-lr3e-3": (0, ["ground.count=40", VARIED10, "train.learning_rate=3e-3"]),
    "others-all-linear": (40, ["lora.targets=all-linear"]),  # the toy preset with a LoRA on every linear layer
    # two people in one LoRA: Arthur's 40 photos and Grace's 40 (a fifth of them with Arthur), 1200 steps
    "two-others": (40, [LR2], 2),
    "two-ground-varied": (0, [LR2, "ground.count=40", VARIED], 2),
    "two-others-2400": (40, [LR2, "train.max_steps=2400"], 2),  # twice the steps: Grace's bun is learned slower
    "two-others-lr3e-3": (40, ["train.learning_rate=3e-3"], 2),
    # a LoRA on every linear layer (the MLPs draw shapes; Grace's bun is a shape the base never drew)
    "two-others-all-linear": (40, ["lora.targets=all-linear"], 2),
    "two-others-all-linear-2400": (40, ["lora.targets=all-linear", "train.max_steps=2400"], 2),
    # as many scenes of others as one person's preset has per photo of the person (40 each): 80 for two
    "two-others80-all-linear-2400": (80, ["lora.targets=all-linear", "train.max_steps=2400"], 2),
    "two-others80-all-linear-3600": (80, ["lora.targets=all-linear", "train.max_steps=3600"], 2),
    "two-others80-all-linear-lr4e-3": (80, ["lora.targets=all-linear", "train.max_steps=2400",
                                            "train.learning_rate=4e-3"], 2),
}
STEPS_FOR_PEOPLE = {1: STEPS, 2: 1200}  # the same 20 passes over each person's photos as 800 steps for one
FIELDS = ("likeness", "arthur_elsewhere", "leakage", "agreement", "prompt_following")
TWO_FIELDS = ("likeness", "likeness_grace", "likeness_both", "confusion", "arthur_elsewhere", "grace_elsewhere",
              "leakage", "agreement", "prompt_following")


def _metrics(suite, base, tuned) -> dict:
    from lookalike.toy.metrics import preservation

    m = tuned.metrics(suite)
    m["agreement"] = preservation(base.readings["plain"], tuned.readings["plain"], base.images["plain"],
                                  tuned.images["plain"])["agreement"]
    return m


def run(recipe: str, seed: int, curve: bool, out: Path, keep: Path | None) -> dict:
    from lookalike.config import LoraSpec
    from lookalike.config import save_config
    from lookalike.data.cache import build_cache
    from lookalike.data.ground import ground_stage
    from lookalike.generate import prepare_pipeline, settings_from_config
    from lookalike.models.source import model_source
    from lookalike.rundir import RunDir
    from lookalike.runtime import decide_runtime
    from lookalike.config.schema import PersonConfig
    from lookalike.toy.demo import demo_config, draw_suite, suite_groups, write_dataset, write_others, write_second
    from lookalike.toy.metrics import make_suite
    from lookalike.toy.scorer import Scorer
    from lookalike.train.run import train_stage

    others, sets, people = (*RECIPES[recipe], 1)[:3]
    folder = keep or Path(tempfile.mkdtemp(prefix=f"toy-{recipe}-{seed}-"))
    rd = RunDir(folder)
    overrides = [f"runtime.seed={seed}", f"train.max_steps={STEPS_FOR_PEOPLE[people]}", "train.epochs=1000",
                 f"train.ema_decay={EMA}", "train.sample_every=1000", *sets]  # a recipe's own setting wins
    cfg = demo_config(folder / "photos", overrides)
    write_dataset(folder / "photos", trigger=cfg.dataset.trigger)
    if people == 2:
        write_second(folder / "photos-grace", trigger=cfg.dataset.trigger)
        cfg.dataset.people = [PersonConfig(trigger="Grace", photos=str((folder / "photos-grace").resolve()),
                                           class_phrase="a woman")]
    if others:
        write_others(folder / "others", others)
        cfg.dataset.grounding = str((folder / "others").resolve())
    save_config(cfg, rd.config_path)
    started = time.time()
    if cfg.ground.count:
        ground_stage(cfg, rd)
    build_cache(cfg, rd)
    report = train_stage(cfg, rd)
    train_seconds = time.time() - started

    scorer = Scorer.load()
    suite = make_suite(plain=10, trigger=10, seeds=4, trigger_word=cfg.dataset.trigger,
                       second="Grace" if people == 2 else None)
    texts = [text for _, group in suite_groups(suite) for text in group]
    runtime = decide_runtime(cfg.runtime.device, cfg.runtime.dtype)
    settings = settings_from_config(cfg.generate)

    def drawn(lora: Path | None):
        loras = [LoraSpec(path=str(lora))] if lora else []
        return draw_suite(prepare_pipeline(model_source(cfg.model), runtime, texts, settings, loras=loras), suite, scorer)

    base = drawn(None)
    row = {"recipe": recipe, "seed": seed, "steps": report.steps, "others": others, "people": people,
           "overrides": overrides,
           "train_seconds": round(train_seconds, 1), "date": time.strftime("%Y-%m-%d"), "scorer": scorer_id(),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {_threads()}",
           "raw": _metrics(suite, base, drawn(rd.lora_raw)), "ema": _metrics(suite, base, drawn(rd.lora))}
    if curve:
        row["curve"] = _curve(cfg, rd, suite, scorer, runtime, settings)
        row["first_0.8"] = next((step for step, v in row["curve"] if v >= 0.8), None)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def _curve(cfg, rd, suite, scorer, runtime, settings) -> list:
    """(step, likeness) of every snapshot (the moving average), on the prompts naming one learned person
    each; with Grace, the lower of Arthur's likeness and hers."""
    from lookalike.config import LoraSpec
    from lookalike.evaluate.run import draw
    from lookalike.evaluate.suite import EvalSuite
    from lookalike.generate import prepare_pipeline
    from lookalike.models.source import model_source
    from lookalike.toy.metrics import likeness

    groups = [("trigger", "arthur", suite.trigger)] + ([("second", "grace", suite.second)] if suite.second else [])
    texts = tuple(p.text for _, _, prompts in groups for p in prompts)
    points = []
    for path in sorted(rd.checkpoints_dir.glob("step-*.safetensors")):
        ready = prepare_pipeline(model_source(cfg.model), runtime, texts, settings, loras=[LoraSpec(path=str(path))])
        eval_suite = EvalSuite(tuple((g, tuple(p.text for p in prompts)) for g, _, prompts in groups), tuple(suite.seeds))
        d = draw(ready, eval_suite, scorer, None)
        points.append((int(path.stem.split("-")[1]), min(likeness(d.readings[g], who) for g, who, _ in groups)))
    return points


def _threads() -> int:
    import torch

    return torch.get_num_threads()


HEADERS = {"likeness": "likeness", "likeness_grace": "likeness of Grace", "likeness_both": "both found",
           "confusion": "confusion", "arthur_elsewhere": "Arthur in prompts without him",
           "grace_elsewhere": "Grace in prompts without her", "leakage": "leakage", "agreement": "attribute agreement",
           "prompt_following": "prompt following"}


def table(out: Path, people: int = 1) -> str:
    """The Markdown table of the one-person recipes (`people=1`) or the two-person ones, rows grouped by
    recipe and scorer (its file's hash: numbers from two scorers are not comparable)."""
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    by = {}
    for r in rows:
        if r.get("people", 1) == people:
            by.setdefault((r["recipe"], r.get("scorer", "v1")), []).append(r)
    fields = FIELDS if people == 1 else TWO_FIELDS
    lines = ["| recipe | scorer | weights | seeds | " + " | ".join(HEADERS[k] for k in fields) + " | first step at "
             "likeness 0.8 |", "|" + " --- |" * (len(fields) + 5)]

    def cell(values):
        values = [v for v in values if v is not None]
        if not values:
            return "n/a"
        if len(values) == 1:
            return f"{values[0]:.3f}"
        return f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"

    for (recipe, scorer), runs in sorted(by.items(), key=lambda kv: (list(RECIPES).index(kv[0][0]), kv[0][1] != "v1")):
        runs = sorted(runs, key=lambda r: r["seed"])
        for weights in ("raw", "ema"):
            cells = [cell([r[weights].get(k) for r in runs]) for k in fields]
            first = ", ".join(str(r.get("first_0.8")) for r in runs) if weights == "ema" and any("curve" in r for r in runs) else ""
            lines.append(f"| {recipe} | {scorer} | {'EMA ' + str(EMA) if weights == 'ema' else 'raw'} | "
                         f"{','.join(str(r['seed']) for r in runs)} | " + " | ".join(cells) + f" | {first} |")
    return "\n".join(lines)


def scorer_id() -> str:
    """The toy scorer's weights file, hashed (first 8 hex digits): which scorer read a row's images."""
    import hashlib

    from lookalike.toy.scorer import SCORER_FILE

    return hashlib.sha256(SCORER_FILE.read_bytes()).hexdigest()[:8]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run")
    r.add_argument("recipe", choices=list(RECIPES))
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--curve", action="store_true")
    r.add_argument("--keep", type=Path)
    t = sub.add_parser("table")
    t.add_argument("--people", type=int, default=1, choices=(1, 2))
    for p in (r, t):
        p.add_argument("--out", type=Path, default=Path("bench/results/toy-recipes.jsonl"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.what == "table":
        print(table(args.out, args.people))
        return
    from lookalike.toy.pretrain import quiet_text_libraries

    quiet_text_libraries()
    row = run(args.recipe, args.seed, args.curve, args.out, args.keep)
    print(json.dumps({k: row[k] for k in ("recipe", "seed", "raw", "ema", "train_seconds")}), file=sys.stderr)


if __name__ == "__main__":
    main()
