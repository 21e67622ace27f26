"""An ESTIMATE of int8 inference time on a Raspberry Pi 4, by scaling a published figure by MAC count.

    python benchmarks/pi4_estimate.py [--model M.tflite]

Nothing here ran on a Pi. Method, with every assumption stated:

1. Count the model's multiply-accumulates from its own TFLite graph
   (CONV_2D: out_h * out_w * out_c * k_h * k_w * in_c; FULLY_CONNECTED: in * out).
2. Published reference: MobileNet v1 1.0 224 quantized (569 M mult-adds, Howard et al. 2017,
   arXiv:1704.04861) runs at 38.5 frames/s = 26 ms per inference with TensorFlow
   Lite C++ on a Raspberry Pi 4 overclocked to 1950 MHz, 64-bit OS, 4 threads
   (Q-engineering, github.com/Qengineering/TensorFlow_Lite_Classification_RPi_64-bits,
   README table and TensorFlow_Lite_Class.cpp: SetNumThreads(4), one Invoke timed).
3. Assume time scales with MACs (dense 3x3 convolutions are, if anything, more
   efficient per MAC than MobileNet's depthwise ones; the 11 M-parameter dense head
   is memory-bound and adds roughly its 11 MB read per inference at a few GB/s).
4. Stock clock 1500 MHz (early Pi 4 B; 1800 MHz on later boards): time x 1950/1500.
5. One thread instead of four: x 3 (assumed parallel efficiency ~75%).

Decode and preprocessing are not estimated: run `edge-birads bench` on the device.
"""

from __future__ import annotations

import argparse

from edge_birads.classifier import default_model_path
from edge_birads.interpreter import make_interpreter

REFERENCE = {
    "model": "MobileNet v1 1.0 224 quant",
    "macs": 569e6,
    "ms": 1000.0 / 38.5,
    "clock_mhz": 1950.0,
    "threads": 4,
    "source": "Q-engineering TensorFlow_Lite_Classification_RPi_64-bits (RPi 4 @ 1950 MHz, 64-bit OS, 4 threads); "
    "MACs from Howard et al. 2017 (arXiv:1704.04861)",
}
STOCK_MHZ = 1500.0
ONE_THREAD_FACTOR = 3.0


def count_macs(model_path: str) -> dict[str, float]:
    """Multiply-accumulates per inference of CONV_2D and FULLY_CONNECTED ops, from the graph."""
    interpreter, _ = make_interpreter(model_path)
    shapes = {t["index"]: [int(d) for d in t["shape"]] for t in interpreter.get_tensor_details()}
    macs = {"conv": 0.0, "dense": 0.0}
    for op in interpreter._get_ops_details():
        if op["op_name"] == "CONV_2D":
            _, out_h, out_w, out_c = shapes[int(op["outputs"][0])]
            _, k_h, k_w, in_c = shapes[int(op["inputs"][1])]
            macs["conv"] += out_h * out_w * out_c * k_h * k_w * in_c
        elif op["op_name"] == "FULLY_CONNECTED":
            out_c, in_c = shapes[int(op["inputs"][1])]
            macs["dense"] += out_c * in_c
    return macs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(default_model_path()))
    args = parser.parse_args()
    macs = count_macs(args.model)
    total = macs["conv"] + macs["dense"]
    scale = total / REFERENCE["macs"]
    four_overclocked = REFERENCE["ms"] * scale
    four_stock = four_overclocked * REFERENCE["clock_mhz"] / STOCK_MHZ
    one_stock = four_stock * ONE_THREAD_FACTOR
    print(f"model: {args.model}")
    print(f"MACs per inference: {total / 1e6:.1f} M (conv {macs['conv'] / 1e6:.1f} M, dense {macs['dense'] / 1e6:.1f} M)")
    print(f"reference: {REFERENCE['model']}, {REFERENCE['macs'] / 1e6:.0f} M MACs, {REFERENCE['ms']:.1f} ms; {REFERENCE['source']}")
    print("ESTIMATE, Raspberry Pi 4, int8 inference only (not measured):")
    print(f"  4 threads @ 1950 MHz: {four_overclocked:6.1f} ms   (MAC ratio {scale:.2f})")
    print(f"  4 threads @ 1500 MHz: {four_stock:6.1f} ms")
    print(f"  1 thread  @ 1500 MHz: {one_stock:6.1f} ms   (assumes x{ONE_THREAD_FACTOR:.0f} for one thread instead of four)")
    print("  the paper reported 120 ms per inference on its own hardware")


if __name__ == "__main__":
    main()
