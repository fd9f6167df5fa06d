"""Which checkpoint to use: the best likeness among those that keep leakage and preservation in bounds.

Pure functions on metrics.json rows (each with `scores`: likeness, leakage, elsewhere, preservation,
each 0-1 or None). A None score could not be counted (e.g. no other person was drawn, so leakage has
nothing to count) and does not disqualify; the reason says so. Ties in likeness go to the earlier step:
fewer steps have had less chance to overwrite what the base model knew.
"""

from __future__ import annotations

# (score, bound setting, the bound is a ceiling?) in the order a reader checks them
BOUNDS = (("leakage", "max_leakage", True), ("elsewhere", "max_elsewhere", True),
          ("preservation", "min_preservation", False))


def violations(scores: dict, bounds) -> list[str]:
    """Each bound a checkpoint breaks, as 'leakage 0.400 > eval.max_leakage 0.2'."""
    out = []
    for key, setting, ceiling in BOUNDS:
        value, limit = scores.get(key), getattr(bounds, setting)
        if value is not None and (value > limit if ceiling else value < limit):
            out.append(f"{key} {value:.3f} {'>' if ceiling else '<'} eval.{setting} {limit:g}")
    return out


def recommend(rows: list[dict], bounds) -> dict:
    """{step, name, reason, rejected}: the pick among `rows` (`bounds` is the eval config section)."""
    if not rows:
        return {"step": None, "name": None, "reason": "no checkpoint was evaluated", "rejected": {}}
    rejected = {r["name"]: v for r in rows if (v := violations(r["scores"], bounds))}
    ok = [r for r in rows if r["name"] not in rejected]
    if not ok:
        best = max(rows, key=_likeness_then_early)
        return {"step": None, "name": None, "rejected": rejected,
                "reason": f"none of the {len(rows)} checkpoints stays within the bounds; the likeliest, "
                          f"{best['name']} (likeness {_fmt(best['scores']['likeness'])}), breaks "
                          f"{'; '.join(rejected[best['name']])}. Loosen those eval settings, or retrain with fewer "
                          "steps, a lower learning rate or dataset.grounding"}
    pick = max(ok, key=_likeness_then_early)
    s = pick["scores"]
    unknown = [k for k, _, _ in BOUNDS if s.get(k) is None]
    reason = (f"best likeness ({_fmt(s['likeness'])}) of the {len(ok)} of {len(rows)} checkpoints within the bounds "
              f"(leakage {_fmt(s['leakage'])} <= {bounds.max_leakage:g}, person in prompts without the trigger "
              f"{_fmt(s['elsewhere'])} <= {bounds.max_elsewhere:g}, preservation {_fmt(s['preservation'])} >= "
              f"{bounds.min_preservation:g})")
    if unknown:
        reason += f"; not counted, so not checked: {', '.join(unknown)}"
    if rejected:
        reason += f"; out of bounds: {', '.join(rejected)}"
    return {"step": pick["step"], "name": pick["name"], "reason": reason, "rejected": rejected}


def _likeness_then_early(row: dict) -> tuple:
    likeness = row["scores"]["likeness"]
    return (-1.0 if likeness is None else likeness, -row["step"])


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"
