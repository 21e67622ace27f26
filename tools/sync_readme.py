"""Rewrite the README's generated sections: the model card (`edge-birads info`) and the table example.

Run after bundling a new model or changing the output: python tools/sync_readme.py
tests/test_repo.py fails while the README and what the program prints disagree.
"""

import os
from pathlib import Path

from edge_birads.card import load_card
from edge_birads.card_summary import summarize
from edge_birads.classifier import default_model_path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
CARD = "<!-- model-card:start -->", "<!-- model-card:end -->"
EXAMPLE = "<!-- classify-example:start -->", "<!-- classify-example:end -->"


def rendered() -> str:
    start, end = CARD
    return f"{start}\n{summarize(load_card(default_model_path()))}\n{end}"


def classify_example() -> str:
    """`edge-birads classify examples/` as a user sees it, run from the checkout (stdout only, indented)."""
    from click.testing import CliRunner

    from edge_birads.cli import cli

    here = os.getcwd()
    os.chdir(REPO)
    try:
        result = CliRunner().invoke(cli, ["classify", "examples/"])
    finally:
        os.chdir(here)
    assert result.exit_code == 0, result.output
    start, end = EXAMPLE
    body = "\n".join("    " + line for line in result.stdout.splitlines())
    return f"{start}\n{body}\n{end}"


def replace(text: str, markers: tuple[str, str], section: str) -> str:
    head, rest = text.split(markers[0], 1)
    _, tail = rest.split(markers[1], 1)
    return head + section + tail


def replace_block(start: str, end: str, block: str) -> None:
    """Replace the README's text from ``start`` to ``end`` (both included) with ``block``."""
    text = README.read_text(encoding="utf-8")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    README.write_text(head + block + tail, encoding="utf-8")


def main() -> None:
    text = README.read_text(encoding="utf-8")
    text = replace(text, CARD, rendered())
    text = replace(text, EXAMPLE, classify_example())
    README.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
