"""The seed write-up's two experiments, one command each (`lookalike experiment empty|replay RUN`).

    empty    the empty prompt "" with N seeds, base and LoRA: the share of images that show the person
             (a LoRA trained without caption dropout learns "no words = this person")
             RUN/experiments/empty/{base,lora}/*.png, base-grid.png, lora-grid.png, result.json
    replay   every training caption drawn again with the LoRA, beside the photo it was written for: is the
             person there, and are the *others* the caption names turned into the person (the write-up's
             "identity replacement effect")?
             RUN/experiments/replay/*.png, pairs.png, result.json

Both use the one sampler and the run's judge (toy scorer or dlib faces), and the recommended checkpoint
of RUN/eval/metrics.json unless a step is named (else the last one saved).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from lookalike.evaluate.run import Checkpoint, draw, find_checkpoints, load_for_eval, with_lora
from lookalike.evaluate.suite import EvalSuite

log = logging.getLogger(__name__)

STAGE = "experiments"


def choose_checkpoint(run, step: int | None = None) -> Checkpoint:
    """`step` if given, else the one RUN/eval/metrics.json recommends, else the last one saved."""
    if step is not None:
        return find_checkpoints(run, [step])[0]
    if run.eval_metrics.is_file():
        chosen = json.loads(run.eval_metrics.read_text())["recommendation"]["step"]
        if chosen is not None:
            return find_checkpoints(run, [chosen])[0]
    return find_checkpoints(run)[-1]


def share(flags) -> float | None:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else None


def empty_prompt(cfg, run, judge, step: int | None = None, seeds: int | None = None) -> dict:
    """Draw "" with seeds 0..N-1 (N = eval.empty_seeds), base and LoRA; the share that shows the person."""
    from lookalike.rundir import write_json_atomic

    ck = choose_checkpoint(run, step)
    suite = EvalSuite((("empty", ("",)),), tuple(range(seeds or cfg.eval.empty_seeds)))
    started = time.time()
    ready = load_for_eval(cfg, [""])
    folder = run.stage(STAGE) / "empty"
    base = draw(ready, suite, judge)
    tuned = with_lora(ready, ck.path, lambda: draw(ready, suite, judge))
    for name, drawn in (("base", base), ("lora", tuned)):
        _save_images(drawn.images["empty"], folder / name)
        grid(drawn.images["empty"], min(8, len(suite.seeds))).save(folder / f"{name}-grid.png")
    result = {"checkpoint": ck.name, "step": ck.step, "seeds": list(suite.seeds), "judge": judge.name,
              "share_base": share(judge.found(r) for r in base.readings["empty"]),
              "share_lora": share(judge.found(r) for r in tuned.readings["empty"]),
              "found": [judge.found(r) for r in tuned.readings["empty"]],
              "seconds": round(time.time() - started, 1)}
    write_json_atomic(folder / "result.json", result)
    return result


def _save_images(images, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        im.save(folder / f"{i:03d}.png")


def grid(images, columns: int):
    """Same-size PIL images in a grid, `columns` wide, row-major."""
    from PIL import Image

    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * w, rows * h), "white")
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        sheet.paste(im.convert("RGB"), (c * w, r * h))
    return sheet


def replacement(people: list[dict]) -> tuple[int, int]:
    """(others, others judged to be the person) in one image. As in the leakage metrics, the likeliest
    person found is 'him', whether or not he is judged to be the person; everyone else is an other."""
    him = max(people, key=lambda p: p["score"], default=None)
    others = [p for p in people if p is not him]
    return len(others), sum(p["is_person"] for p in others)


def replay_captions(cfg, run, judge, step: int | None = None) -> dict:
    """Every training caption drawn with the LoRA (seed eval.replay_seed) beside its photo, each read by
    the judge: person found, and the others of the caption turned into the person."""
    from lookalike.data.photos import load_rgb
    from lookalike.evaluate.suite import training_photos
    from lookalike.rundir import write_json_atomic

    ck = choose_checkpoint(run, step)
    photos = training_photos(cfg, run)
    captions = [c for _, c in photos]
    suite = EvalSuite((("replay", tuple(captions)),), (cfg.eval.replay_seed,))
    started = time.time()
    ready = load_for_eval(cfg, suite.texts)
    tuned = with_lora(ready, ck.path, lambda: draw(ready, suite, judge))
    regenerated = tuned.images["replay"]
    originals = [load_rgb(p) for p, _ in photos]
    folder = run.stage(STAGE) / "replay"
    _save_images(regenerated, folder / "regenerated")
    rows = [_replay_row(p, c, judge, o, g) for (p, c), o, g in
            zip(photos, judge.read(originals), tuned.readings["replay"])]
    pairs_sheet(originals, regenerated).save(folder / "pairs.png")
    others = sum(r["others"] for r in rows)
    result = {"checkpoint": ck.name, "step": ck.step, "seed": cfg.eval.replay_seed, "judge": judge.name,
              "photos": len(rows), "likeness": share(r["found"] for r in rows),
              "found_in_photos": share(r["found_in_photo"] for r in rows),
              "others": others, "replaced": sum(r["replaced"] for r in rows),
              "replacement": sum(r["replaced"] for r in rows) / others if others else None,
              "rows": rows, "seconds": round(time.time() - started, 1)}
    write_json_atomic(folder / "result.json", result)
    return result


def _replay_row(photo: Path, caption: str, judge, original, regenerated) -> dict:
    people = judge.people(regenerated)
    others, replaced = replacement(people)
    return {"photo": photo.name, "caption": caption, "found_in_photo": judge.found(original),
            "found": judge.found(regenerated), "people": people, "others": others, "replaced": replaced}


def pairs_sheet(originals, regenerated, cell: int = 256, per_row: int = 5):
    """Each training photo beside its regeneration, `per_row` pairs a row, a white gap between pairs;
    both images fitted to at most `cell` pixels."""
    from PIL import Image, ImageOps

    w, h = regenerated[0].size
    scale = min(1.0, cell / max(w, h))
    size = (round(w * scale), round(h * scale))
    gap = max(4, size[0] // 8)
    rows = (len(regenerated) + per_row - 1) // per_row
    columns = min(per_row, len(regenerated))
    sheet = Image.new("RGB", (columns * (2 * size[0] + gap) - gap, rows * (size[1] + gap) - gap), "white")
    for i, (o, g) in enumerate(zip(originals, regenerated)):
        r, c = divmod(i, per_row)
        x, y = c * (2 * size[0] + gap), r * (size[1] + gap)
        sheet.paste(ImageOps.pad(o.convert("RGB"), size, color="white"), (x, y))
        sheet.paste(g.convert("RGB").resize(size), (x + size[0], y))
    return sheet
