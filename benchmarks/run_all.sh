#!/usr/bin/env bash
# Reproduce every figure in benchmarks/RESULTS.md, from the repository root, in an environment with
# `pip install -e '.[train]'` (TensorFlow is needed for the Keras baseline and the GAP-head comparison).
# Writes benchmarks/results/*.json and *.txt; takes about 5 minutes on 2 shared cores.
#   MODEL=path/to/model.tflite benchmarks/run_all.sh     # another int8 model (its card beside it)
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2
out=benchmarks/results
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
model_args=()
if [[ -n "${MODEL:-}" ]]; then model_args=(--model "$MODEL"); fi
model=${MODEL:-$(python -c 'from edge_birads.classifier import default_model_path; print(default_model_path())')}
table() { python -c 'import json, sys; from edge_birads.bench import format_table; print(format_table(json.load(open(sys.argv[1]))), end="")' "$1"; }

echo "== machine"; { uname -a; nproc; uptime; python --version; } | tee "$out/machine.txt"

python benchmarks/make_images.py --out "$work/images" > /dev/null
python benchmarks/make_test_models.py --out "$work/models" > "$work/make_models.log" 2>&1

echo "== 1. bench, bundled model, 1024x1024 PNGs (the target's setting), one thread"
edge-birads bench "${model_args[@]}" --images "$work/images" --n 300 --warmup 20 --format json > "$out/bench-1024.json"
table "$out/bench-1024.json" | tee "$out/bench-1024.txt"

echo "== 2. bench, bundled model, default images (what a user runs first)"
edge-birads bench "${model_args[@]}" --n 100 --warmup 10 --format json > "$out/bench-default.json"
table "$out/bench-default.json" | tee "$out/bench-default.txt"

echo "== 3. bench, GAP-head variant of the paper CNN (random weights), 1024x1024 PNGs"
edge-birads bench --model "$work/models/paper-cnn-gap.tflite" --images "$work/images" --n 300 --warmup 20 --format json > "$out/bench-gap-1024.json"
table "$out/bench-gap-1024.json" | tee "$out/bench-gap-1024.txt"

echo "== 4. fresh processes: interpreter, imports floor, edge-birads classify"
python benchmarks/classify_process.py --image "$work/images/synthetic-1024.png" --model "$model" --repeats 9 \
    --json "$out/classify-process.json" | tee "$out/classify-process.txt"

echo "== 5. where the time and memory go (stages; XNNPACK on/off; Flatten vs GAP head)"
python benchmarks/where_it_goes.py --image "$work/images/synthetic-1024.png" --model "$model" \
    --model "$work/models/paper-cnn-gap.tflite" --repeats 5 --json "$out/where-it-goes.json" | tee "$out/where-it-goes.txt"

echo "== 5b. PNG decode, import costs, sha256: the alternatives RESULTS.md weighs"
python benchmarks/alternatives.py --image "$work/images/synthetic-1024.png" --model "$model" | tee "$out/alternatives.txt"

echo "== 6. Raspberry Pi 4 estimate (not a measurement)"
python benchmarks/pi4_estimate.py --model "$model" 2>/dev/null | tee "$out/pi4-estimate.txt"

echo "== 7. daemon throughput over 5,000 images"
if [[ -f benchmarks/daemon_throughput.py ]]; then
    python benchmarks/daemon_throughput.py | tee "$out/daemon-throughput.txt"
else
    echo "benchmarks/daemon_throughput.py not present yet (issue 5)" | tee "$out/daemon-throughput.txt"
fi
echo "== 8. per input kind (PNG, DICOM, 3000x5000 JPEG) and classify --jobs scaling (issue 16)"
edge-birads bench "${model_args[@]}" --n 100 --warmup 10 --cold-repeats 5 --scaling-images 200 --format json > "$out/bench-inputs.json"
table "$out/bench-inputs.json" | tee "$out/bench-inputs.txt"

echo "== 9. the DICOM path before (git merge-base main HEAD) and after, one real DICOM"
python benchmarks/dicom_path.py --n 30 --repeats 5 --json "$out/dicom-path.json" | tee "$out/dicom-path.txt"

echo "== 10. Dask: --scheduler local:1 and local:2 beside one process and --jobs 2"
python benchmarks/cluster_throughput.py --images 2000 --json "$out/cluster-png.json" | tee "$out/cluster-png.txt"
python benchmarks/cluster_throughput.py --images 400 --dicom --json "$out/cluster-dicom.json" | tee "$out/cluster-dicom.txt"
uptime | tee -a "$out/machine.txt"
