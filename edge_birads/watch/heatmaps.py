"""The daemon's lesion-map pictures (``heatmap = DIR``): one PNG per classified image, as ``classify --heatmap``.

The picture is :class:`edge_birads.heatmap.HeatmapWriter`'s (the same render and caption), of the record the
daemon filed: its caption is made from that record, its map from the same model run. It is named after the
record, ``RESULTS/study/x.dcm.json`` -> ``HEATMAP/study/x.dcm.heatmap.png``, so one record has one picture
whatever happens, and written durably (temporary dot-name, fsync, rename, folder fsync) after the record and
before the input leaves the working folder. A kill between the two leaves the input in the working folder; the
restarted daemon finds the record and, if the picture is missing, runs the model once more on the same bytes
for the map, and draws it only when that run says exactly what the record says. A picture already there
is kept (a re-send of the same name and content, or a restart after the picture). No picture for a failed
file, and none for a copy of content already classified under another name (``duplicate_of`` names the
image whose picture it is).
"""

from __future__ import annotations

from pathlib import Path

from edge_birads.errors import printable_name
from edge_birads.heatmap import HeatmapWriter, LesionMap, heatmap_name
from edge_birads.watch.log import EventLog

# What a re-run must give exactly as the filed record, for its map to be drawn under that record.
SAME_FIELDS = ("referral", "group", "suspicion_score", "probabilities", "referral_threshold", "model_sha256")


class HeatmapOutput:
    """Pictures for the records of ``results`` into ``folder`` (which may be ``results`` itself)."""

    def __init__(self, folder: Path, results: Path, classifier, log: EventLog) -> None:
        self.results = results
        self.classifier = classifier
        self.log = log
        self.writer = HeatmapWriter(folder, classifier.card)

    def path_for(self, record_path: Path) -> Path:
        """The picture of the record at ``record_path``: the same sub-folder, the record's name with .heatmap.png."""
        relative = record_path.parent.relative_to(self.results)
        return self.writer.folder / relative / heatmap_name(record_path.name, set())

    def after_result(
        self, record_path: Path, record: dict, lesion_map: LesionMap | None, data: bytes, name: str, make_folder,
        earlier: bool = False,
    ) -> Path | None:
        """Draw the picture of a durable ``record``: from ``lesion_map``, of the model run that made the record, or, for
        a record an ``earlier`` run wrote, from a new run on ``data`` if no picture is there yet. Raises OSError when
        the picture cannot be written; returns its path, or None when none is drawn."""
        if record.get("error") is not None or record.get("suspicion_score") is None:
            return None
        target = self.path_for(record_path)
        if lesion_map is None and not earlier:
            self.log.warning(f"{printable_name(name)}: no heatmap: the model run gave no lesion map")
            return None
        if lesion_map is None:
            if target.exists():
                return target
            result, lesion_map = self.classifier.explain_bytes(data, name)
            again = result.to_dict()
            changed = [key for key in SAME_FIELDS if again.get(key) != record.get(key)]
            if lesion_map is None or changed:
                self.log.warning(
                    f"{printable_name(name)}: no heatmap: its result was filed by an earlier run and the model now "
                    f"gives another {', '.join(changed) or 'outcome'}"
                )
                return None
        make_folder(target.parent)
        return self.writer.write_at(target, record, lesion_map)
