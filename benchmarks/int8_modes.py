"""One fine-tuned fold model converted three ways, timed side by side with the bundled model.

    python benchmarks/int8_modes.py --run RUNS/mnv2-512-whole-lrinit --fold 0 [--rounds 7] [--json OUT.json]

The fold's weights (a run of a pretrained row, ``python -m convert cv``) are converted with
calibrated int8 activations (full-integer), with dynamic ones (int8 weights, activations
quantized per image at run time: what passes the parity gate) and to float32, by the one
converter (convert.evaluation.export). Each .tflite then runs in a fresh child process through
the runtime's own interpreter code, one thread, XNNPACK as shipped: load, 3 warm-up images, then
--rounds rounds of 10 images; the children of one round run one after the other, model by model,
so all models share the machine's state. Prints the median per-image latency, its ratio to the
bundled model, the file size and the child's peak RSS. Needs the [train] extra and the data
(calibration images come from the fold's training patients).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # convert/ is run from the checkout

CHILD = r'''
import json, sys, time
import numpy as np
from edge_birads.interpreter import make_interpreter, model_tensors, run_image
interpreter, _ = make_interpreter(sys.argv[1], 1)
tensors = model_tensors(interpreter, 3)
shape = tensors.input["shape"]
images = np.random.default_rng(0).random((13, shape[1], shape[2], 1)).astype(np.float32)
for image in images[:3]:
    run_image(interpreter, image, tensors, with_map=False)
started = time.perf_counter()
for image in images[3:]:
    run_image(interpreter, image, tensors, with_map=False)
per_image = (time.perf_counter() - started) * 100.0
peak = int([l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]) / 1024.0
print(json.dumps({"ms": per_image, "peak_rss_mib": peak}))
'''


def child(model: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(model)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def convert_fold(run: Path, fold: int, folder: Path) -> dict[str, Path]:
    from convert.data.lesion_data import load_pool
    from convert.data.split import FoldProtocol, fold_split
    from convert.evaluation.export import to_tflite_float, to_tflite_int8
    from convert.training.paper_cv import representative
    from convert.training.pretrained import fold_model, run_config
    from convert.training.train_lesion import DEFAULT_CACHE

    cfg = run_config(run)
    pool = load_pool(cfg.spec(), DEFAULT_CACHE)
    train_idx, _, _ = fold_split(pool, FoldProtocol(), fold)
    model = fold_model(cfg, run, fold)
    files = {
        "int8, calibrated activations": to_tflite_int8(model, representative(pool, train_idx, cfg.seed + fold), "calibrated"),
        "int8, dynamic activations": to_tflite_int8(model, None, "dynamic"),
        "float32": to_tflite_float(model),
    }
    paths = {}
    for i, (name, flatbuffer) in enumerate(files.items()):
        paths[name] = folder / f"model{i}.tflite"
        paths[name].write_bytes(flatbuffer)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a pretrained row's run folder (fold weights, config.json)")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from edge_birads.classifier import default_model_path

    with tempfile.TemporaryDirectory() as tmp:
        models = {"bundled model (224x224, full-integer int8)": default_model_path(), **convert_fold(args.run, args.fold, Path(tmp))}
        samples = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, path in models.items():
                samples[name].append(child(path))
        sizes = {name: path.stat().st_size for name, path in models.items()}
    base = statistics.median(s["ms"] for s in samples[next(iter(models))])
    rows = []
    print(f"{'model':<45}{'ms/image':>10}{'x bundled':>11}{'size MB':>9}{'peak RSS MiB':>14}")
    for name in models:
        ms = statistics.median(s["ms"] for s in samples[name])
        rss = statistics.median(s["peak_rss_mib"] for s in samples[name])
        rows.append({"model": name, "ms_per_image_median": round(ms, 2), "ratio_to_bundled": round(ms / base, 2),
                     "size_bytes": sizes[name], "peak_rss_mib_median": round(rss, 1)})
        print(f"{name:<45}{ms:>10.1f}{ms / base:>11.1f}{sizes[name] / 1e6:>9.2f}{rss:>14.1f}")
    if args.json:
        args.json.write_text(json.dumps({"run": args.run.name, "fold": args.fold, "rounds": args.rounds, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
