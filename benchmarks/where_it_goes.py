"""Where a fresh classify process spends its time and memory, stage by stage.

    python benchmarks/where_it_goes.py --image IMG --model A.tflite [--model B.tflite] [--repeats 3]

For each model, with the XNNPACK delegate (LiteRT's default) and without it
(OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES), a fresh child process
records cumulative wall time and peak RSS (VmHWM) after each stage:
imports (numpy, cv2, LiteRT, click + edge_birads), model card + sha256,
interpreter creation + allocate_tensors (XNNPACK packs weights here), the first
classify_file, then 30 warm invocations (median and min inference time).
The median over --repeats children is printed, and the RSS at the end split
into anonymous memory and file-backed pages (smaps_rollup). Linux only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r'''
import json, sys, time
t0 = time.perf_counter()
def hwm():
    return int([l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]) / 1024.0
marks = []
def mark(name):
    marks.append((name, round((time.perf_counter() - t0) * 1000.0, 1), round(hwm(), 1)))
model, image, xnnpack = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
import numpy as np; mark("import numpy")
import cv2; mark("import cv2")
from ai_edge_litert import interpreter as litert; mark("import LiteRT")
import click, edge_birads.cli, edge_birads.classifier; mark("import click + edge_birads")
from edge_birads.card import load_card
from edge_birads.classifier import to_prediction
from edge_birads.decode import read_file
from edge_birads.preprocess import prepare
from edge_birads.interpreter import make_interpreter, model_tensors, run_image
card = load_card(model); mark("card + sha256")
interp, _ = make_interpreter(model, 1, delegates=xnnpack); mark("interpreter + allocate")
tensors = model_tensors(interp, len(card.labels))
def run(tensor):
    return run_image(interp, tensor, tensors, with_map=False)
x = prepare(read_file(image), card.preprocessing); mark("decode + preprocess")
run(x); mark("first inference")
times = []
for _ in range(30):
    s = time.perf_counter(); run(x); times.append((time.perf_counter() - s) * 1000.0)
times.sort()
rollup = {l.split(":")[0]: int(l.split()[1]) / 1024.0 for l in open("/proc/self/smaps_rollup") if l.split()[-1:] == ["kB"]}
print(json.dumps({"anonymous_mib": round(rollup["Anonymous"], 1), "file_backed_mib": round(rollup["Rss"] - rollup["Anonymous"], 1), "marks": marks, "invoke_ms_median": round(times[15], 2), "invoke_ms_min": round(times[0], 2), "peak": round(hwm(), 1)}))
'''


def child(model: str, image: str, xnnpack: bool) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, model, image, "1" if xnnpack else "0"],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    report = {}
    for model in args.model:
        for xnnpack in (True, False):
            runs = [child(model, args.image, xnnpack) for _ in range(args.repeats)]
            name = f"{Path(model).name}, {'XNNPACK' if xnnpack else 'no XNNPACK (builtin kernels)'}"
            stages = []
            for i, (stage, _, _) in enumerate(runs[0]["marks"]):
                stages.append({"stage": stage,
                               "ms": statistics.median(r["marks"][i][1] for r in runs),
                               "peak_rss_mib": statistics.median(r["marks"][i][2] for r in runs)})
            entry = {"stages": stages,
                     "invoke_ms_median": statistics.median(r["invoke_ms_median"] for r in runs),
                     "invoke_ms_min": min(r["invoke_ms_min"] for r in runs),
                     "peak_rss_mib": statistics.median(r["peak"] for r in runs),
                     "anonymous_mib": statistics.median(r["anonymous_mib"] for r in runs),
                     "file_backed_mib": statistics.median(r["file_backed_mib"] for r in runs)}
            report[name] = entry
            print(f"\n{name} (median of {args.repeats} fresh processes)")
            print(f"  {'stage':<28}{'cumulative ms':>14}{'peak RSS MiB':>14}")
            for s in stages:
                print(f"  {s['stage']:<28}{s['ms']:>14.1f}{s['peak_rss_mib']:>14.1f}")
            print(f"  warm inference: median {entry['invoke_ms_median']:.2f} ms, min {entry['invoke_ms_min']:.2f} ms; "
                  f"peak RSS {entry['peak_rss_mib']:.1f} MiB")
            print(f"  RSS at the end: {entry['anonymous_mib']:.1f} MiB anonymous (the process's own) + "
                  f"{entry['file_backed_mib']:.1f} MiB file-backed (shared libraries, the mapped model: clean, shareable, reclaimable)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
