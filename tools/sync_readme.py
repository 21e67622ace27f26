"""Rewrite the README's model section from the bundled model card (`edge-birads info`).

Run after bundling a new model: python tools/sync_readme.py
tests/test_repo.py fails while the README and the card disagree.
"""

from pathlib import Path

from edge_birads.card import load_card
from edge_birads.card_summary import summarize
from edge_birads.classifier import default_model_path

START, END = "<!-- model-card:start -->", "<!-- model-card:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def rendered() -> str:
    return f"{START}\n{summarize(load_card(default_model_path()))}\n{END}"


def replace_block(start: str, end: str, block: str) -> None:
    """Replace the README's text from ``start`` to ``end`` (both included) with ``block``."""
    text = README.read_text(encoding="utf-8")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    README.write_text(head + block + tail, encoding="utf-8")


def main() -> None:
    replace_block(START, END, rendered())


if __name__ == "__main__":
    main()
