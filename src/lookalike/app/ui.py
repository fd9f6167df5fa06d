"""`lookalike app`: a local web page over the same run folders and stage verbs as the CLI.

    Photos     upload (files or a zip) or a folder -> the dataset doctor (`lookalike ingest`) -> its table,
               the photos that train (RUN/photos.yaml) and the reference photo (caption.reference)
    Captions   the captioning endpoint and key variable, the dry-run cost, `lookalike caption`; each caption
               edited in place (a hand edit in the photo's .txt) or asked again
    Training   preset and the settings people change, the estimate, `lookalike train` (Stop = Ctrl-C,
               Resume = `train --resume`), live loss and validation curves, previews and progress GIFs
    Results    `lookalike eval` + `report`: the recommendation, the metrics, base beside the checkpoint,
               the report itself and the LoRA files
    Generate   `lookalike generate --run RUN` with prompts, seeds and a LoRA stack

Gradio (the field's convention for such apps: fluxgym, ai-toolkit's captioner) draws the page; every
stage runs as a job (lookalike.app.jobs): the CLI verb in a process of its own, which outlives the page.
The page polls the run folder once a second, so a reloaded page shows what is there and reconnects to a
running job. Nothing here trains, captions or evaluates by itself.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import socket
from pathlib import Path

from lookalike.app import files as upload_files
from lookalike.app import jobs, views
from lookalike.errors import ConfigError, LookalikeError
from lookalike.rundir import RunDir

CSS = """
#doctor-table img.thumb{image-rendering:pixelated;width:128px}
#doctor-table td{vertical-align:top;font-size:.85rem} #doctor-table tr.out td{background:#fbeeee}
.flag .why{color:#666;font-size:.8rem} img.preview,img.gif{image-rendering:pixelated;width:256px}
img.grid{image-rendering:pixelated;max-width:100%} .row{display:flex;flex-wrap:wrap;gap:1rem}
.rec{border:1px solid;border-radius:6px;padding:.7rem 1rem;margin:1rem 0} .rec.ok{background:#eef7ee;border-color:#7b7}
.rec.none{background:#fdf0e8;border-color:#d96} td.bad{color:#b00;font-weight:600} tr.pick td{background:#eef7ee}
.note{color:#666}
"""
MEMORY_MODES = ["balanced", "low", "lowest"]


def _sets(overrides) -> list[str]:
    """Settings as the verbs' `--set k=v` arguments."""
    return [arg for o in overrides for arg in ("--set", o)]


def check_host(host: str, password: str | None) -> None:
    """Loopback is served as it is; any other address only behind a password."""
    try:
        loopback = ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        loopback = False
    if not loopback and not password:
        raise ConfigError(f"--host {host} would let other machines reach this app, which runs jobs and reads your "
                          "photos; set a password in the environment variable named by --password-env (default "
                          "LOOKALIKE_APP_PASSWORD), or listen on 127.0.0.1")


class App:
    """The page's actions on one runs folder; each returns what the page shows."""

    def __init__(self, runs: Path, overrides: list[str], max_upload_mb: int):
        self.runs = runs.resolve()
        self.overrides = list(overrides)
        self.max_bytes = max_upload_mb * 2**20

    def rd(self, run: str | None) -> RunDir:
        if not run or not run.strip():
            raise ConfigError("name the run first (the box at the top, e.g. arthur)")
        return RunDir(self.runs / upload_files.safe_name(run))

    # ------------------------------------------------------------ photos

    def add_uploads(self, run, trigger, preset, uploads) -> str:
        rd = self.rd(run)
        if not uploads:
            raise ConfigError("choose photos (or a zip of them) to upload first")
        pairs = [(Path(getattr(u, "orig_name", None) or getattr(u, "name", u)).name, Path(getattr(u, "name", u)))
                 for u in uploads]
        folder = rd.root / "photos"
        saved = upload_files.save_uploads(pairs, folder, self.max_bytes)
        return saved.line(folder) + "; " + self.check(run, trigger, preset, str(folder))

    def check(self, run, trigger, preset, folder) -> str:
        rd = self.rd(run)
        if not folder:
            cfg = views.run_config(rd)
            folder = cfg.dataset.photos
        folder = str(Path(folder).expanduser())
        if not Path(folder).is_dir():
            raise ConfigError(f"{folder} is not a folder on this machine; give the folder of the person's photos")
        command = ["ingest", folder, "--run", str(rd.root)]
        if trigger:
            command += ["--trigger", trigger]
        elif not rd.config_path.is_file():
            raise ConfigError("give the trigger word first (the box at the top, e.g. Arthur): it names the person "
                              "in captions and prompts")
        if preset:
            command += ["--preset", preset]
        if not rd.config_path.is_file():  # the app's --set, for the runs it creates
            command += _sets(self.overrides)
        job = jobs.start(rd, command)
        return f"checking the photos: {job.name} (pid {job.pid})"

    def save_selection(self, run, chosen) -> str:
        return views.save_selection(self.rd(run), list(chosen or []))

    def set_reference(self, run, name) -> str:
        if not name:
            raise ConfigError("choose the reference photo first")
        rd = self.rd(run)
        views.set_setting(rd, "caption.reference", name)
        return f"reference photo: {name} (caption.reference in {rd.config_path}); captions made from now on use it"

    # ------------------------------------------------------------ captions

    def caption_overrides(self, provider, model, base_url, key_env) -> list[str]:
        out = [f"caption.provider={json.dumps(provider)}"] if provider else []
        for key, value in (("model", model), ("base_url", base_url), ("api_key_env", key_env)):
            if value and value.strip():
                out.append(f"caption.{key}={json.dumps(value.strip())}")
        return out

    def caption_estimate(self, run, provider, model, base_url, key_env, env_file) -> str:
        from lookalike.caption.agent import caption_stage
        from lookalike.config.run import resolve

        rd = self.rd(run)
        views.run_config(rd)
        cfg, _ = resolve(rd, overrides=self.caption_overrides(provider, model, base_url, key_env))
        report = caption_stage(cfg, rd, Path(env_file) if env_file else None, dry_run=True)
        est = report.estimate
        cost = f"about ${est['cost_usd']:.4f}" if est["cost_usd"] is not None else "cost unknown (no price known)"
        key = views.key_status(cfg, env_file)
        if not est["requests"]:
            return f"every photo that trains has a caption; nothing to pay for. Key: {key}"
        return (f"{est['requests']} photo(s) to caption with {report.endpoint.model} at {report.endpoint.base_url}: "
                f"~{est['input_tokens']} input + {est['output_tokens']} output tokens, {cost}. Key: {key}")

    def caption_start(self, run, provider, model, base_url, key_env, env_file) -> str:
        rd = self.rd(run)
        views.run_config(rd)
        command = ["caption", str(rd.root), *_sets(self.caption_overrides(provider, model, base_url, key_env))]
        if env_file:
            command += ["--env-file", str(Path(env_file).expanduser())]
        job = jobs.start(rd, command)
        return f"captioning: {job.name} (pid {job.pid}); captions appear below as they arrive"

    def caption_save(self, run, photo, text) -> str:
        if not photo:
            raise ConfigError("choose a photo first")
        txt = views.save_caption(self.rd(run), photo, text)
        return f"saved your caption of {photo} in {txt} (kept as your edit: captioning never overwrites it)"

    def caption_again(self, run, photo, provider, model, base_url, key_env, env_file) -> str:
        if not photo:
            raise ConfigError("choose a photo first")
        rd = self.rd(run)
        if jobs.running(rd) is not None:
            raise ConfigError(f"{rd.root} has a job running; wait for it to end or stop it first")
        views.forget_caption(rd, photo)
        return f"{photo}: caption removed; " + self.caption_start(run, provider, model, base_url, key_env, env_file)

    # ------------------------------------------------------------ training

    def train_overrides(self, steps, epochs, rank, lr, memory) -> list[str]:
        from lookalike.pipeline import steps_epochs

        out = steps_epochs(int(steps) if steps else None, int(epochs) if epochs else None)
        if rank:
            out += [f"lora.rank={int(rank)}", f"lora.alpha={int(rank) / 2:g}"]  # the write-up's alpha = rank / 2
        if lr:
            out.append(f"train.learning_rate={float(lr)}")
        if memory:
            out.append(f"train.memory={memory}")
        return out

    def train_estimate(self, run, preset, steps, epochs, rank, lr, memory) -> str:
        from lookalike.config.run import resolve

        rd = self.rd(run)
        views.run_config(rd)
        overrides = self.train_overrides(steps, epochs, rank, lr, memory)
        if rd.training_started:  # what is learned is fixed: the estimate is for going on
            overrides = [o for o in overrides if not o.startswith("lora.")]
            preset = None
        cfg, _ = resolve(rd, preset=preset or None, overrides=overrides)
        return views.estimate_line(rd, cfg)

    def train_start(self, run, preset, steps, epochs, rank, lr, memory) -> str:
        rd = self.rd(run)
        views.run_config(rd)
        if rd.training_started:
            raise ConfigError(f"{rd.root} has already started training; press Resume to continue it, or name a new "
                              "run at the top")
        command = ["train", str(rd.root), *(["--preset", preset] if preset else []),
                   *_sets(self.train_overrides(steps, epochs, rank, lr, memory))]
        job = jobs.start(rd, command)
        return f"training: {job.name} (pid {job.pid})"

    def train_stop(self, run) -> str:
        rd = self.rd(run)
        job = jobs.running(rd)
        if job is None:
            return "no job is running"
        jobs.stop(job)
        return f"stopping {job.name} (pid {job.pid}) at its next step; its state is saved for Resume"

    def train_resume(self, run, steps, epochs, lr) -> str:
        rd = self.rd(run)
        if not rd.resume_checkpoint.is_file():
            raise ConfigError(f"{rd.root} has no training to resume ({rd.resume_checkpoint} is missing); press Start")
        command = ["train", str(rd.root), "--resume", *_sets(self.train_overrides(steps, epochs, None, lr, None))]
        job = jobs.start(rd, command)
        return f"resuming: {job.name} (pid {job.pid})"

    # ------------------------------------------------------------ results and generate

    def evaluate(self, run) -> str:
        rd = self.rd(run)
        views.run_config(rd)
        job = jobs.start(rd, ["eval", str(rd.root)], ["report", str(rd.root)])
        return f"evaluating: {job.name} (pid {job.pid})"

    def generate(self, run, prompts, seeds, stack) -> str:
        rd = self.rd(run)
        views.run_config(rd)
        texts = [p.strip() for p in (prompts or "").splitlines() if p.strip()]
        if not texts:
            raise ConfigError("write a prompt first, e.g. \"Arthur as a wizard\" (one per line)")
        command = ["generate", "--run", str(rd.root)]
        for s in (seeds or "").replace(",", " ").split():
            if not s.lstrip("-").isdigit():
                raise ConfigError(f"seed {s!r} is not a whole number; write seeds like 0 1 2")
            command += ["--seed", s]
        for line in (stack or "").splitlines():
            if line.strip():
                command += ["--lora", line.strip()]
        job = jobs.start(rd, command + texts)
        return f"drawing: {job.name} (pid {job.pid})"


def _safely(fn):
    """A user's mistake is shown on the page as one line (Gradio's error toast), never a traceback."""
    import functools

    import gradio as gr

    @functools.wraps(fn)
    def wrapped(*args):
        try:
            return fn(*args)
        except LookalikeError as e:
            raise gr.Error(str(e), print_exception=False) from None

    return wrapped


def _stamp(*paths: Path) -> str:
    out = []
    for p in paths:
        try:
            out.append(str(p.stat().st_mtime_ns))
        except OSError:
            out.append("-")
    return ",".join(out)


def signatures(rd: RunDir, job) -> dict[str, str]:
    """Per group of views, what it is drawn from (and the run's latest job): a group is redrawn only when
    its files changed."""
    job_sig = f"{job.path.name}:{job.state()}" if job else "-"
    photos = Path(views.run_config(rd).dataset.photos) if rd.config_path.is_file() else rd.root / "photos"
    common = _stamp(rd.config_path, rd.selection_path, rd.doctor_record)
    logs = sorted((rd.train_dir / "logs" / "csv").glob("attempt-*/metrics.csv"))
    samples = rd.train_dir / "samples"
    return {
        "photos": common + _stamp(photos),
        "captions": common + _stamp(photos, rd.captions_record) + _stamp(*sorted(photos.glob("*.txt"))),
        "training": _stamp(*logs, samples, rd.train_dir, *sorted(samples.glob("epoch-*"))),
        "results": _stamp(rd.eval_metrics, rd.report, rd.lora) + job_sig,
        "generate": _stamp(rd.root / "generate") + job_sig,
    }


def build(app: App):
    """The Gradio page."""
    import gradio as gr

    from lookalike.caption.providers import PROVIDERS

    safe = _safely
    existing = views.list_runs(app.runs)
    with gr.Blocks(title="lookalike") as page:
        gr.Markdown("# lookalike\nTeach a text-to-image model what one person looks like, and measure whether it worked.")
        with gr.Row():
            run = gr.Dropdown(existing, value=existing[0] if existing else None, allow_custom_value=True,
                              label=f"run (a folder of {app.runs}; type a new name to start one)", elem_id="run")
            trigger = gr.Textbox(label="trigger word (names the person)", placeholder="Arthur", elem_id="trigger")
            preset = gr.Dropdown(views.presets(), value="flux1-dev", label="preset (model family and recipe)",
                                 elem_id="preset")
        message = gr.Markdown(elem_id="message")
        with gr.Row():
            job_state = gr.Markdown(elem_id="job-state")
        job_log = gr.Textbox(label="job output", lines=6, max_lines=12, autoscroll=True, elem_id="job-log",
                             interactive=False)
        seen = gr.State("")

        with gr.Tabs():
            with gr.Tab("Photos", id="photos", elem_id="tab-photos"):
                with gr.Row():
                    uploads = gr.File(file_count="multiple", label="photos, caption .txt files or a zip",
                                      elem_id="uploads")
                    with gr.Column():
                        add = gr.Button("Add uploads and check", variant="primary", elem_id="add-uploads")
                        folder = gr.Textbox(label="or a folder of photos on this machine", elem_id="folder")
                        check = gr.Button("Check this folder", elem_id="check-folder")
                doctor = gr.HTML(elem_id="doctor")
                chosen = gr.CheckboxGroup(label="photos that train (RUN/photos.yaml)", elem_id="chosen")
                save_sel = gr.Button("Save the photos that train", elem_id="save-selection")
                with gr.Row():
                    reference = gr.Dropdown(label="reference photo (sent beside every photo to the captioner)",
                                            elem_id="reference")
                    set_ref = gr.Button("Use as reference", elem_id="set-reference")

            with gr.Tab("Captions", id="captions", elem_id="tab-captions"):
                with gr.Row():
                    provider = gr.Dropdown(list(PROVIDERS), value="xai", label="provider", elem_id="provider")
                    model = gr.Textbox(label="model (empty: the provider's default)", elem_id="model")
                    base_url = gr.Textbox(label="base URL (custom / local servers)", elem_id="base-url")
                    key_env = gr.Textbox(label="environment variable with the API key (never the key)",
                                         elem_id="key-env")
                    env_file = gr.Textbox(label=".env file to read it from (optional)", elem_id="env-file")
                with gr.Row():
                    estimate = gr.Button("Estimate the cost", elem_id="caption-estimate")
                    start_caption = gr.Button("Caption the photos", variant="primary", elem_id="caption-start")
                caption_info = gr.Markdown(elem_id="caption-info")
                table = gr.Dataframe(headers=["photo", "caption", "source", "flags"], interactive=False, wrap=True,
                                     elem_id="captions-table")
                with gr.Row():
                    photo_view = gr.Image(label="photo", height=320, interactive=False, elem_id="caption-photo")
                    with gr.Column():
                        photo = gr.Dropdown(label="photo (flagged first)", elem_id="caption-photo-name")
                        text = gr.Textbox(label="caption", lines=3, elem_id="caption-text")
                        flags = gr.Markdown(elem_id="caption-flags")
                        with gr.Row():
                            save_caption = gr.Button("Save caption", variant="primary", elem_id="caption-save")
                            again = gr.Button("Re-caption this photo", elem_id="caption-again")

            with gr.Tab("Training", id="training", elem_id="tab-training"):
                with gr.Row():
                    steps = gr.Number(label="steps (empty: the preset's epochs)", precision=0, elem_id="steps")
                    epochs = gr.Number(label="epochs", precision=0, elem_id="epochs")
                    rank = gr.Number(label="LoRA rank", precision=0, elem_id="rank")
                    lr = gr.Number(label="learning rate", elem_id="lr")
                    memory = gr.Dropdown(MEMORY_MODES, value=None, label="memory mode", elem_id="memory")
                train_info = gr.Markdown(elem_id="train-info")
                with gr.Row():
                    est_train = gr.Button("Estimate", elem_id="train-estimate")
                    start = gr.Button("Start", variant="primary", elem_id="train-start")
                    stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
                    resume = gr.Button("Resume", elem_id="train-resume")
                curves = gr.HTML(elem_id="curves")
                previews = gr.HTML(elem_id="previews")

            with gr.Tab("Results", id="results", elem_id="tab-results"):
                evaluate = gr.Button("Evaluate every checkpoint and write the report", variant="primary",
                                     elem_id="evaluate")
                report_link = gr.HTML(elem_id="report-link")
                results = gr.HTML(elem_id="results")
                lora_files = gr.File(label="LoRA files (diffusers, ComfyUI)", file_count="multiple",
                                     interactive=False, elem_id="lora-files")

            with gr.Tab("Generate", id="generate", elem_id="tab-generate"):
                with gr.Row():
                    prompts = gr.Textbox(label="prompts (one per line)", lines=3, elem_id="prompts",
                                         placeholder="Arthur as a wizard")
                    with gr.Column():
                        seeds = gr.Textbox(value="0 1", label="seeds", elem_id="seeds")
                        stack = gr.Textbox(label="LoRA stack: PATH:WEIGHT per line (empty: the run's recommended "
                                                 "LoRA)", lines=3, elem_id="lora-stack")
                draw = gr.Button("Generate", variant="primary", elem_id="generate-button")
                gallery = gr.Gallery(label="images", columns=4, height=420, object_fit="contain", elem_id="gallery")
                meta = gr.Code(label="metadata", language="json", elem_id="image-meta")

        groups = {"photos": [doctor, chosen, reference], "captions": [table, photo],
                  "training": [curves, previews], "results": [report_link, results, lora_files],
                  "generate": [gallery, meta]}
        views_out = [c for cs in groups.values() for c in cs]
        empty = '<p class="note">Nothing here yet.</p>'

        def draw_group(group: str, rd: RunDir, current_photo=None) -> list:
            """The values of one group of views, read from the run folder."""
            if group == "photos":
                try:
                    html_table, choosable, used, picked = views.doctor_table(rd)
                except LookalikeError as e:
                    html_table, choosable, used, picked = f"<p class=note>{e}</p>", [], [], None
                ref = views.run_config(rd).caption.reference if rd.config_path.is_file() else None
                return [html_table, gr.update(choices=choosable, value=used),
                        gr.update(choices=choosable, value=Path(ref).name if ref else picked)]
            if group == "captions":
                rows = views.caption_rows(rd) if rd.config_path.is_file() else []
                names = [r["photo"] for r in rows]
                return [[[r["photo"], r["caption"], r["source"], r["flags"]] for r in rows],
                        gr.update(choices=names, value=current_photo if current_photo in names else
                                  (names[0] if names else None))]
            if group == "training":
                return [views.curves_html(rd), views.previews_html(rd)]
            if group == "results":
                link = (f'<a href="/gradio_api/file={rd.report}" target="_blank" id="open-report">open the report '
                        f"({rd.report})</a>") if rd.report.is_file() else ""
                return [link, views.results_html(rd), views.downloads(rd) or None]
            return list(views.generated(rd))

        def refresh(run_name, current_photo=None, last: str = "", job=None) -> tuple[list, str]:
            """(values of every view, the signatures drawn from); unchanged groups are skipped."""
            rd = app.rd(run_name) if run_name else None
            if rd is None or not rd.root.is_dir():
                blank = {"photos": [empty, gr.update(choices=[], value=[]), gr.update(choices=[], value=None)],
                         "captions": [[], gr.update(choices=[], value=None)], "training": [empty, empty],
                         "results": ["", empty, None], "generate": [[], ""]}
                return [v for g in groups for v in blank[g]], ""
            now = signatures(rd, job if job is not None else jobs.latest(rd))
            before = json.loads(last) if isinstance(last, str) and last.startswith("{") else {}
            values = []
            for group, comps in groups.items():
                if before.get(group) == now[group]:
                    values += [gr.skip()] * len(comps)
                else:
                    values += draw_group(group, rd, current_photo)
            return values, json.dumps(now)

        def job_view(run_name, job):
            if not run_name:
                return "No run chosen: name one at the top.", ""
            if job is None:
                return f"No job has run in {app.rd(run_name).root} yet.", ""
            step = ""
            if job.commands[0][0] == "train" and job.running:  # the CSV log is read only while training
                done = views.training_status(app.rd(run_name))["step"]
                step = f"; training step {done}" if done else ""
            line = f"**{job.state()}**: `{' && '.join(shlex.join(['lookalike', *c]) for c in job.commands)}` " \
                   f"(started {job.started}{step})"
            return line, job.tail()

        def tick(run_name, last, current_photo):
            job = jobs.latest(app.rd(run_name)) if run_name else None
            line, tail = job_view(run_name, job)
            values, now = refresh(run_name, current_photo, last, job)
            return [line, tail, now] + values

        timer = gr.Timer(1.0)
        timer.tick(tick, [run, seen, photo], [job_state, job_log, seen] + views_out, show_progress="hidden")
        run.change(lambda r: "", [run], [seen], show_progress="hidden")  # another run: draw everything

        def pick_run():
            """On (re)load: the newest run, so a reloaded page finds its run and reconnects to its job."""
            names = views.list_runs(app.runs)
            return gr.update(choices=names, value=names[0] if names else None)

        page.load(pick_run, None, [run]).then(tick, [run, seen, photo], [job_state, job_log, seen] + views_out,
                                              show_progress="hidden")

        add.click(safe(app.add_uploads), [run, trigger, preset, uploads], [message])
        check.click(safe(app.check), [run, trigger, preset, folder], [message])
        save_sel.click(safe(app.save_selection), [run, chosen], [message])
        set_ref.click(safe(app.set_reference), [run, reference], [message])

        caption_inputs = [run, provider, model, base_url, key_env, env_file]
        estimate.click(safe(app.caption_estimate), caption_inputs, [caption_info])
        start_caption.click(safe(app.caption_start), caption_inputs, [caption_info])

        def show_photo(run_name, name):
            if not run_name or not name:
                return None, "", ""
            for r in views.caption_rows(app.rd(run_name)):
                if r["photo"] == name:
                    return str(r["path"]), r["caption"], (f"**flags:** {r['flags']}" if r["flags"] else
                                                          f"source: {r['source']}")
            return None, "", ""

        photo.change(show_photo, [run, photo], [photo_view, text, flags], show_progress="hidden")
        save_caption.click(safe(app.caption_save), [run, photo, text], [caption_info]).then(
            lambda r, p: refresh(r, p)[0], [run, photo], views_out)
        again.click(safe(app.caption_again), [run, photo, provider, model, base_url, key_env, env_file],
                    [caption_info])

        def provider_defaults(name):
            p = PROVIDERS[name]
            return gr.update(placeholder=p.model or "required"), gr.update(placeholder=p.base_url or "required"), \
                gr.update(value=p.key_env or "")

        provider.change(provider_defaults, [provider], [model, base_url, key_env])
        page.load(provider_defaults, [provider], [model, base_url, key_env])

        train_inputs = [run, preset, steps, epochs, rank, lr, memory]
        est_train.click(safe(app.train_estimate), train_inputs, [train_info])
        start.click(safe(app.train_start), train_inputs, [train_info])
        stop.click(safe(app.train_stop), [run], [train_info])
        resume.click(safe(app.train_resume), [run, steps, epochs, lr], [train_info])
        evaluate.click(safe(app.evaluate), [run], [message])
        draw.click(safe(app.generate), [run, prompts, seeds, stack], [message])

        def on_run(run_name):
            if not run_name:
                return gr.update(), gr.update()
            rd = app.rd(run_name)
            if not rd.config_path.is_file():
                return gr.update(), gr.update()
            cfg = views.run_config(rd)
            return gr.update(value=cfg.dataset.trigger), gr.update(value=cfg.preset)

        run.change(on_run, [run], [trigger, preset])
    return page


def serve(host: str, port: int, runs: Path, overrides: list[str], password_env: str, max_upload_mb: int,
          block: bool = True):
    """Check the address, then serve the page (blocking unless `block` is False: tests)."""
    password = os.environ.get(password_env) or None
    check_host(host, password)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    runs.mkdir(parents=True, exist_ok=True)
    app = App(runs, overrides, max_upload_mb)
    page = build(app)
    page.queue(default_concurrency_limit=4)
    return page.launch(server_name=host, server_port=port, auth=("lookalike", password) if password else None,
                       allowed_paths=[str(app.runs)], max_file_size=max_upload_mb * 2**20, css=CSS,
                       prevent_thread_lock=not block, show_error=True, quiet=True, footer_links=[])
