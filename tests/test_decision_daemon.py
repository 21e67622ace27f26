"""The watch daemon says the decision the way classify does: decision first, one score name, the rule in every record.

A real daemon process on a real CBIS-DDSM DICOM whose most likely group (BI-RADS 2-3, 0.891) is
not the one its suspicion score (0.109, over the threshold 0.094) sends it to.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from watch_support import Daemon

from edge_birads.card import load_card
from edge_birads.classifier import default_model_path

CARD = load_card(default_model_path())


def test_the_log_line_and_the_records_carry_one_decision_and_its_rule(tmp_path: Path, cbis_dicoms) -> None:
    (dicom,) = [path for path in cbis_dicoms if path.name == "1-133.dcm"]
    daemon = Daemon(tmp_path)
    shutil.copy(dicom, daemon.inbox / "case.dcm")
    (daemon.inbox / "bad.png").write_bytes(b"not an image at all")
    daemon.start()
    daemon.wait_all(2)
    assert daemon.stop() == 0
    log = daemon.log_text()
    assert re.search(
        r" info: case\.dcm: REFER for review, BI-RADS 4-5, suspicion score 0\.109 >= threshold 0\.094 \(\d+ ms\) -> case\.dcm\.json\n", log
    ), log
    assert "malignancy" not in log and "BI-RADS 2-3" not in log
    (result,) = daemon.result_records()
    (failure,) = daemon.failure_records()
    rule = {"referral_threshold": CARD.referral_threshold, "model": "default", "model_sha256": CARD.sha256}
    assert {key: result[key] for key in rule} == rule
    assert (result["referral"], result["group"], result["suspicion_score"]) == (True, "BI-RADS 4-5", 0.109375)
    assert {key: failure[key] for key in rule} == rule
    assert failure["referral"] is None and failure["group"] is None and failure["error"]
