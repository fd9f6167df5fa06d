"""Which checkpoint to use: the best likeness among those that learned the person and keep leakage and
preservation in bounds; and which LoRA file a run's later commands (`generate --run`) should load.

`recommend` is a pure function on metrics.json rows (each with `scores`: likeness, leakage, elsewhere,
preservation, each 0-1 or None). A checkpoint under `eval.min_likeness` (or whose likeness could not be
counted) has not learned the person and is never recommended, however well it keeps the base model: a
LoRA that changed nothing keeps everything. A None leakage, elsewhere or preservation could not be
counted (e.g. no other person was drawn, so leakage has nothing to count; copy needs held-out photos)
and does not disqualify; the reason says so. A checkpoint whose copy score (`evaluate.faces`) exceeds
`eval.max_copy` draws the person as copies of the training photos, not as the person: it is refused. Ties in likeness go to the earlier step: fewer steps have had less chance to overwrite
what the base model knew.
"""

from __future__ import annotations

import json
from pathlib import Path

from lookalike.errors import LookalikeError

# (score, bound setting, the bound is a ceiling?) in the order a reader checks them
BOUNDS = (("leakage", "max_leakage", True), ("elsewhere", "max_elsewhere", True),
          ("preservation", "min_preservation", False), ("copy", "max_copy", True))

# What to change when no checkpoint learned the person, most likely cause first.
NOT_LEARNED_FIXES = ("train longer (raise train.epochs, or train.max_steps if it is set)",
                     "raise train.learning_rate",
                     "check that every caption names the person with dataset.trigger (RUN/caption/review.html)",
                     "check that the photos show the person (the dataset doctor's flags, RUN/ingest/doctor.json)")
# ... and when every checkpoint that learned the person breaks a bound.
OUT_OF_BOUNDS_FIXES = ("loosen the eval settings named",
                       "retrain with fewer steps (train.epochs), a lower train.learning_rate or dataset.grounding")


def violations(scores: dict, bounds) -> list[str]:
    """Each bound a checkpoint breaks, as 'leakage 0.400 > eval.max_leakage 0.2'."""
    out = []
    for key, setting, ceiling in BOUNDS:
        value, limit = scores.get(key), getattr(bounds, setting)
        if value is not None and (value > limit if ceiling else value < limit):
            out.append(f"{key} {value:.3f} {'>' if ceiling else '<'} eval.{setting} {limit:g}")
    return out


def too_faint(scores: dict, bounds) -> list[str]:
    """['likeness 0.050 < eval.min_likeness 0.3'] when the checkpoint has not learned the person, else []."""
    likeness, floor = scores.get("likeness"), bounds.min_likeness
    if likeness is None:
        return [f"likeness not counted (no trigger-prompt image was read) < eval.min_likeness {floor:g}"]
    return [f"likeness {likeness:.3f} < eval.min_likeness {floor:g}"] if likeness < floor else []


def recommend(rows: list[dict], bounds) -> dict:
    """{step, name, reason, rejected, try}: the pick among `rows` (`bounds` is the eval config section).
    When no checkpoint qualifies, step and name are None, `try` lists what to change and the reason ends
    with it (`with_fixes`)."""
    if not rows:
        return {"step": None, "name": None, "reason": "no checkpoint was evaluated", "rejected": {}, "try": []}
    rejected = {r["name"]: v for r in rows if (v := too_faint(r["scores"], bounds) + violations(r["scores"], bounds))}
    learned = [r for r in rows if not too_faint(r["scores"], bounds)]
    if not learned:
        return {"step": None, "name": None, "rejected": rejected, "try": list(NOT_LEARNED_FIXES),
                "reason": with_fixes(not_learned(rows, bounds), NOT_LEARNED_FIXES)}
    ok = [r for r in learned if r["name"] not in rejected]
    if not ok:
        best = max(learned, key=_likeness_then_early)
        finding = (f"none of the checkpoints that learned the person ({len(learned)} of {len(rows)}) stays within "
                   f"the bounds; the likeliest, {best['name']} (likeness {_fmt(best['scores']['likeness'])}), breaks "
                   f"{'; '.join(rejected[best['name']])}")
        return {"step": None, "name": None, "rejected": rejected, "try": list(OUT_OF_BOUNDS_FIXES),
                "reason": with_fixes(finding, OUT_OF_BOUNDS_FIXES)}
    pick = max(ok, key=_likeness_then_early)
    s = pick["scores"]
    unknown = [k for k, _, _ in BOUNDS if s.get(k) is None and k != "copy"]  # copy: only with held-out photos
    reason = (f"best likeness ({_fmt(s['likeness'])}) of the {len(ok)} of {len(rows)} checkpoints within the bounds "
              f"(likeness >= {bounds.min_likeness:g}, leakage {_fmt(s['leakage'])} <= {bounds.max_leakage:g}, "
              f"person in prompts without the trigger {_fmt(s['elsewhere'])} <= {bounds.max_elsewhere:g}, preservation "
              f"{_fmt(s['preservation'])} >= {bounds.min_preservation:g}"
              + (f", copy score {_fmt(s['copy'])} <= {bounds.max_copy:g}" if s.get("copy") is not None else "") + ")")
    if unknown:
        reason += f"; not counted, so not checked: {', '.join(unknown)}"
    if rejected:
        reason += f"; out of bounds: {', '.join(rejected)}"
    return {"step": pick["step"], "name": pick["name"], "reason": reason, "rejected": rejected, "try": []}


def with_fixes(finding: str, fixes) -> str:
    """'finding. Try: fix; fix' - the reason text; `finding` is its start (the report lists the fixes apart)."""
    return f"{finding}. Try: {'; '.join(fixes)}"


def not_learned(rows: list[dict], bounds) -> str:
    """What was found when every checkpoint is under eval.min_likeness: the likeliest one's number (and
    any other bound it breaks, which training harder may make worse)."""
    best = max(rows, key=_likeness_then_early)
    broken = violations(best["scores"], bounds)
    also = f"; it also breaks {'; '.join(broken)}" if broken else ""
    return (f"no checkpoint learned the person: the likeliest of the {len(rows)}, {best['name']}, draws them in "
            f"{_fmt(best['scores'].get('likeness'))} of trigger-prompt images, under eval.min_likeness "
            f"{bounds.min_likeness:g}{also}")


def _likeness_then_early(row: dict) -> tuple:
    likeness = row["scores"].get("likeness")
    return (-1.0 if likeness is None else likeness, -row["step"])


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


# ---------------------------------------------------------------- the LoRA a run's later commands load


def run_lora(rd) -> tuple[Path, str]:
    """(LoRA file, one line saying why) for the run folder `rd` (a RunDir): the checkpoint
    RUN/eval/metrics.json recommends; else the final LoRA (the last checkpoint when training stopped before
    exporting one), saying that eval has not run or recommended none. Raises LookalikeError naming the fix
    when the run holds no LoRA, or the recommended file is gone."""
    metrics = _read_metrics(rd)
    rec = metrics["recommendation"] if metrics else None
    if rec and rec.get("step") is not None:
        return _recommended(rd, metrics, rec)
    path = final_lora(rd)
    if path is None:
        raise LookalikeError(f"{rd.train_dir} holds no LoRA ({rd.lora.name} or {rd.checkpoints_dir.name}/step-*"
                             f".safetensors); train first: `lookalike train {rd.root}`, or give a file with "
                             "--lora PATH")
    what = "the final LoRA" if path == rd.lora else f"the last checkpoint ({path.name}; training exported no LoRA)"
    if rec is None:
        return path, f"{what} (not evaluated yet; run `lookalike eval {rd.root}`)"
    return path, f"{what} (eval recommended none: {rec['reason']})"


def _read_metrics(rd) -> dict | None:
    if not rd.eval_metrics.is_file():
        return None
    try:
        return json.loads(rd.eval_metrics.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LookalikeError(f"{rd.eval_metrics} cannot be read ({e}); run `lookalike eval {rd.root}` again") from None


def _recommended(rd, metrics: dict, rec: dict) -> tuple[Path, str]:
    """The recommended checkpoint's file: the step's snapshot, or the final export when eval read that one
    (find_checkpoints takes lora.safetensors for a step no snapshot was kept of)."""
    row = next((r for r in metrics.get("checkpoints", []) if r.get("step") == rec["step"]), {})
    path = rd.lora if Path(row.get("file", "")).name == rd.lora.name else rd.checkpoint(rec["step"])
    if not path.is_file():
        raise LookalikeError(f"eval recommended {rec['name']} but {path} is gone; run `lookalike eval {rd.root}` "
                             "again to choose among the checkpoints saved now, or give a file with --lora PATH")
    likeness = (row.get("scores") or {}).get("likeness")
    why = f"{rec['name']}, recommended by `lookalike eval` (likeness {_fmt(likeness)}; {rd.eval_metrics})"
    if rd.lora.is_file() and rd.lora.stat().st_mtime > rd.eval_metrics.stat().st_mtime:
        why += f"; training has saved since: run `lookalike eval {rd.root}` again"
    return path, why


def final_lora(rd) -> Path | None:
    """RUN/train/lora.safetensors, else the highest-step checkpoint, else None."""
    if rd.lora.is_file():
        return rd.lora
    snapshots = sorted(rd.checkpoints_dir.glob("step-*.safetensors")) if rd.checkpoints_dir.is_dir() else []
    return snapshots[-1] if snapshots else None
