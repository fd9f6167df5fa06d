"""The `lookalike` command: one verb per stage.

Heavy libraries (torch, diffusers) are imported inside the verbs, so `lookalike --help` is instant.
A `LookalikeError` is a user mistake: it is printed as one clear message, without a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from lookalike.errors import LookalikeError
from lookalike.toy.demo import OTHERS

app = typer.Typer(
    help="Teach FLUX what one person looks like from 30-50 photos, and measure whether it worked.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

PRESET_HELP = ("Preset to start from: flux1-dev, flux2-klein-4b, flux2-klein-9b, flux2-dev (real models, GPU), "
               "tiny, tiny-flux2-klein, tiny-flux2 (random-weight twins, CPU) or toy (the pretrained toy FLUX, CPU).")
CONFIG_HELP = "A run config YAML; its values override the preset's."
SET_HELP = "Override one setting, e.g. --set generate.steps=20 (repeatable)."


def _setup_logging(verbose: bool) -> None:
    import warnings

    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
    )
    for noisy in ("diffusers", "transformers", "huggingface_hub", "httpx", "httpx2", "openai"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if not verbose:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
        # diffusers stacks a second LoRA through peft, which warns about it: stacking is the point here.
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        import os

        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logs and library warnings.")) -> None:
    _setup_logging(verbose)


def _quiet_libraries() -> None:
    """Silence diffusers' and transformers' own progress bars: we show one bar for the whole job."""
    if logging.getLogger().level <= logging.DEBUG:
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def _load_config(preset, config, overrides, run: Path | None = None):
    from lookalike.config import load_config
    from lookalike.rundir import RunDir

    if config is None and run is not None and RunDir(run).config_path.exists():
        config = RunDir(run).config_path
    return load_config(config, preset=preset, overrides=list(overrides or []))


@app.command()
def generate(
    prompts: Optional[list[str]] = typer.Argument(None, help='Prompts, e.g. "Arthur as a wizard". "" is the empty prompt.'),
    prompts_file: Optional[Path] = typer.Option(None, "--prompts-file", "-f", help="A text file with one prompt per line."),
    seed: Optional[list[int]] = typer.Option(None, "--seed", "-s", help="Seed (repeatable); default generate.seeds."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps (generate.steps)."),
    guidance: Optional[float] = typer.Option(None, help="Guidance value fed to the guidance embedding: FLUX.1, FLUX.2 [dev] (generate.guidance)."),
    cfg_scale: Optional[float] = typer.Option(None, "--cfg", help="Classifier-free guidance scale: FLUX.2 [klein], Z-Image, Qwen-Image (generate.cfg)."),
    negative: Optional[str] = typer.Option(None, "--negative", help="Negative prompt for classifier-free guidance (generate.negative_prompt)."),
    width: Optional[int] = typer.Option(None, help="Width in pixels, a multiple of 16 (generate.width)."),
    height: Optional[int] = typer.Option(None, help="Height in pixels, a multiple of 16 (generate.height)."),
    lora: Optional[list[str]] = typer.Option(
        None, "--lora", "-l", help="LoRA file as PATH or PATH:WEIGHT, repeatable to stack (identity + style); replaces generate.loras."
    ),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda, cuda:N or mps (runtime.device)."),
    preset: Optional[str] = typer.Option(None, help=PRESET_HELP),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    run: Optional[Path] = typer.Option(None, help="Run directory: use its config.yaml and write under RUN/generate/."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: RUN/generate/<time> or runs/generate/<time>)."),
) -> None:
    """Draw images with the base model and zero, one or several LoRAs: the one sampler."""
    from lookalike.generate import read_prompts
    from lookalike.models.lora import parse_lora_arg

    overrides = list(set_ or [])
    for key, value in (("steps", steps), ("guidance", guidance), ("cfg", cfg_scale), ("width", width),
                       ("height", height)):
        if value is not None:
            overrides.append(f"generate.{key}={value}")
    if seed:
        overrides.append(f"generate.seeds={list(seed)}")
    if device:
        overrides.append(f"runtime.device={device}")
    cfg = _load_config(preset, config, overrides, run)
    if negative is not None:
        cfg.generate.negative_prompt = negative
    if lora:
        cfg.generate.loras = [parse_lora_arg(x) for x in lora]
    elif run is not None and not cfg.generate.loras:  # a run's images are drawn with the run's LoRA
        from lookalike.config import LoraSpec
        from lookalike.evaluate.recommend import final_lora, run_lora
        from lookalike.rundir import RunDir

        rd = RunDir(run)
        if final_lora(rd) is None and not rd.eval_metrics.is_file():
            console.print(f"LoRA: none yet in {rd.root}: drawing with the base model (train first, or give --lora PATH)",
                          markup=False, highlight=False, soft_wrap=True)
        else:
            path, why = run_lora(rd)
            cfg.generate.loras = [LoraSpec(path=str(path))]
            console.print(f"LoRA: {path}, {why}", markup=False, highlight=False, soft_wrap=True)
    texts = read_prompts(prompts or [], prompts_file)
    folder = _output_folder(run, out)
    _run_generate(cfg, texts, folder)


def _output_folder(run: Path | None, out: Path | None) -> Path:
    from lookalike.rundir import RunDir, ensure_writable

    target = out if out is not None else Path(run if run is not None else "runs") / "generate"
    ensure_writable(target, "the output folder", "give a folder you can write to with --out")
    if out is not None:
        return out
    return RunDir(run if run is not None else "runs").new_stage_folder("generate")


def _run_generate(cfg, texts: list[str], folder: Path) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from lookalike.config import save_config
    from lookalike.generate import generate_to_folder
    from lookalike.rundir import RunDir

    _quiet_libraries()
    total = len(texts) * len(cfg.generate.seeds)
    started = time.time()
    columns = (TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("generate", total=total)
        paths = generate_to_folder(cfg, texts, folder, on_sample=lambda s: progress.advance(task))
    save_config(cfg, folder / "config.yaml")
    RunDir(folder.parent).write_manifest(
        folder, "generate", prompts=texts, seeds=cfg.generate.seeds, images=[p.name for p in paths],
        grid="grid.png", seconds=round(time.time() - started, 2),
    )
    console.print(f"[green]wrote {len(paths)} image(s) and grid.png to[/green] {folder}")
    print(folder / "grid.png")


RUN_HELP = "Run directory: holds config.yaml, the cache, checkpoints, samples and the LoRA."
PHOTOS_OPTION = typer.Option(None, help="Folder of photos with a caption .txt beside each (dataset.photos).")
TRIGGER_OPTION = typer.Option(None, help="The word that names the person (dataset.trigger).")


def _prepare_run(run: Path, photos, trigger, preset, config, overrides, resume: bool = False, training: bool = True):
    """(config, RunDir) for a stage verb: see lookalike.config.run. Nothing is written until the stage writes."""
    from lookalike.config.run import prepare_run
    from lookalike.train.run import is_child_process

    if is_child_process():  # a DDP rank Lightning started: rank 0 has already checked and saved the config
        from lookalike.config import load_config
        from lookalike.rundir import RunDir

        return load_config(RunDir(run).config_path), RunDir(run)
    _hold(run)
    return prepare_run(run, photos, trigger, preset, config, list(overrides or []), resume=resume, training=training)


_held = contextlib.ExitStack()  # the run folder locks this command holds; `main` releases them when it ends


def _hold(run: Path) -> None:
    """Hold RUN's write lock until this command ends: a second command writing the same run (another
    terminal, the web app's job) is refused with who holds it (lookalike.rundir.hold)."""
    import shlex

    from lookalike.rundir import hold

    _held.enter_context(hold(run, shlex.join(["lookalike", *sys.argv[1:]])))


@app.command()
def ingest(
    photos: Path = typer.Argument(..., help="Folder of the person's photos (JPEG, PNG, WebP, HEIC, ...)."),
    run: Optional[Path] = typer.Option(None, help="Run directory (default runs/<folder name>); the record goes to RUN/ingest/."),
    reference: Optional[str] = typer.Option(
        None, help="Reference photo of the person: a file or a photo's name (caption.reference). "
        "Default: the face found in most photos."),
    trigger: Optional[str] = TRIGGER_OPTION,
    preset: Optional[str] = typer.Option(None, help=PRESET_HELP),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    person: Optional[str] = typer.Option(
        None, "--person", help="Check another person's folder (one of dataset.people, by trigger) instead; the "
        "record and their photos.yaml go to RUN/people/<trigger>/."),
) -> None:
    """Check every photo: readable and upright, duplicates, blur, size, faces, and whether the person is in it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from lookalike.ingest.doctor import candidate_files, check_folder
    from lookalike.ingest.stage import ingest_stage, print_report

    folder = check_folder(photos)
    run = run if run is not None else Path("runs") / folder.resolve().name
    overrides = list(set_ or []) + ([f"caption.reference={reference}"] if reference else [])
    cfg, rd = _prepare_run(run, folder, trigger, preset, config, overrides, training=False)
    if person is not None:  # another person's folder: their record goes to RUN/people/<trigger>/
        from lookalike.data.selection import person_index, person_runs

        view, sub = person_runs(cfg, rd)[person_index(cfg, person)]
        folder = check_folder(view.dataset.photos)
        rd.save_config()  # the run's own settings (its people), as any stage writes them with its first file
        cfg, rd = view, sub
    with Progress(TextColumn("checking photos"), BarColumn(), MofNCompleteColumn(), console=console, transient=True) as bar:
        task = bar.add_task("ingest", total=len(candidate_files(folder)))
        report, path = ingest_stage(cfg, rd, on_photo=lambda _: bar.advance(task))
    print_report(report, Console())
    console.print(f"[green]checked {len(report.photos)} files[/green]: {len(report.usable)} usable; record: {path}")
    if not report.usable:
        from lookalike.errors import ConfigError

        raise ConfigError(f"none of the {len(report.photos)} files in {folder} can be used (reasons in {path}); "
                          "add photos Pillow can open (JPEG, PNG, WebP, HEIC)")


@app.command()
def caption(
    run: Path = typer.Argument(..., help=RUN_HELP),
    photos: Optional[Path] = PHOTOS_OPTION,
    trigger: Optional[str] = TRIGGER_OPTION,
    reference: Optional[str] = typer.Option(None, help="Reference photo sent first with every photo: a file or a photo's name (caption.reference)."),
    provider: Optional[str] = typer.Option(None, help="xai, openai, gemini, ollama, vllm or custom (caption.provider)."),
    model: Optional[str] = typer.Option(None, help="Vision model name (caption.model)."),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible base URL (caption.base_url)."),
    concurrency: Optional[int] = typer.Option(None, help="Requests in flight at once (caption.concurrency)."),
    api_key_env: Optional[str] = typer.Option(None, help="Environment variable holding the API key (caption.api_key_env)."),
    env_file: Optional[Path] = typer.Option(None, help="A .env file to read the API key from (never written anywhere)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the requests, tokens and cost it would take; send nothing."),
    person: Optional[str] = typer.Option(
        None, help="Caption another person's folder (one of dataset.people, by trigger word): their reference first, "
        "everyone else's beside it; records in RUN/people/<trigger>/."),
    preset: Optional[str] = typer.Option(None, help=PRESET_HELP),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Caption the photos with a vision-language model, a reference photo of the person sent first each time."""
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from lookalike.caption.agent import caption_stage, person_view
    from lookalike.data.selection import person_index

    overrides = list(set_ or [])
    for key, value in (("reference", reference), ("provider", provider), ("model", model), ("base_url", base_url),
                       ("concurrency", concurrency), ("api_key_env", api_key_env)):
        if value is not None:
            overrides.append(f"caption.{key}={json.dumps(value)}")
    cfg, rd = _prepare_run(run, photos, trigger, preset, config, overrides, training=False)
    if person is not None:
        cfg, rd = person_view(cfg, rd, person_index(cfg, person))
    if dry_run:
        report = caption_stage(cfg, rd, env_file, dry_run=True)
        est = report.estimate
        cost = (f"about ${est['cost_usd']:.4f}" if est["cost_usd"] is not None else
                "unknown (set caption.price_in and caption.price_out, USD per million tokens)")
        console.print(f"dry run: {est['requests']} request(s) to {report.endpoint.model} at {report.endpoint.base_url}; "
                      f"about {est['input_tokens']} input and {est['output_tokens']} output tokens; cost {cost}. "
                      f"{report.actions['cached']} cached, {report.actions['user']} with the user's own caption, "
                      f"{report.actions['restore']} restored from the record. Nothing was sent.")
        print(json.dumps(est))
        return
    columns = (TextColumn("captioning"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("caption", total=None)
        report = caption_stage(cfg, rd, env_file, on_photo=lambda _: bar.advance(task))
    _print_captions(report)


def _print_captions(report) -> None:
    from rich.markup import escape

    a = report.actions
    console.print(f"[green]{len(report.records)} photos[/green]: {a['request']} sent to {report.endpoint.model} "
                  f"({report.requests} requests, {report.usage['prompt_tokens']} input + "
                  f"{report.usage['completion_tokens']} output tokens), {a['cached']} cached, {a['restore']} restored, "
                  f"{a['user']} with the user's own caption; {report.seconds:.1f} s")
    for record in report.flagged:
        console.print(f"  [yellow]{escape(record.photo)}[/yellow]: {escape('; '.join(record.flags) or 'no caption')}")
    console.print(f"review the captions: {report.review}")
    print(report.review)


@app.command()
def ground(
    run: Path = typer.Argument(..., help=RUN_HELP),
    count: Optional[int] = typer.Option(None, help="Images to draw (ground.count); default the run's setting."),
    photos: Optional[Path] = PHOTOS_OPTION,
    trigger: Optional[str] = TRIGGER_OPTION,
    preset: Optional[str] = typer.Option(None, help=PRESET_HELP),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Draw grounding images of other people with the base model, from the captions with a class phrase for the
    trigger; training keeps them as the base model drew them. Re-runs draw only what is missing."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from lookalike.data.ground import ground_stage

    _quiet_libraries()
    overrides = list(set_ or []) + ([f"ground.count={count}"] if count is not None else [])
    cfg, rd = _prepare_run(run, photos, trigger, preset, config, overrides, training=False)
    columns = (TextColumn("drawing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("ground", total=None)
        report = ground_stage(cfg, rd, on_image=lambda n, total: bar.update(task, completed=n, total=total))
    console.print(f"[green]{report.images} grounding images[/green] ({report.drawn} drawn, {report.reused} kept) in "
                  f"{report.folder}")
    print(report.folder)


@app.command()
def fit(
    photos: Path = typer.Argument(..., help="Folder of the person's photos (30-50 work well; .txt captions beside them are used as they are)."),
    trigger: Optional[str] = typer.Option(None, help="The word that names the person, e.g. Arthur (dataset.trigger); needed for a new run."),
    reference: Optional[str] = typer.Option(None, help="Reference photo of the person for captioning (default: the doctor's pick)."),
    run: Optional[Path] = typer.Option(None, help="Run directory (default runs/<photo folder name>)."),
    preset: Optional[str] = typer.Option(None, help=PRESET_HELP),
    provider: Optional[str] = typer.Option(None, help="Captioning endpoint: xai, openai, gemini, ollama, vllm or custom (caption.provider)."),
    model: Optional[str] = typer.Option(None, help="Vision model name (caption.model)."),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible base URL (caption.base_url)."),
    api_key_env: Optional[str] = typer.Option(None, help="Environment variable holding the API key (caption.api_key_env)."),
    env_file: Optional[Path] = typer.Option(None, help="A .env file to read the API key from (never written anywhere)."),
    steps: Optional[int] = typer.Option(None, min=1, help="Train this many optimiser steps (train.max_steps)."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Train this many passes over the photos (train.epochs)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before paying for captions or training."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda, cuda:N or mps (runtime.device)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """From a folder of photos to a LoRA and a report: ingest, caption, cache, train, eval, report.

    Each stage is skipped when its outputs are current, so the same command again continues after a
    failure or Ctrl-C without paying twice."""
    import json
    import shlex

    from lookalike.ingest.doctor import check_folder
    from lookalike.pipeline import FitOptions, fit as run_fit, steps_epochs
    from lookalike.toy.pretrain import quiet_text_libraries

    _quiet_libraries()
    quiet_text_libraries()
    folder = check_folder(photos)
    run = run if run is not None else Path("runs") / folder.resolve().name
    overrides = list(set_ or []) + steps_epochs(steps, epochs)
    for key, value in (("reference", reference), ("provider", provider), ("model", model), ("base_url", base_url),
                       ("api_key_env", api_key_env)):
        if value is not None:
            overrides.append(f"caption.{key}={json.dumps(value)}")
    if device:
        overrides.append(f"runtime.device={device}")
    if trigger is None and not (run / "config.yaml").is_file():
        raise LookalikeError("fit needs --trigger NAME for a new run: the word that will name the person in "
                             "captions and prompts, e.g. --trigger Arthur")
    cfg, rd = _prepare_run(run, folder, trigger, preset, config, overrides, training=False)
    confirm = (lambda question: typer.confirm(question, default=False)) if sys.stdin.isatty() else None
    options = FitOptions(shlex.join(["lookalike", *sys.argv[1:]]), env_file, yes, confirm)
    console.print(f"fit: {folder} -> {rd.root} (preset {cfg.preset}, trigger {cfg.dataset.trigger!r})")
    result = run_fit(cfg, rd, options, lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True))
    print(result.report or result.lora)


@app.command()
def cache(
    run: Path = typer.Argument(..., help=RUN_HELP),
    photos: Optional[Path] = PHOTOS_OPTION,
    trigger: Optional[str] = TRIGGER_OPTION,
    preset: Optional[str] = typer.Option(None, help=PRESET_HELP),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Encode photos and captions once (VAE latents, T5 and CLIP embeddings); re-runs encode only changes."""
    from lookalike.data.cache import build_cache

    _quiet_libraries()
    cfg, rd = _prepare_run(run, photos, trigger, preset, config, set_, training=False)
    report = build_cache(cfg, rd)
    console.print(f"[green]cached {report.items} photos[/green] (encoded {report.latents_encoded} latents, "
                  f"{report.texts_encoded} texts) in {report.folder}")


@app.command()
def train(
    run: Path = typer.Argument(..., help=RUN_HELP),
    photos: Optional[Path] = PHOTOS_OPTION,
    trigger: Optional[str] = TRIGGER_OPTION,
    resume: bool = typer.Option(False, "--resume", help="Continue RUN's training from its last checkpoint."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda, cuda:N or mps (runtime.device)."),
    preset: Optional[str] = typer.Option(None, help=PRESET_HELP),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Draw the grounding images still missing (ground.count), cache, then train the LoRA: checkpoints,
    previews, a progress GIF, and the exported LoRA files."""
    from lookalike.data.cache import build_cache
    from lookalike.train.run import is_child_process, train_stage

    _quiet_libraries()
    overrides = list(set_ or []) + ([f"runtime.device={device}"] if device else [])
    cfg, rd = _prepare_run(run, photos, trigger, preset, config, overrides, resume=resume)
    if not is_child_process():
        if cfg.ground.count:  # the FLUX presets draw 40: only those missing are drawn (lookalike ground)
            from lookalike.data.ground import ground_stage

            report = ground_stage(cfg, rd)
            if report.drawn:
                console.print(f"drew {report.drawn} grounding image(s) with the base model in {report.folder}")
        build_cache(cfg, rd)
    report = train_stage(cfg, rd, resume=resume)
    if report.lora is not None:
        console.print(f"[green]trained {report.steps} steps[/green]; LoRA: {report.lora} (kohya/ComfyUI: "
                      f"{report.kohya.name}); samples and progress GIFs in {report.folder}")
        print(report.lora)


@app.command()
def twin(
    folder: Path = typer.Argument(..., help="Where to save the twin (a diffusers folder)."),
    seed: int = typer.Option(0, help="Weight seed: same seed, same twin, same images."),
    family: str = typer.Option("flux1", help="Model family: flux1, flux2-dev, flux2-klein, z-image or qwen-image."),
) -> None:
    """Build a family's tiny random-weight twin and save it like a local copy of the real model."""
    from lookalike.models.family import family as get_family
    from lookalike.models.twin import save_twin, single_file_name

    _quiet_libraries()
    get_family(family)  # an unknown name: the known ones, before anything is built
    save_twin(folder, seed=seed, family=family)
    console.print(f"[green]saved the tiny {family} twin to[/green] {folder} (also {folder / single_file_name(family)})")


@app.command()
def demo(
    run: Optional[Path] = typer.Argument(None, help="Run directory for the demo (default: runs/demo/<time>)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    seeds: int = typer.Option(4, help="Seeds per prompt in the metric suite."),
    others: int = typer.Option(OTHERS, help="Captioned scenes of other people trained beside Arthur's photos "
                               "(dataset.grounding); 0: his photos alone, the write-up's way."),
    people: int = typer.Option(1, help="People the LoRA learns: 1 (Arthur) or 2 (Arthur and Grace, her photos as "
                               "dataset.people; about twice the training time)."),
) -> None:
    """Teach the toy FLUX who Arthur is on the CPU: his photos, training, progress GIFs and the metrics table."""
    from lookalike.rundir import RunDir
    from lookalike.toy.demo import run_demo
    from lookalike.toy.pretrain import quiet_text_libraries

    _quiet_libraries()
    quiet_text_libraries()
    folder = run if run is not None else RunDir("runs").new_stage_folder("demo")
    if (folder / "train" / "resume").exists():
        raise LookalikeError(f"{folder} already holds a demo run; give a new folder (nothing was deleted)")
    whose = "Arthur's photos" if people == 1 else "Arthur's and Grace's photos"
    console.print(f"toy world demo in {folder}: {whose}, LoRA training on the toy FLUX, then the metrics")
    result = run_demo(folder, list(set_ or []), suite_size=(10, 10, seeds), others=others, people=people)
    console.print(result["table"], markup=False, highlight=False, soft_wrap=True)
    console.print(f"training {result['train_seconds']:.0f} s ({result['steps']} steps), sampling "
                  f"{result['sampling_seconds']:.0f} s ({result['images']} images), {result['total_seconds']:.0f} s in all")
    console.print(f"photos: {folder / 'photos'}\nprogress GIFs and previews: {folder / 'train'}\n"
                  f"LoRA: {result['lora_file']}\nsuite images and metrics: {folder / 'demo'}")
    print(folder / "demo" / "metrics.md")


def _run_config(run: Path, overrides):
    """RUN/config.yaml (plus --set), or an error saying the folder is not a run."""
    from lookalike.config import load_config
    from lookalike.errors import ConfigError
    from lookalike.rundir import RunDir

    rd = RunDir(run)
    if not rd.config_path.is_file():
        what = "does not exist" if not rd.root.exists() else f"is not a run folder (no {rd.config_path.name})"
        raise ConfigError(f"{run} {what}; give the folder `lookalike train` (or `demo`) wrote, e.g. runs/arthur")
    _hold(run)
    return rd, load_config(rd.config_path, overrides=list(overrides or []))


STEP_OPTION = typer.Option(None, "--step", help="Checkpoint step (repeatable); default every saved checkpoint.")


@app.command("eval")
def eval_(
    run: Path = typer.Argument(..., help=RUN_HELP),
    step: Optional[list[int]] = STEP_OPTION,
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Draw the fixed suite with the base and every checkpoint; likeness, leakage, preservation; recommend one."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from lookalike.evaluate.judges import make_judge
    from lookalike.evaluate.run import evaluate_run, find_checkpoints, markdown

    _quiet_libraries()
    rd, cfg = _run_config(run, set_)
    checkpoints = find_checkpoints(rd, step)  # before any model loads: a run that never trained fails here
    judge = make_judge(cfg, rd)
    columns = (TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("eval", total=judge.suite.images * (1 + len(checkpoints)))
        result = evaluate_run(cfg, rd, step, judge, on_image=lambda _: bar.advance(task))
    console.print(markdown(result), markup=False, highlight=False, soft_wrap=True)
    print(rd.root / "eval" / "metrics.json")


experiment_app = typer.Typer(help="The write-up's experiments on a trained run: the empty prompt, replayed captions.",
                             no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("empty")
def experiment_empty(
    run: Path = typer.Argument(..., help=RUN_HELP),
    step: Optional[int] = typer.Option(None, help="Checkpoint step; default the recommended one, else the last."),
    seeds: Optional[int] = typer.Option(None, help="Seeds drawn (eval.empty_seeds)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Draw the empty prompt with N seeds, base and LoRA: the share of images that show the person, and the grid."""
    from lookalike.evaluate.experiments import choose_checkpoint, empty_prompt
    from lookalike.evaluate.judges import make_judge

    _quiet_libraries()
    rd, cfg = _run_config(run, set_)
    choose_checkpoint(rd, step)
    result = empty_prompt(cfg, rd, make_judge(cfg, rd), step, seeds)
    console.print(f"empty prompt, {result['checkpoint']}: the person is in {result['share_lora']:.2f} of "
                  f"{len(result['seeds'])} images (base {result['share_base']:.2f})")
    print(rd.root / "experiments" / "empty" / "lora-grid.png")


@experiment_app.command("replay")
def experiment_replay(
    run: Path = typer.Argument(..., help=RUN_HELP),
    step: Optional[int] = typer.Option(None, help="Checkpoint step; default the recommended one, else the last."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Redraw every training caption beside its photo: is the person there, are the others turned into them?"""
    from lookalike.evaluate.experiments import choose_checkpoint, replay_captions
    from lookalike.evaluate.judges import make_judge

    _quiet_libraries()
    rd, cfg = _run_config(run, set_)
    choose_checkpoint(rd, step)
    r = replay_captions(cfg, rd, make_judge(cfg, rd), step)
    shown = "n/a" if r["replacement"] is None else f"{r['replacement']:.2f}"
    console.print(f"replayed {r['photos']} captions with {r['checkpoint']}: the person is in {r['likeness']:.2f}; "
                  f"{r['replaced']} of {r['others']} other people look like them (identity replacement {shown})")
    print(rd.root / "experiments" / "replay" / "pairs.png")


@app.command()
def report(
    run: Path = typer.Argument(..., help=RUN_HELP),
) -> None:
    """Write RUN/report.html: recommendation, metrics per checkpoint, gallery, experiments, training, dataset."""
    from lookalike.evaluate.report import write_report

    rd, cfg = _run_config(run, None)
    path = write_report(cfg, rd)
    console.print(f"[green]report:[/green] {path} (one file; open it in any browser)")
    print(path)


toy_app = typer.Typer(help="The toy world: rebuild its pretrained model and scorer, or render scenes.",
                      no_args_is_help=True)
app.add_typer(toy_app, name="toy")


@toy_app.command("scenes")
def toy_scenes(
    folder: Path = typer.Argument(..., help="Where to write the PNGs and their .txt captions."),
    count: int = typer.Option(40, "--count", "-n", help="How many scenes."),
    arthur: bool = typer.Option(False, help="Scenes with Arthur (his photos), captioned like the seed."),
    seed: int = typer.Option(0, help="Same seed, same scenes."),
) -> None:
    """Render toy scenes with their captions (Arthur's photos with --arthur)."""
    from lookalike.toy.demo import write_dataset, write_scenes
    from lookalike.toy.scenes import scene_stream

    paths = write_dataset(folder, count, seed) if arthur else write_scenes(folder, scene_stream(seed, count), "scene")
    console.print(f"[green]wrote {len(paths)} scenes with captions to[/green] {folder}")


@toy_app.command("pretrain")
def toy_pretrain(
    out: Path = typer.Argument(..., help="Folder for the pretrained FluxPipeline (the shipped one: src/lookalike/toy/flux)."),
    steps: int = typer.Option(3500, help="Transformer training steps (batch 32)."),
    vae_steps: int = typer.Option(1500, help="VAE training steps (batch 16)."),
    scenes: int = typer.Option(24000, help="Scenes rendered for training."),
    seed: int = typer.Option(0, help="Seed of the weights and of the scenes."),
    lr: float = typer.Option(7e-4, help="Peak learning rate of the transformer."),
    start: Optional[Path] = typer.Option(None, "--from", help="Continue the transformer of an earlier pretrain folder."),
) -> None:
    """Reproduce the toy FLUX: train its VAE and transformer on generated scenes (about 45 min on 2 cores)."""
    from lookalike.rundir import write_json_atomic
    from lookalike.toy.pretrain import PretrainSettings, pretrain

    _quiet_libraries()
    settings = PretrainSettings(seed=seed, scenes=scenes, vae_steps=vae_steps, steps=steps, lr=lr)
    report = pretrain(out, settings, progress=console.print, start=start)
    write_json_atomic(out / "pretrain.json", report)


@toy_app.command("scorer")
def toy_scorer(
    out: Optional[Path] = typer.Option(None, help="Weights file (default: the shipped lookalike/toy/scorer.safetensors)."),
    steps: int = typer.Option(3000, help="Training steps (batch 64)."),
    evaluate_only: bool = typer.Option(False, "--evaluate", help="Only measure the existing scorer's accuracy."),
) -> None:
    """Train the toy scorer (about 10 minutes) and report its accuracy on 2000 held-out scenes: clean, degraded,
    and passed through the toy VAE."""
    import json

    from lookalike.toy import scorer as toy_scorer_module

    path = out or toy_scorer_module.SCORER_FILE
    if evaluate_only:
        scorer = toy_scorer_module.Scorer.load(path)
    else:
        scorer = toy_scorer_module.Scorer(toy_scorer_module.train(steps=steps, progress=console.print))
        scorer.save(path)
    held_out = toy_scorer_module.training_scenes(seed=12345, n=2000)
    report = {kind: toy_scorer_module.evaluate(scorer, held_out, degraded=kind == "degraded", vae=kind == "vae")
              for kind in ("clean", "degraded", "vae")}
    print(json.dumps(report, indent=1))


@app.command("app")
def web_app(
    host: str = typer.Option("127.0.0.1", help="Address to listen on. Anything but loopback needs a password."),
    port: int = typer.Option(7860, help="Port to listen on."),
    runs: Path = typer.Option(Path("runs"), help="The folder of run folders the app shows and creates."),
    password_env: str = typer.Option("LOOKALIKE_APP_PASSWORD", help="Environment variable holding the password "
                                     "(user: lookalike); required for any --host but loopback."),
    max_upload_mb: int = typer.Option(500, min=1, help="Largest upload (a photo or a zip, unpacked) in MB."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="A setting for every run the app creates, e.g. "
                                             "--set train.sample_every=5 (repeatable)."),
) -> None:
    """A local web page: drop photos in, check and caption them, train, watch, evaluate, generate."""
    from lookalike.app.ui import check_host, serve

    import os

    check_host(host, os.environ.get(password_env))  # before Gradio loads: a refusal is instant
    console.print(f"lookalike app on http://{host}:{port} (runs in {runs.resolve()}); Ctrl-C to stop the page "
                  "(running jobs go on)", markup=False, highlight=False, soft_wrap=True)
    serve(host, port, runs, list(set_ or []), password_env, max_upload_mb)


@app.command("config")
def show_config(
    preset: Optional[str] = typer.Option(None, help=PRESET_HELP),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    keys: bool = typer.Option(False, "--keys", help="List every setting with its type, default and help."),
) -> None:
    """Print the resolved run config as YAML (with help comments), or the table of all settings."""
    from lookalike.config import config_to_yaml, iter_fields

    cfg = _load_config(preset, config, set_)
    if keys:
        from rich.markup import escape
        from rich.table import Table

        from lookalike.config import Config

        table = Table("key", "type", f"value ({cfg.preset})", "help", title=f"settings of preset {cfg.preset}")
        for key, typ, value, help_ in iter_fields(Config, cfg):
            shown = "(required)" if value is ... else repr(value)
            table.add_row(*(escape(x) for x in (key, str(typ), shown, help_)))
        Console().print(table)
        return
    print(config_to_yaml(cfg), end="")


def main() -> None:
    """Console-script entry point: user errors become one message and exit status 2."""
    from rich.markup import escape

    try:
        with _held:
            app()
    except LookalikeError as e:
        label = "stopped" if e.exit_code == 130 else "error"
        console.print(f"[bold red]{label}:[/bold red] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # a stage without its own Ctrl-C handling: what it wrote is on disk
        console.print("[bold red]stopped:[/bold red] interrupted (Ctrl-C); files already written are kept",
                      highlight=False, soft_wrap=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
