"""Cold start and peak RSS of real fresh processes.

    python benchmarks/classify_process.py --image IMG [--model M] [--repeats 7] [--json OUT]

Rows:
- `python -c pass`: the interpreter alone;
- `import numpy, cv2, ai_edge_litert.interpreter`: the floor any Python runtime of
  this design pays before it has a model;
- `edge-birads classify IMG --format jsonl`: the whole CLI, one image, as a user runs it.

Wall time is fork to exit, measured here. Peak RSS is the child's own VmHWM
(/proc/self/status) read by an atexit hook: ru_maxrss of an exec'd child also
carries this parent's RSS at spawn time. Linux only. Each row runs --repeats
times; median and min are printed (the machine is shared: min is the least-disturbed run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from edge_birads.bench_inputs import fresh_process


def measure(body: str, scratch: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one fresh `python -c BODY` (edge_birads.bench_inputs.fresh_process)."""
    wall, rss, status = fresh_process(body, scratch)
    if status != 0:
        raise SystemExit(f"child exited with {status}: {body}")
    return wall, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    argv = ["edge-birads", "classify", args.image, "--format", "jsonl"] + (["--model", args.model] if args.model else [])
    rows = {
        "python -c pass": "pass",
        "python + import numpy, cv2, LiteRT": "import numpy, cv2, ai_edge_litert.interpreter",
        "edge-birads classify (1 image)": f"import runpy, sys\nsys.argv = {argv!r}\nrunpy.run_module('edge_birads', run_name='__main__')",
    }
    report = {}
    print(f"{'process':<38}{'wall med':>10}{'wall min':>10}{'RSS med':>11}{'RSS min':>11}")
    with tempfile.TemporaryDirectory() as scratch:
        for name, body in rows.items():
            runs = [measure(body, Path(scratch)) for _ in range(args.repeats)]
            walls, rss = [w for w, _ in runs], [r for _, r in runs]
            report[name] = {"wall_s_median": round(statistics.median(walls), 3), "wall_s_min": round(min(walls), 3),
                            "peak_rss_mib_median": round(statistics.median(rss), 1), "peak_rss_mib_min": round(min(rss), 1),
                            "repeats": args.repeats}
            print(f"{name:<38}{statistics.median(walls):>9.3f}s{min(walls):>9.3f}s"
                  f"{statistics.median(rss):>8.1f}MiB{min(rss):>8.1f}MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
