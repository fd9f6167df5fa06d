"""The web app's jobs: a stage verb of the CLI run in its own process, on one run folder.

    RUN/app/jobs/20261203-101500.json   {"commands": [["train", RUN], ...], "pid", "started", "rc", "ended"}
    RUN/app/jobs/20261203-101500.log    what the commands printed

A job is `python -m lookalike.app.jobs JOB.json`: it runs each command through the CLI's own `main`
(the same verbs, the same run-folder lock), in order, stopping at the first that fails, and writes its
exit status into the job file. It runs in a session of its own, so it outlives the page and the app;
a page that reloads, or an app started again, finds it through the job files. Stop sends SIGINT to
the job's process group: the verbs' own Ctrl-C handling (training saves its state), so Resume is
`lookalike train RUN --resume`, from the app or a terminal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lookalike.errors import ConfigError
from lookalike.rundir import RunDir, describe_holder, lock_holder, timestamp, write_json_atomic

JOBS = Path("app") / "jobs"
_children: dict[int, subprocess.Popen] = {}  # jobs this app started, reaped by `status`


@dataclass
class Job:
    path: Path  # RUN/app/jobs/<id>.json
    commands: list[list[str]]
    pid: int | None
    started: str
    rc: int | None = None  # None while it runs (or when it died without saying)
    ended: str | None = None

    @property
    def log(self) -> Path:
        return self.path.with_suffix(".log")

    @property
    def name(self) -> str:
        return " && ".join(" ".join(["lookalike", *c[:1]]) for c in self.commands)

    @property
    def running(self) -> bool:
        return self.rc is None and self.pid is not None and _alive(self.pid)

    def state(self) -> str:
        if self.running:
            return "running"
        if self.rc is None:
            return "ended without an exit status (killed?)"
        return {0: "finished", 130: "stopped", 2: "refused"}.get(self.rc, f"failed (exit status {self.rc})")

    def tail(self, lines: int = 40) -> str:
        """The last lines the job printed (progress bars' carriage returns as line ends)."""
        if not self.log.is_file():
            return ""
        text = self.log.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
        return "\n".join([x for x in text.splitlines() if x.strip()][-lines:])


def _alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None  # reaps it, so a finished child is not a zombie that looks alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _is_job_process(pid)


def _is_job_process(pid: int) -> bool:
    """The pid is still a job runner (not a new process that reused the number)."""
    try:
        return b"lookalike.app.jobs" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid


def read(path: Path) -> Job:
    data = json.loads(path.read_text())
    return Job(path, data["commands"], data.get("pid"), data.get("started", ""), data.get("rc"), data.get("ended"))


def jobs(rd: RunDir) -> list[Job]:
    """The run's jobs, newest last."""
    folder = rd.root / JOBS
    return [read(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def latest(rd: RunDir, verb: str | None = None) -> Job | None:
    """The newest job (whose first command is `verb`, if given)."""
    found = [j for j in jobs(rd) if verb is None or j.commands[0][0] == verb]
    return found[-1] if found else None


def running(rd: RunDir) -> Job | None:
    return next((j for j in reversed(jobs(rd)) if j.running), None)


def start(rd: RunDir, *commands: list[str], env: dict | None = None) -> Job:
    """Start `lookalike <command>` for each command, in order, in a process of its own. Refused while
    another job of the app, or any command from a terminal, writes the run folder."""
    if (job := running(rd)) is not None:
        raise ConfigError(f"{rd.root} already has a job running: {job.name} (pid {job.pid}); wait for it to end "
                          "or stop it first")
    if (holder := lock_holder(rd.root)) is not None:
        raise ConfigError(f"{rd.root} is being written by {describe_holder(holder)}; wait for it to end, then "
                          "try again")
    folder = rd.root / JOBS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{timestamp()}.json"
    n = 1
    while path.exists():
        n += 1
        path = folder / f"{timestamp()}-{n}.json"
    commands = [[str(x) for x in c] for c in commands]
    write_json_atomic(path, {"commands": commands, "pid": None, "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    log = open(path.with_suffix(".log"), "ab")
    environment = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
    child = subprocess.Popen([sys.executable, "-m", "lookalike.app.jobs", str(path)], stdin=subprocess.DEVNULL,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=environment,
                             cwd=os.getcwd())
    log.close()
    _children[child.pid] = child
    _update(path, pid=child.pid)
    return read(path)


def stop(job: Job) -> None:
    """Ctrl-C for the job: SIGINT to its process group (training stops at the next step, state saved)."""
    if job.pid is not None and job.running:
        try:
            os.killpg(job.pid, signal.SIGINT)
        except ProcessLookupError:
            pass


def wait(job: Job, timeout: float) -> Job:
    """The job as it is when it ends or `timeout` seconds have passed (tests and scripts)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = read(job.path)
        if not job.running:
            return job
        time.sleep(0.2)
    return read(job.path)


def _update(path: Path, **values) -> None:
    data = json.loads(path.read_text())
    data.update(values)
    write_json_atomic(path, data)


def _run(path: Path) -> int:
    """The job process: each command through the CLI's `main`; the first that fails ends the job."""
    from lookalike.cli import main

    _update(path, pid=os.getpid())  # also when started by hand
    rc = 0
    for command in json.loads(path.read_text())["commands"]:
        print(f"$ lookalike {' '.join(command)}", flush=True)
        sys.argv = ["lookalike", *command]
        try:
            main()
            rc = 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except KeyboardInterrupt:
            rc = 130
        except BaseException as e:  # noqa: BLE001 - recorded, then shown in the app
            print(f"error: {type(e).__name__}: {e}", flush=True)
            rc = 1
        if rc:
            break
    _update(path, rc=rc, ended=time.strftime("%Y-%m-%d %H:%M:%S"))
    return rc


if __name__ == "__main__":
    sys.exit(_run(Path(sys.argv[1])))
