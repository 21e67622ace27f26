"""Writing results as a readable table, JSON lines or CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable

from edge_birads.results import RESULT_FIELDS, Result

FORMATS = ("table", "jsonl", "csv")


def jsonl_line(result: Result) -> str:
    return json.dumps(result.to_dict(), ensure_ascii=False, sort_keys=False)


def csv_header() -> str:
    return ",".join(RESULT_FIELDS)


def csv_line(result: Result) -> str:
    """One CSV row; probabilities go in as a JSON object so the columns stay fixed."""
    record = result.to_dict()
    if record["probabilities"] is not None:
        record["probabilities"] = json.dumps(record["probabilities"], ensure_ascii=False)
    if record["referral"] is not None:
        record["referral"] = "true" if record["referral"] else "false"
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(["" if record[key] is None else record[key] for key in RESULT_FIELDS])
    return buffer.getvalue()


class TableWriter:
    """A fixed-width table, one row per file as it is classified."""

    def __init__(self, emit: Callable[[str], None], malignant_label: str) -> None:
        self.emit = emit
        self.malignant_label = malignant_label
        self.header_written = False

    def write(self, result: Result) -> None:
        if not self.header_written:
            self.emit(f"{'LABEL':<12} {'P(' + self.malignant_label + ')':>16} {'REFERRAL':<8}  FILE")
            self.header_written = True
        if result.prediction is None:
            self.emit(f"{'ERROR':<12} {'-':>16} {'-':<8}  {result.file}: {result.error}")
            return
        prediction = result.prediction
        referral = "REFER" if prediction.referral else "no"
        self.emit(f"{prediction.label:<12} {prediction.malignancy_score:>16.3f} {referral:<8}  {result.file}")
