"""The toy world's numbers: the scorer's accuracy on held-out scenes, then `lookalike demo` as a user runs it.

    python bench/toy_world.py            # scorer on 2000 held-out scenes, then the demo in a temporary folder
    python bench/toy_world.py --keep runs/bench-demo

Prints Markdown to paste into BENCHMARKS.md with the machine and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def scorer_rows() -> list[str]:
    from lookalike.toy.scorer import Scorer, evaluate, training_scenes

    scorer = Scorer.load()
    held_out = training_scenes(seed=12345, n=2000)
    rows = ["| scenes | degraded | background | places | Arthur or not (per person) | glasses | hair | whole scene right |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for degraded in (False, True):
        a = evaluate(scorer, held_out, degraded=degraded)
        rows.append(f"| {a['scenes']} ({a['people']} people) | {'yes' if degraded else 'no'} | {a['background']:.4f} | "
                    f"{a['places']:.4f} | {a['arthur']:.4f} | {a['glasses']:.4f} | {a['hair']:.4f} | {a['scene']:.4f} |")
    return rows


def demo_rows(folder: Path) -> list[str]:
    started = time.time()
    subprocess.run([sys.executable, "-m", "lookalike", "demo", str(folder)], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.time() - started
    m = json.loads((folder / "demo" / "metrics.json").read_text())
    return [
        (folder / "demo" / "metrics.md").read_text().strip(), "",
        f"steps {m['steps']}, training {m['train_seconds']} s, sampling {m['sampling_seconds']} s "
        f"({m['images']} images), demo stages {m['total_seconds']} s, command wall {wall:.1f} s",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="run the demo in this folder and keep it")
    args = ap.parse_args()
    print(f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("\n".join(scorer_rows()))
    print()
    if args.keep:
        print("\n".join(demo_rows(args.keep)))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            print("\n".join(demo_rows(Path(tmp) / "demo")))


if __name__ == "__main__":
    main()
