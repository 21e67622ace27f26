"""Compare two `edge-birads classify --format jsonl` outputs record by record.

WHY: the arm64 check must prove that a Raspberry Pi gives the same answers as
the x86 machine the model was validated on. With an int8 model the integer
arithmetic is the same on both, so the outputs must be identical, not merely
close: any difference in referral, group, suspicion score, probabilities, threshold,
model name or hash, or error message is a failure. Latency differs by design and is
ignored; file paths differ only by the directory the inputs were copied to, so
each side's prefix is stripped before records are matched by file.

Usage: python3 compare_outputs.py EXPECTED.jsonl ACTUAL.jsonl
           [--expected-prefix DIR] [--actual-prefix DIR] [--names x86,arm64]
Exit status: 0 identical, 1 any difference (a readable diff on stdout), 2 unreadable input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COMPARED_FIELDS = ("referral", "group", "suspicion_score", "probabilities", "referral_threshold", "model", "model_sha256", "error")


class OutputError(Exception):
    """A JSONL file that is not a classify output (bad JSON, missing fields, duplicate files)."""


def normalise_path(path: str, prefix: str | None) -> str:
    """The file's path relative to the directory its side of the run read it from."""
    if prefix:
        base = prefix.rstrip("/") + "/"
        if path.startswith(base):
            return path[len(base) :]
    return path


def load_records(text: str, prefix: str | None, source: str) -> dict[str, dict]:
    """Parse classify JSONL into {normalised file: record}; reject what is not one."""
    records: dict[str, dict] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise OutputError(f"{source}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict) or "file" not in record:
            raise OutputError(f"{source}:{number}: not a classify record (no 'file' field)")
        missing = [field for field in COMPARED_FIELDS if field not in record]
        if missing:
            raise OutputError(f"{source}:{number}: missing field(s) {', '.join(missing)}")
        name = normalise_path(str(record["file"]), prefix)
        if name in records:
            raise OutputError(f"{source}:{number}: file {name} appears twice")
        records[name] = record
    return records


def show(value: object) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def compare(expected: dict[str, dict], actual: dict[str, dict], names: tuple[str, str] = ("expected", "actual")) -> list[str]:
    """Differences as readable lines; an empty list means identical (latency and paths aside)."""
    left, right = names
    width = max(len(left), len(right))
    lines: list[str] = []
    for name in sorted(set(expected) - set(actual)):
        lines.append(f"{name}: only in {left}")
    for name in sorted(set(actual) - set(expected)):
        lines.append(f"{name}: only in {right}")
    for name in sorted(set(expected) & set(actual)):
        for field in COMPARED_FIELDS:
            a, b = expected[name][field], actual[name][field]
            if a == b and type(a) is type(b):
                continue
            if isinstance(a, dict) and isinstance(b, dict):
                for key in sorted(set(a) | set(b)):
                    if a.get(key, "<absent>") != b.get(key, "<absent>"):
                        lines.append(f"{name}: {field}[{key}]")
                        lines.append(f"    {left:<{width}} {show(a.get(key, '<absent>'))}")
                        lines.append(f"    {right:<{width}} {show(b.get(key, '<absent>'))}")
            else:
                lines.append(f"{name}: {field}")
                lines.append(f"    {left:<{width}} {show(a)}")
                lines.append(f"    {right:<{width}} {show(b)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare two edge-birads classify JSONL outputs (latency ignored).")
    parser.add_argument("expected", type=Path)
    parser.add_argument("actual", type=Path)
    parser.add_argument("--expected-prefix", help="directory prefix stripped from the expected side's file paths")
    parser.add_argument("--actual-prefix", help="directory prefix stripped from the actual side's file paths")
    parser.add_argument("--names", default="expected,actual", help="labels of the two sides in the diff, comma-separated")
    args = parser.parse_args(argv)
    names = tuple(args.names.split(",", 1)) if "," in args.names else ("expected", "actual")
    try:
        expected = load_records(args.expected.read_text(encoding="utf-8"), args.expected_prefix, str(args.expected))
        actual = load_records(args.actual.read_text(encoding="utf-8"), args.actual_prefix, str(args.actual))
    except (OSError, UnicodeDecodeError, OutputError) as exc:
        print(f"compare_outputs: {exc}", file=sys.stderr)
        return 2
    if not expected:
        print(f"compare_outputs: {args.expected} holds no records", file=sys.stderr)
        return 2
    differences = compare(expected, actual, names)  # type: ignore[arg-type]
    if differences:
        print(f"DIFFERENT: {names[0]} vs {names[1]}, {len(expected)} vs {len(actual)} records")
        print("\n".join(differences))
        return 1
    failed = sum(1 for record in expected.values() if record["error"] is not None)
    print(f"identical: {names[0]} vs {names[1]}, {len(expected)} records ({failed} with the same error), latency ignored")
    return 0


if __name__ == "__main__":
    sys.exit(main())
