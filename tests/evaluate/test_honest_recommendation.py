"""No recommendation for a run that never learned the person, and which LoRA a run's later commands load.

Pure tests of `recommend` and `run_lora` on hand-made rows and run folders (empty LoRA files: nothing
here reads their weights), and the report of a run whose eval recommended nothing.
"""

import html
import json
import os

import pytest

from lookalike.config import load_config
from lookalike.errors import ConfigError, LookalikeError
from lookalike.evaluate.recommend import NOT_LEARNED_FIXES, recommend, run_lora, with_fixes
from lookalike.evaluate.run import markdown
from lookalike.rundir import RunDir, write_json_atomic

BOUNDS = load_config(None).eval  # min_likeness 0.3, max_leakage 0.2, max_elsewhere 0.2, min_preservation 0.8


def row(step, likeness, leakage=0.0, elsewhere=0.0, preservation=1.0, file=None):
    return {"step": step, "name": f"step-{step:06d}", "file": file or f"train/checkpoints/step-{step:06d}.safetensors",
            "scores": {"likeness": likeness, "leakage": leakage, "elsewhere": elsewhere, "preservation": preservation},
            "lora": {"likeness": likeness}}


# ---------------------------------------------------------------- recommend


def test_default_floor_and_its_range():
    assert BOUNDS.min_likeness == 0.3
    assert load_config(None, overrides=["eval.min_likeness=0.5"]).eval.min_likeness == 0.5
    with pytest.raises(ConfigError, match="eval.min_likeness"):
        load_config(None, overrides=["eval.min_likeness=1.5"])


def test_nothing_learned_recommends_nothing_and_says_what_to_try():
    """A LoRA that changed nothing keeps every bound: it must still not be recommended."""
    rec = recommend([row(100, 0.0), row(200, 0.05), row(300, 0.0)], BOUNDS)
    assert rec["step"] is None and rec["name"] is None
    assert rec["reason"].startswith("no checkpoint learned the person: the likeliest of the 3, step-000200, "
                                    "draws them in 0.050 of trigger-prompt images, under eval.min_likeness 0.3")
    for setting in ("train.epochs", "train.learning_rate", "dataset.trigger"):
        assert setting in rec["reason"]
    assert rec["try"] == list(NOT_LEARNED_FIXES) and rec["reason"].endswith(with_fixes("", NOT_LEARNED_FIXES))
    assert rec["rejected"]["step-000100"] == ["likeness 0.000 < eval.min_likeness 0.3"]
    assert set(rec["rejected"]) == {"step-000100", "step-000200", "step-000300"}


def test_nothing_learned_also_names_the_other_bounds_the_likeliest_breaks():
    rec = recommend([row(100, 0.1, preservation=0.5)], BOUNDS)
    assert "no checkpoint learned the person" in rec["reason"]
    assert "it also breaks preservation 0.500 < eval.min_preservation 0.8" in rec["reason"]


def test_mixed_picks_only_among_checkpoints_over_the_floor():
    rows = [row(100, 0.1), row(200, 0.3), row(300, 0.6, leakage=0.5), row(400, 0.45)]
    rec = recommend(rows, BOUNDS)
    assert rec["step"] == 400 and rec["try"] == []
    assert "likeness >= 0.3" in rec["reason"]
    assert rec["rejected"] == {"step-000100": ["likeness 0.100 < eval.min_likeness 0.3"],
                               "step-000300": ["leakage 0.500 > eval.max_leakage 0.2"]}
    assert recommend([row(100, 0.1), row(200, 0.3)], BOUNDS)["step"] == 200  # the floor itself is enough


def test_learned_but_out_of_bounds_says_so_not_that_nothing_was_learned():
    """The one clean checkpoint is under the floor: nothing is recommended, for the bound the learned one breaks."""
    rec = recommend([row(100, 0.1), row(200, 0.8, elsewhere=0.5)], BOUNDS)
    assert rec["step"] is None and "no checkpoint learned" not in rec["reason"]
    assert "step-000200" in rec["reason"] and "eval.max_elsewhere" in rec["reason"] and rec["try"]


def test_a_likeness_that_could_not_be_counted_is_refused():
    assert recommend([row(100, None), row(200, 0.4)], BOUNDS)["step"] == 200
    rec = recommend([row(100, None)], BOUNDS)
    assert rec["step"] is None and "draws them in n/a of trigger-prompt images" in rec["reason"]
    assert rec["rejected"]["step-000100"][0].startswith("likeness not counted")


def test_a_zero_floor_keeps_the_old_behaviour():
    anything = load_config(None, overrides=["eval.min_likeness=0"]).eval
    assert recommend([row(100, 0.0), row(200, 0.0)], anything)["step"] == 100


def test_eval_prints_no_recommendation_with_the_reason():
    scores = {"likeness": 0.0, "leakage": None, "elsewhere": 0.0, "preservation": None}
    rec = recommend([row(100, 0.0)], BOUNDS)
    text = markdown({"base": {"scores": scores}, "checkpoints": [row(100, 0.0)], "recommendation": rec})
    assert text.splitlines()[-1] == f"no checkpoint recommended: {rec['reason']}"
    assert "Try: train longer (raise train.epochs" in text


# ---------------------------------------------------------------- run_lora


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_metrics(rd, rows, bounds=BOUNDS):
    write_json_atomic(rd.eval_metrics, {"checkpoints": rows, "recommendation": recommend(rows, bounds)})


def test_run_lora_without_any_lora_names_the_fix(tmp_path):
    rd = RunDir(tmp_path / "run")
    with pytest.raises(LookalikeError, match=r"holds no LoRA .*`lookalike train .*run`.*--lora PATH"):
        run_lora(rd)


def test_run_lora_before_eval_is_the_final_lora(tmp_path):
    rd = RunDir(tmp_path / "run")
    touch(rd.checkpoint(100))
    touch(rd.lora)
    path, why = run_lora(rd)
    assert path == rd.lora
    assert why == f"the final LoRA (not evaluated yet; run `lookalike eval {rd.root}`)"


def test_run_lora_is_the_last_checkpoint_when_training_exported_none(tmp_path):
    rd = RunDir(tmp_path / "run")
    touch(rd.checkpoint(100))
    touch(rd.checkpoint(1200))
    path, why = run_lora(rd)
    assert path == rd.checkpoint(1200) and "the last checkpoint (step-001200.safetensors" in why


def test_run_lora_is_the_recommended_checkpoint(tmp_path):
    rd = RunDir(tmp_path / "run")
    for step in (100, 200):
        touch(rd.checkpoint(step))
    touch(rd.lora)
    write_metrics(rd, [row(100, 0.5), row(200, 0.8)])
    path, why = run_lora(rd)
    assert path == rd.checkpoint(200)
    assert why.startswith("step-000200, recommended by `lookalike eval` (likeness 0.800") and "\n" not in why


def test_run_lora_is_the_final_export_when_eval_read_that_one(tmp_path):
    """No snapshot of the last step was kept: eval read lora.safetensors for it."""
    rd = RunDir(tmp_path / "run")
    touch(rd.checkpoint(100))
    touch(rd.lora)
    write_metrics(rd, [row(100, 0.4), row(150, 0.8, file=str(rd.lora))])
    assert run_lora(rd)[0] == rd.lora


def test_run_lora_when_eval_recommended_none(tmp_path):
    rd = RunDir(tmp_path / "run")
    touch(rd.lora)
    write_metrics(rd, [row(100, 0.0)])
    path, why = run_lora(rd)
    assert path == rd.lora
    assert why.startswith("the final LoRA (eval recommended none: no checkpoint learned the person")


def test_run_lora_refuses_a_recommended_file_that_is_gone(tmp_path):
    rd = RunDir(tmp_path / "run")
    touch(rd.lora)
    write_metrics(rd, [row(100, 0.5)])
    with pytest.raises(LookalikeError, match=r"recommended step-000100 but .*step-000100.safetensors is gone; "
                                             r"run `lookalike eval"):
        run_lora(rd)


def test_run_lora_says_when_training_saved_after_eval(tmp_path):
    rd = RunDir(tmp_path / "run")
    touch(rd.checkpoint(100))
    touch(rd.lora)
    write_metrics(rd, [row(100, 0.5)])
    later = rd.eval_metrics.stat().st_mtime + 60
    os.utime(rd.lora, (later, later))
    assert "training has saved since" in run_lora(rd)[1]


# ---------------------------------------------------------------- the report


def evaluated_run(tmp_path, rows, **extra):
    """A run folder holding only RUN/eval/metrics.json, shaped as `evaluate_run` writes it."""
    rd = RunDir(tmp_path / "run")
    scores = {"likeness": 0.0, "leakage": None, "elsewhere": 0.0, "preservation": None}
    metrics = {"judge": {"judge": "toy scorer", "preservation": "attribute agreement"},
               "suite": {"seeds": [0], "groups": ["trigger", "plain"]},
               "base": {"metrics": {"likeness": 0.0, "prompt_following": 0.8}, "scores": scores},
               "checkpoints": [dict(r, lora={"likeness": r["scores"]["likeness"], "prompt_following": 0.8})
                               for r in rows],
               "recommendation": recommend(rows, BOUNDS),
               "bounds": {"min_likeness": 0.3, "max_leakage": 0.2, "max_elsewhere": 0.2, "min_preservation": 0.8},
               "images": 6, **extra}
    write_json_atomic(rd.eval_metrics, metrics)
    return rd, metrics


def test_report_of_a_run_that_learned_nothing_has_no_success_box(tmp_path):
    from lookalike.evaluate.report import write_report

    rd, metrics = evaluated_run(tmp_path, [row(4, 0.0), row(8, 0.0)])
    page = write_report(load_config(None, preset="toy"), rd).read_text()
    assert 'class="rec ok"' not in page and "Use <b>" not in page and "class=pick" not in page
    assert '<div class="rec none" id="recommendation"><b>No checkpoint recommended</b>: ' in page
    finding = metrics["recommendation"]["reason"].removesuffix(with_fixes("", NOT_LEARNED_FIXES))
    assert html.escape(finding) in page and "no checkpoint learned the person" in finding
    assert "What to try:" in page and all(f"<li>{html.escape(f)}</li>" in page for f in NOT_LEARNED_FIXES)
    assert page.count('<td class="num bad">0.000</td>') == 2  # each checkpoint's likeness, under the floor
    assert "step-000008 (the last; none is recommended) beside the base" in page


def test_report_of_a_recommending_run_keeps_the_green_box(tmp_path):
    from lookalike.evaluate.report import write_report

    rd, _ = evaluated_run(tmp_path, [row(4, 0.0), row(8, 0.6)])
    page = write_report(load_config(None, preset="toy"), rd).read_text()
    assert '<div class="rec ok" id="recommendation">Use <b>step-000008</b>' in page and 'class="rec none"' not in page


def test_report_reads_a_metrics_json_of_an_older_lookalike(tmp_path):
    """Before eval.min_likeness: no `try`, no likeness floor among the bounds."""
    from lookalike.evaluate.report import write_report

    rd, metrics = evaluated_run(tmp_path, [row(4, 0.5, leakage=0.9)])
    metrics["recommendation"].pop("try")
    del metrics["bounds"]["min_likeness"]
    write_json_atomic(rd.eval_metrics, metrics)
    page = write_report(load_config(None, preset="toy"), rd).read_text()
    assert 'class="rec none"' in page and html.escape(metrics["recommendation"]["reason"]) in page
    assert json.loads(rd.eval_metrics.read_text())["recommendation"]["step"] is None


def test_report_of_two_people_shows_each_ones_likeness_and_their_confusion(tmp_path):
    """The headline likeness is the worse of the two; the table adds each person's own and confusion."""
    from lookalike.evaluate.report import write_report

    rd, metrics = evaluated_run(tmp_path, [row(8, 0.55)])
    metrics["judge"]["main"] = "Arthur"
    two = {"likeness": 0.9, "likeness_both": 0.25, "confusion": 0.05, "people": {"Grace": {"likeness": 0.55}}}
    metrics["base"]["metrics"].update(likeness=0.0, people={"Grace": {"likeness": 0.0}}, confusion=0.0)
    metrics["checkpoints"][0]["lora"].update(two)
    write_json_atomic(rd.eval_metrics, metrics)
    page = write_report(load_config(None, preset="toy"), rd).read_text()
    heads = ("<th>likeness of Arthur</th><th>likeness of Grace</th><th>both found</th><th>confusion</th>")
    assert heads in page
    assert ('<td class="num">0.900</td><td class="num">0.550</td><td class="num">0.250</td><td class="num">0.050</td>'
            in page)
