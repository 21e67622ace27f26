"""Writing results as a readable table, JSON lines or CSV, and the one-line account of a decision.

Every format says the same thing in the same words: the decision first ("REFER for
review" / "routine"), then the group, then the suspicion score (the probability of the
card's malignant label) and the other groups' probabilities.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence

from edge_birads.results import RESULT_FIELDS, Result, Rule, decision

FORMATS = ("table", "jsonl", "csv")


def jsonl_line(result: Result) -> str:
    return json.dumps(result.to_dict(), ensure_ascii=False, sort_keys=False)


def probability_column(label: str) -> str:
    """The CSV column (and table heading) of one group's probability."""
    return f"P({label})"


def csv_columns(labels: Sequence[str]) -> list[str]:
    """The record's fields, with ``probabilities`` spread over one column per group, named after its label."""
    columns: list[str] = []
    for key in RESULT_FIELDS:
        columns += [probability_column(label) for label in labels] if key == "probabilities" else [key]
    return columns


def csv_row(record: dict, labels: Sequence[str]) -> list:
    """One record as CSV cells: booleans as true/false, nulls as empty cells, no JSON in any cell."""
    cells: list = []
    for key in RESULT_FIELDS:
        value = record[key]
        if key == "probabilities":
            cells += ["" if value is None else value[label] for label in labels]
        elif isinstance(value, bool):
            cells.append("true" if value else "false")
        else:
            cells.append("" if value is None else value)
    return cells


def _csv(cells: list) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(cells)
    return buffer.getvalue()


def csv_header(labels: Sequence[str]) -> str:
    return _csv(csv_columns(labels))


def csv_line(result: Result, labels: Sequence[str]) -> str:
    return _csv(csv_row(result.to_dict(), labels))


def describe(record: dict) -> str:
    """A classified record in one phrase, decision first: the daemon's log line says this."""
    comparison = ">=" if record["referral"] else "<"
    return (
        f"{decision(record['referral']).replace('refer', 'REFER')}, {record['group']}, suspicion score "
        f"{record['suspicion_score']:.3f} {comparison} threshold {record['referral_threshold']:.3f}"
    )


def rule_summary(rule: Rule, malignant_label: str) -> str:
    """How this run decided: the score's definition, the threshold and the model."""
    return (
        f"suspicion score = P({malignant_label}); refer for review when >= {rule.referral_threshold:.3f} "
        f"(model {rule.model}, sha256 {rule.model_sha256[:12]}...)"
    )


class TableWriter:
    """A fixed-width table, one row per file as it is classified, decision first."""

    def __init__(self, emit: Callable[[str], None], labels: Sequence[str], malignant_label: str) -> None:
        self.emit = emit
        self.malignant_label = malignant_label
        self.others = [label for label in labels if label != malignant_label]
        self.group_width = max(len("GROUP"), *(len(label) for label in labels))
        self.header_written = False

    def _row(self, decision_text: str, group: str, numbers: list[str], file: str) -> str:
        columns = [f"{decision_text:<16}", f"{group:<{self.group_width}}", f"{numbers[0]:>15}"]
        columns += [f"{number:>{len(probability_column(label))}}" for number, label in zip(numbers[1:], self.others)]
        return "  ".join(columns + [file])

    def write(self, result: Result) -> None:
        if not self.header_written:
            self.emit(self._row("DECISION", "GROUP", ["SUSPICION SCORE", *map(probability_column, self.others)], "FILE"))
            self.header_written = True
        if result.prediction is None:
            self.emit(self._row("ERROR", "-", ["-"] * (1 + len(self.others)), f"{result.file}: {result.error}"))
            return
        prediction = result.prediction
        numbers = [f"{prediction.suspicion_score:.3f}", *(f"{prediction.probabilities[label]:.3f}" for label in self.others)]
        self.emit(self._row(decision(prediction.referral).replace("refer", "REFER"), prediction.group, numbers, result.file))
