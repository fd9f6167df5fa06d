"""`lookalike demo`: teach the toy FLUX who Arthur is, on a CPU, and count whether it worked.

    RUN/photos/arthur-000.png + .txt      Arthur's photos, captioned like the seed
    RUN/photos-grace/grace-000.png + .txt with `people=2`: Grace's photos (dataset.people), a fifth of
                                          them with Arthur too
    RUN/cache/, RUN/train/                the ordinary cache and train stages (toy preset)
    RUN/train/progress-*.gif              Arthur emerging, one frame per sampled epoch
    RUN/demo/base/, RUN/demo/lora/        the metric suite drawn without and with the LoRA (same seeds)
    RUN/demo/metrics.json, metrics.md     the numbers, base vs LoRA, and the scorer's own accuracy

Nothing here is special to the toy model but the dataset and the scorer: training is `train_stage`
with the `toy` preset, and every image comes from the one sampler.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DATASET_SEED = 7
PHOTOS = 40
OTHERS = 40  # grounding scenes of other people trained beside Arthur's photos (dataset.grounding)


def write_scenes(folder: Path, scenes, prefix: str, trigger: str = "Arthur", second: str = "Grace") -> list[Path]:
    """Each scene as `folder/<prefix>-NNN.png` (numbers as wide as needed to sort) with its caption beside it."""
    from lookalike.caption.store import write_text_atomic
    from lookalike.toy.scenes import caption, render

    scenes = list(scenes)
    width = max(3, len(str(len(scenes) - 1)))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, scene in enumerate(scenes):
        paths.append(folder / f"{prefix}-{i:0{width}d}.png")
        render(scene).save(paths[-1])
        write_text_atomic(paths[-1].with_suffix(".txt"), caption(scene, trigger, second) + "\n")
    return paths


def write_dataset(folder: Path, n: int = PHOTOS, seed: int = DATASET_SEED, trigger: str = "Arthur") -> list[Path]:
    """Arthur's 'phone photos': n scenes with him, each a PNG with its caption beside it."""
    from lookalike.toy.scenes import random_scene

    scenes = [random_scene(random.Random(f"arthur:{seed}:{i}"), arthur=True) for i in range(n)]
    return write_scenes(folder, scenes, "arthur", trigger)


def write_second(folder: Path, n: int = PHOTOS, seed: int = DATASET_SEED, trigger: str = "Arthur",
                 second: str = "Grace", with_arthur: float = 0.2) -> list[Path]:
    """Grace's 'phone photos': n scenes with her, a share `with_arthur` of them with Arthur too (captions
    name both), each a PNG with its caption beside it."""
    from lookalike.toy.scenes import random_scene

    scenes = []
    for i in range(n):
        rng = random.Random(f"grace:{seed}:{i}")
        scenes.append(random_scene(rng, arthur=rng.random() < with_arthur, grace=True))
    return write_scenes(folder, scenes, "grace", trigger, second)


def write_others(folder: Path, n: int, seed: int = DATASET_SEED) -> list[Path]:
    """n captioned scenes of other people (no Arthur): grounding photos for `dataset.grounding`."""
    from lookalike.toy.scenes import random_scene

    return write_scenes(folder, [random_scene(random.Random(f"others:{seed}:{i}")) for i in range(n)], "other")


@dataclass
class Drawn:
    """The suite drawn by one model: images and scorer readings of each group (plain, trigger; with a
    second person, second and both)."""

    images: dict
    readings: dict

    def metrics(self, suite) -> dict:
        from lookalike.toy.metrics import model_metrics

        r = self.readings
        return model_metrics(suite, r["plain"], r["trigger"], r.get("second", ()), r.get("both", ()))


def suite_groups(suite) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The toy suite's prompt groups in drawing order, as `lookalike eval` names them (empty ones left out)."""
    groups = (("plain", suite.plain), ("trigger", suite.trigger), ("second", suite.second), ("both", suite.both))
    return tuple((name, tuple(p.text for p in prompts)) for name, prompts in groups if prompts)


def draw_suite(ready, suite, scorer, folder: Path | None = None) -> Drawn:
    """Draw every suite prompt x seed with the one sampler (through `lookalike eval`'s `draw`), read each
    image with the scorer."""
    from lookalike.evaluate.run import draw
    from lookalike.evaluate.suite import EvalSuite

    d = draw(ready, EvalSuite(suite_groups(suite), tuple(suite.seeds)), scorer, folder)
    return Drawn(d.images, d.readings)


def evaluate_lora(cfg, lora_path: Path | None, suite, folder: Path | None = None, scorer=None) -> dict:
    """Base model and base + LoRA on the same suite and seeds: the metrics of both and preservation."""
    from lookalike.config import LoraSpec
    from lookalike.generate import prepare_pipeline, settings_from_config
    from lookalike.models.lora import apply_loras
    from lookalike.models.source import model_source
    from lookalike.runtime import decide_runtime
    from lookalike.toy.metrics import preservation
    from lookalike.toy.scorer import Scorer

    scorer = scorer or Scorer.load()
    runtime = decide_runtime(cfg.runtime.device, cfg.runtime.dtype)
    texts = [text for _, group in suite_groups(suite) for text in group]
    ready = prepare_pipeline(model_source(cfg.model), runtime, texts, settings_from_config(cfg.generate))
    started = time.time()
    base = draw_suite(ready, suite, scorer, folder / "base" if folder else None)
    result = {"base": base.metrics(suite)}
    if lora_path is not None:
        apply_loras(ready.pipe, [LoraSpec(path=str(lora_path))])
        tuned = draw_suite(ready, suite, scorer, folder / "lora" if folder else None)
        result["lora"] = tuned.metrics(suite)
        result["preservation"] = preservation(base.readings["plain"], tuned.readings["plain"],
                                              base.images["plain"], tuned.images["plain"])
    result["images"] = len(texts) * len(suite.seeds) * (2 if lora_path else 1)
    result["sampling_seconds"] = round(time.time() - started, 1)
    return result


def demo_config(photos: Path, overrides: list[str]):
    """The toy preset with the demo's photos, plus the user's --set overrides."""
    from lookalike.config import load_config

    cfg = load_config(None, preset="toy", overrides=overrides)
    cfg.dataset.photos = str(photos.resolve())
    return cfg


def run_demo(run: Path, overrides: list[str] | None = None, suite_size: tuple[int, int, int] = (10, 10, 4),
             others: int = OTHERS, people: int = 1) -> dict:
    """Dataset, cache, train, then the metric suite base vs LoRA. Returns what metrics.json holds.

    `others` captioned scenes of other people go to RUN/others as `dataset.grounding` (0: Arthur's photos
    alone, the write-up's way); with `ground.count` set, the base model draws that many grounding images too.
    With `people=2` the LoRA learns Grace too (RUN/photos-grace as dataset.people, class phrase 'a woman')
    and the suite adds prompts naming her, and both.
    """
    from lookalike.config import save_config
    from lookalike.data.cache import build_cache
    from lookalike.rundir import RunDir, write_json_atomic
    from lookalike.toy.metrics import make_suite, markdown_table
    from lookalike.train.run import train_stage

    if people not in (1, 2):
        from lookalike.errors import ConfigError

        raise ConfigError(f"--people {people}: the toy world has two people a LoRA can learn, Arthur and Grace; "
                          "give 1 or 2")
    rd = RunDir(run)
    started = time.time()
    cfg = demo_config(run / "photos", list(overrides or []))
    write_dataset(run / "photos", trigger=cfg.dataset.trigger)
    if others:
        write_others(run / "others", others)
        cfg.dataset.grounding = str((run / "others").resolve())
    if people == 2 and not cfg.dataset.people:
        from lookalike.config.schema import PersonConfig

        write_second(run / "photos-grace", trigger=cfg.dataset.trigger)
        cfg.dataset.people = [PersonConfig(trigger="Grace", photos=str((run / "photos-grace").resolve()),
                                           class_phrase="a woman")]
    save_config(cfg, rd.config_path)
    if cfg.ground.count:  # grounding images drawn by the base model (lookalike.data.ground)
        from lookalike.data.ground import ground_stage

        ground_stage(cfg, rd)
    build_cache(cfg, rd)
    t = time.time()
    report = train_stage(cfg, rd)
    train_seconds = time.time() - t
    plain, trigger, seeds = suite_size
    suite = make_suite(plain=plain, trigger=trigger, seeds=seeds, trigger_word=cfg.dataset.trigger,
                       second=cfg.dataset.people[0].trigger if cfg.dataset.people else None)
    folder = rd.stage("demo")
    result = evaluate_lora(cfg, report.lora, suite, folder)
    result.update(steps=report.steps, train_seconds=round(train_seconds, 1),
                  total_seconds=round(time.time() - started, 1), lora_file=str(report.lora),
                  suite={"plain": plain, "trigger": trigger, "seeds": seeds}, others=others,
                  people=[p.trigger for p in cfg.dataset.everyone()])
    table = markdown_table(result["base"], result["lora"], result["preservation"])
    write_json_atomic(folder / "metrics.json", result)
    (folder / "metrics.md").write_text(table + "\n", encoding="utf-8")
    result["table"] = table
    return result
