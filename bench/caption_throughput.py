"""Captioning throughput: 50 photos against a loopback chat-completions server with a fixed latency.

    python bench/caption_throughput.py                       # 50 photos, 0.5 s latency, concurrency 1, 8, 16
    python bench/caption_throughput.py --side 4032 --concurrency 8   # phone-sized photos (12 MP JPEG)

For each concurrency it runs `lookalike caption` as a user would (a fresh process), then runs it again.
It prints the wall time of the command, the stage's own time and its requests phase (first request
to last reply, from the manifest), the ideal
0.5 s x ceil(50 / concurrency), the requests the server saw, and the requests the re-run sent
(the cache should make that 0). Paste the table into BENCHMARKS.md with the machine and the date.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import astronaut  # noqa: E402
from vlm_server import Script, VLMServer  # noqa: E402


def make_photos(folder: Path, n: int, side: int) -> None:
    """n distinct JPEG photos, 4:3, long side `side` (smooth gradients plus noise, so JPEG sizes are realistic)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    w, h = side, side * 3 // 4
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(0)
    for i in range(n):
        base = np.stack([(xx * (i + 1) / w * 255) % 255, (yy / h * 255), np.full_like(xx, 10 + 4 * i)], -1)
        noise = rng.normal(0, 12, (h, w, 3))
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(folder / f"IMG_{i:04d}.jpg", quality=90)


def caption(run: Path, photos: Path, ref: Path, url: str, concurrency: int) -> float:
    args = [sys.executable, "-m", "lookalike", "caption", str(run), "--photos", str(photos), "--reference", str(ref),
            "--provider", "custom", "--base-url", url, "--model", "test-vlm", "--concurrency", str(concurrency)]
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=50)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--side", type=int, default=1024, help="long side of the generated photos")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-") as tmp:
        tmp = Path(tmp)
        ref = tmp / "ref.jpg"
        astronaut().save(ref)
        for c in args.concurrency:
            photos = tmp / f"photos-c{c}"
            make_photos(photos, args.photos, args.side)
            with VLMServer(Script(latency=args.latency)) as server:
                wall = caption(tmp / f"run-c{c}", photos, ref, server.url, c)
                manifest = json.loads((tmp / f"run-c{c}" / "caption" / "manifest.json").read_text())
                first = len(server.seen)
                rerun_wall = caption(tmp / f"run-c{c}", photos, ref, server.url, c)
                rows.append({
                    "concurrency": c, "photos": args.photos, "side": args.side, "wall_s": round(wall, 2),
                    "stage_s": manifest["seconds"], "requests_s": manifest["request_seconds"], "ideal_s": args.latency * math.ceil(args.photos / c), "requests": first,
                    "max_in_flight": server.max_in_flight, "rerun_requests": len(server.seen) - first,
                    "rerun_wall_s": round(rerun_wall, 2),
                })
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    print("| concurrency | photos (long side) | command wall s | stage s | requests phase s | ideal s = 0.5 x ceil(n/c) "
          "| requests | max in flight | re-run requests | re-run wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['concurrency']} | {r['photos']} ({r['side']} px) | {r['wall_s']} | {r['stage_s']} | {r['requests_s']} | {r['ideal_s']:g} | "
              f"{r['requests']} | {r['max_in_flight']} | {r['rerun_requests']} | {r['rerun_wall_s']} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
