"""The watch daemon on the hostile-input corpus: each bad file quarantined with its reason, the rest classified.

The same corpus as tests/test_hostile.py (classify), dropped into a watched inbox: a bad file must end in
failed/ with a reason matching what classify says, never stop or block the daemon (a FIFO, a symlink loop,
a folder named like an image), and DICOM patient identifiers must appear in no record, status or log line.
"""

from __future__ import annotations

import re
from pathlib import Path

import hostile_corpus as corpus
import pytest
from watch_support import Daemon

from edge_birads.errors import printable_name


@pytest.mark.parametrize("poll", [False, True], ids=["inotify", "poll"])
def test_daemon_quarantines_every_hostile_file_with_its_reason(tmp_path: Path, poll: bool) -> None:
    daemon = Daemon(tmp_path, poll=poll)
    cases = [case for case in corpus.build_corpus(daemon.inbox) if not case.skip]
    daemon.start()
    daemon.wait_all(len(cases))
    assert daemon.stop() == 0, daemon.log_text()

    results = {record["file"]: record for record in daemon.result_records()}
    failures = {record["file"]: record for record in daemon.failure_records()}
    for case in cases:
        shown = printable_name(case.name)
        if case.ok:
            assert shown in results and shown not in failures, (case.name, failures.get(shown))
            assert results[shown]["error"] is None
        else:
            assert shown in failures and shown not in results, (case.name, results.get(shown))
            assert re.search(case.reason, failures[shown]["error"]), (case.name, failures[shown]["error"])
    assert len(results) + len(failures) == len(cases), "one record per input, none extra"

    everything = daemon.log_text()
    for folder in (daemon.results, daemon.failed):
        everything += "".join(p.read_text(errors="replace") for p in folder.rglob("*.json"))
    for secret in (corpus.PATIENT_NAME, corpus.PATIENT_ID, corpus.PATIENT_BIRTH_DATE, "Hostilia"):
        assert secret not in everything
    assert "Traceback" not in daemon.log_text()
