"""The pretrained rows of docs/ablation.md are generated from the archived per-fold outputs, and re-derive from them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


from convert.training.pretrained import RESULTS, TABLE_END, TABLE_START, table

REPO = Path(__file__).resolve().parent.parent


def test_the_page_holds_the_table_the_archive_generates():
    page = (REPO / "docs" / "ablation.md").read_text(encoding="utf-8")
    between = page.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0]
    assert between == "\n" + table(RESULTS), "docs/ablation.md is stale: python -m convert pretrained table --doc docs/ablation.md"


def test_every_archived_figure_re_derives_from_the_archived_predictions(shared_data, tmp_path, monkeypatch):
    """``collect`` on a copy of each archived row writes the same metrics (the archive is the record, not a summary of it)."""
    from convert.training import pretrained

    rows = [p for p in sorted(RESULTS.iterdir()) if (p / "metrics_int8.json").exists()]
    assert rows, "no archived row"
    for row in rows:
        copy = tmp_path / row.name
        shutil.copytree(row, copy)
        for metrics in copy.glob("metrics*.json"):
            metrics.unlink()
        pretrained.collect(copy)
        for name in ("metrics_int8.json", "metrics.json"):
            if (row / name).exists():
                assert json.loads((copy / name).read_text()) == json.loads((row / name).read_text()), (row.name, name)


def test_the_page_holds_the_int8_layer_table_the_archive_generates():
    from convert.experiments.pretrained_experiments import INT8_TABLE_END, INT8_TABLE_START, int8_layers_table

    page = (REPO / "docs" / "ablation.md").read_text(encoding="utf-8")
    between = page.split(INT8_TABLE_START, 1)[1].split(INT8_TABLE_END, 1)[0]
    assert between == "\n" + int8_layers_table(RESULTS / "int8-layers" / "int8_layers.json")
