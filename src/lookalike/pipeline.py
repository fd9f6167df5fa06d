"""`lookalike fit`: the stages in order, from a folder of photos to a LoRA and a report.

    ingest -> caption -> ground (when ground.count > 0) -> cache -> train -> eval -> report

Each stage is skipped when its outputs are current (the files and manifests of the run folder say
so), so running the same `fit` again after a failure or Ctrl-C continues where it stopped: captions
already bought are not bought again, training resumes from its last state, checkpoints already
evaluated are not drawn again. Before anything is paid for (caption requests, training time) the
cost is printed and confirmed. The stages are the same functions the single verbs call.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lookalike.errors import ConfigError, Interrupted, LookalikeError
from lookalike.evaluate.recommend import run_lora
from lookalike.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass
class FitOptions:
    command: str  # the command line, repeated in messages that say how to continue
    env_file: Path | None = None
    yes: bool = False  # skip the confirmation
    confirm: Callable[[str], bool] | None = None  # asks the user; None: not interactive


@dataclass
class FitResult:
    report: Path | None  # None: likeness could not be measured, so no report was written
    lora: Path | None
    lora_why: str
    recommendation: dict | None


def fit(cfg, rd: RunDir, opts: FitOptions, say: Callable[[str], None]) -> FitResult:
    """Run every stage that is not current yet; `say` prints one line per stage."""
    again = f"run the same command again: `{opts.command}`"
    selection_log = logging.getLogger("lookalike.data.selection")
    level = selection_log.level
    try:
        return _fit(cfg, rd, opts, again, say)
    except KeyboardInterrupt:  # a stage without its own Ctrl-C handling (ingest, cache, eval)
        raise Interrupted(f"Ctrl-C: stopped; every file already finished is kept; to continue, {again}") from None
    finally:
        selection_log.setLevel(level)  # _ingest quiets the stages' own photo lines for this fit only


def _fit(cfg, rd: RunDir, opts: FitOptions, again: str, say) -> FitResult:
    selection = _ingest(cfg, rd, say)
    captions = _caption_plan(cfg, rd, opts, say)
    drawing = _ground_plan(cfg, rd, captions)
    steps, resume = _train_plan(cfg, rd)
    no_eval = _eval_plan(cfg, rd, selection)
    if no_eval:
        say(f"eval: cannot measure likeness ({no_eval}); fit will train and export the LoRA without a report")
    _confirm(cfg, opts, captions, drawing, steps, resume, say)
    for view, sub, _ in captions:
        _caption(view, sub, opts, again, say)
    if cfg.ground.count:
        _ground(cfg, rd, drawing, say)
    _train(cfg, rd, steps, resume, again, say)
    metrics = None if no_eval else _evaluate(cfg, rd, say)
    if metrics is None:
        lora, why = run_lora(rd)
        say(f"LoRA: {lora} ({why}); no report: likeness could not be measured")
        return FitResult(None, lora, why, None)
    return _report(cfg, rd, metrics, say)


# ---------------------------------------------------------------- the stages


def _ingest(cfg, rd: RunDir, say):
    """The doctor over every person's folder that changed since it last looked; the main person's selection."""
    from lookalike.data.selection import person_runs, person_selections
    from lookalike.ingest.stage import ingest_stage, is_current

    for k, (view, sub) in enumerate(person_runs(cfg, rd)):
        whose = "" if k == 0 else f" of {view.dataset.trigger}"
        if is_current(view, sub):
            say(f"ingest: up to date (the photos{whose} have not changed since the doctor checked them)")
            continue
        report, _ = ingest_stage(view, sub)
        s = report.summary()
        table = f"lookalike ingest {cfg.dataset.photos} --run {rd.root}" + (f" --person {view.dataset.trigger}" if k else "")
        say(f"ingest{whose}: {s['files']} files, {s['usable']} readable; the person ({s['person_from']}) found in "
            f"{s['person_found']}" + ("" if report.faces_checked else "; faces found in too few photos to "
                                      "decide by face") + f" (table: {table})")
    logging.getLogger("lookalike.data.selection").setLevel(logging.WARNING)  # said once here, not per stage (fit
    # restores the level when it ends)
    selections = person_selections(cfg, rd, refresh=False)
    for k, (view, sub, selection) in enumerate(selections):
        say(f"photos{'' if k == 0 else ' of ' + view.dataset.trigger}: {selection.line(sub)}")
        if not selection.used:
            raise ConfigError(f"no photo of {cfg.dataset.setting(k, 'photos')} = {view.dataset.photos} can train "
                              f"(reasons above); add photos of {view.dataset.trigger}, or bring some back with "
                              f"`include:` in {sub.selection_path}")
    return selections[0][2]


def _caption_plan(cfg, rd: RunDir, opts: FitOptions, say) -> list[tuple]:
    """The dry run of the caption stage on each folder: the person's, then each of dataset.people's (when their
    references are set: `caption.agent.people_views`). [(config, run folder, estimate)] of those with photos
    still to caption."""
    from lookalike.caption.agent import caption_stage, people_views

    todo = []
    for k, (view, sub) in enumerate([(cfg, rd), *people_views(cfg, rd)]):
        whose = "" if k == 0 else f" of {view.dataset.trigger}"
        report = caption_stage(view, sub, opts.env_file, dry_run=True)
        est = report.estimate
        if not est["requests"]:
            say(f"caption: every photo{whose} has a caption ({report.actions['user']} written by you, "
                f"{report.actions['cached'] + report.actions['restore']} from earlier runs)")
            continue
        cost = f"about ${est['cost_usd']:.4f}" if est["cost_usd"] is not None else "cost unknown (set caption.price_in/price_out)"
        say(f"caption: {est['requests']} photo(s){whose} to caption with {report.endpoint.model} at "
            f"{report.endpoint.base_url}: {est['requests']} request(s), ~{est['input_tokens'] + est['output_tokens']} "
            f"tokens, {cost}")
        todo.append((view, sub, est))
    return todo


def _ground_plan(cfg, rd: RunDir, captions: list) -> int:
    """Grounding images still to draw (all of them while captions are still to be bought)."""
    if not cfg.ground.count:
        return 0
    from lookalike.data.ground import missing, phrases_of, plan

    phrases_of(cfg)  # no class phrase: refused before anything is paid for
    return cfg.ground.count if captions else len(missing(rd, plan(cfg, rd)))


def _ground(cfg, rd: RunDir, drawing: int, say) -> None:
    from lookalike.data.ground import ground_stage

    if drawing:
        say(f"ground: drawing {drawing} grounding image(s) with the base model")
    report = ground_stage(cfg, rd)
    say(f"ground: {report.images} grounding images ({report.drawn} drawn, {report.reused} kept) in {report.folder}")


def _train_plan(cfg, rd: RunDir) -> tuple[int, bool]:
    """(steps still to train, resume?) from the run's state and the recipe: every person's selected photos
    (captioned or still to caption), the grounding photos and the images still to draw."""
    from lookalike.data.buckets import training_size
    from lookalike.data.loader import make_plan
    from lookalike.data.photos import find_grounding
    from lookalike.data.selection import person_selections
    from lookalike.ingest.decode import PhotoRejected, usable_size
    from lookalike.ingest.stage import read_record

    square = (cfg.dataset.resolution, cfg.dataset.resolution)

    def shape(path) -> tuple[int, int]:
        try:
            return training_size(*usable_size(path), cfg.dataset.resolution, cfg.dataset.aspect)
        except PhotoRejected:
            return square  # the cache stage names it

    shapes = []
    for view, sub, selection in person_selections(cfg, rd, refresh=False):  # each person's own doctor's record
        measured = {p["file"]: tuple(p["training_size"]) for p in (read_record(sub) or {}).get("photos", [])
                    if p.get("training_size")}
        folder = Path(view.dataset.photos).expanduser()
        shapes += [measured[name] if name in measured else shape(folder / name) for name in selection.used]
    people = cfg.dataset.everyone()
    shapes += (shape(p.path) for p in find_grounding(cfg.dataset.grounding, [person.trigger for person in people]))
    shapes += [square] * cfg.ground.count  # drawn at the training resolution
    held = cfg.dataset.holdout * len(people)
    shapes = shapes[held:] if held < len(shapes) else shapes
    total = make_plan(shapes, cfg, cfg.train.devices * cfg.train.num_nodes).total_steps
    from lookalike.train.callbacks import checkpoint_step

    manifest = RunDir.read_manifest(rd.train_dir)
    if manifest is not None and rd.lora.is_file() and int(manifest.get("steps", 0)) >= total:
        return 0, False  # trained to the end of this recipe
    saved = checkpoint_step(rd.resume_checkpoint)
    if saved is not None:  # stopped part-way, or the recipe now asks for more steps
        return max(0, total - saved), True
    return total, False


def _eval_plan(cfg, rd: RunDir, selection) -> str | None:
    """Why the evaluation cannot run on these photos, or None. Likeness is measured against the faces of
    the training photos: with no face found in any of them (drawings, faraway people) there is nothing to
    measure against. The toy world has its own scorer."""
    from lookalike.evaluate.suite import is_toy
    from lookalike.ingest.stage import read_record

    if is_toy(cfg):
        return None
    record = read_record(rd) or {}
    faces = {p["file"]: p.get("faces") for p in record.get("photos", [])}
    if selection.used and all(faces.get(name) == 0 for name in selection.used):
        return f"the dataset doctor found no face in any of the {len(selection.used)} photos that train"
    return None


def _confirm(cfg, opts: FitOptions, captions: list, drawing: int, steps: int, resume: bool, say) -> None:
    """Say what will be paid for; go on only with --yes or the user's yes."""
    from lookalike.estimate import drawing_estimate, training_estimate
    from lookalike.runtime import training_runtime

    runtime = training_runtime(cfg)
    gpu = None
    if runtime.device.type == "cuda":
        import torch

        gpu = torch.cuda.get_device_name(runtime.device)
    if drawing:
        say(f"ground: {drawing_estimate(cfg, drawing, runtime.device.type, gpu)} on {runtime.device}")
    if steps:
        est = training_estimate(cfg, steps, runtime.device.type, gpu)
        say(f"train: {'resume, ' if resume else ''}{est.line()} on {runtime.device}")
    if not (captions or drawing or steps) or opts.yes:
        return
    requests = sum(est["requests"] for _, _, est in captions)
    what = " and ".join(x for x in (f"{requests} caption request(s)" if captions else "",
                                    f"{drawing} grounding image(s)" if drawing else "",
                                    f"{steps} training steps" if steps else "") if x)
    if opts.confirm is None:
        raise ConfigError(f"fit would now spend {what}; add --yes to go ahead (nothing was sent, drawn or trained)")
    if not opts.confirm(f"go ahead with {what}?"):
        raise ConfigError(f"stopped before {what}; nothing was sent, drawn or trained. Add --yes to skip the question")


def _caption(cfg, rd: RunDir, opts: FitOptions, again: str, say) -> None:
    from lookalike.caption.agent import caption_stage

    report = caption_stage(cfg, rd, opts.env_file, resume_hint=again)
    a = report.actions
    say(f"caption: {a['request']} captioned by {report.endpoint.model} ({report.requests} requests), "
        f"{len(report.flagged)} flagged; review: {report.review}")


def _train(cfg, rd: RunDir, steps: int, resume: bool, again: str, say) -> None:
    from lookalike.data.cache import build_cache
    from lookalike.train.run import train_stage

    cache = build_cache(cfg, rd)
    say(f"cache: {cache.items} photos ({cache.latents_encoded} latents and {cache.texts_encoded} texts encoded, "
        f"{cache.reused} reused)")
    if not steps:
        say(f"train: done ({RunDir.read_manifest(rd.train_dir).get('steps')} steps); LoRA {rd.lora}")
        return
    report = train_stage(cfg, rd, resume=resume, resume_hint=again)
    say(f"train: {report.steps} steps; LoRA {report.lora} (ComfyUI: {report.kohya.name})")


def _evaluate(cfg, rd: RunDir, say) -> dict | None:
    import json

    from lookalike.evaluate.judges import make_judge
    from lookalike.evaluate.run import evaluate_run, find_checkpoints

    checkpoints = find_checkpoints(rd)
    todo = unevaluated(cfg, rd, checkpoints)
    if not todo and rd.eval_metrics.is_file():
        metrics = json.loads(rd.eval_metrics.read_text())
        say(f"eval: up to date ({len(checkpoints)} checkpoints)")
        return metrics
    try:
        judge = make_judge(cfg, rd)
    except (ConfigError, Interrupted):
        raise
    except LookalikeError as e:  # e.g. no face the judge can read: the LoRA is made, say so and stop here
        say(f"eval: skipped: {e}")
        return None
    say(f"eval: drawing {judge.suite.images * (1 + len(todo))} images (the base and {len(todo)} checkpoint(s))")
    return evaluate_run(cfg, rd, todo, judge)


def unevaluated(cfg, rd: RunDir, checkpoints) -> list[int]:
    """Steps of `checkpoints` that RUN/eval/metrics.json has no current row for: never evaluated, evaluated
    on another suite (prompts or seeds changed since), or saved again after the evaluation."""
    import json

    from lookalike.evaluate.suite import suite_of

    done = set()
    if rd.eval_metrics.is_file():
        metrics = json.loads(rd.eval_metrics.read_text())
        if metrics.get("suite", {}).get("fingerprint") == suite_of(cfg).fingerprint():
            evaluated = rd.eval_metrics.stat().st_mtime
            done = {r["step"] for r in metrics.get("checkpoints", [])}
            done -= {c.step for c in checkpoints if c.path.stat().st_mtime > evaluated}
    return [c.step for c in checkpoints if c.step not in done]


def _report(cfg, rd: RunDir, metrics: dict, say) -> FitResult:
    from lookalike.evaluate.report import write_report

    path = write_report(cfg, rd)
    rec = metrics.get("recommendation") or {}
    lora, why = run_lora(rd)
    say(f"report: {path}")
    say(f"LoRA: {lora} ({why})" if rec.get("name") else f"no checkpoint recommended: {rec.get('reason')}")
    return FitResult(path, lora, why, rec)


def steps_epochs(steps: int | None, epochs: int | None) -> list[str]:
    """--steps / --epochs as config overrides: --steps caps the run at that many optimiser steps."""
    out = []
    if steps is not None:
        out += [f"train.max_steps={steps}", f"train.epochs={max(1, math.ceil(steps))}"]
    if epochs is not None:
        out.append(f"train.epochs={epochs}")
    return out
