"""The short fuzz run CI makes (issue 8): atheris over decode + preprocess, seeded from the hostile corpus.

EDGE_BIRADS_FUZZ_SECONDS sets its length (default 60; 0 skips it). The long
run and its findings are in docs/fuzzing.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SECONDS = int(os.environ.get("EDGE_BIRADS_FUZZ_SECONDS", "60"))


def test_short_fuzz_run_finds_nothing(tmp_path):
    pytest.importorskip("atheris", reason="the fuzzer needs atheris (the [fuzz] extra)")
    if SECONDS <= 0:
        pytest.skip("EDGE_BIRADS_FUZZ_SECONDS=0")
    command = [
        sys.executable, str(REPO / "fuzz" / "fuzz_decode.py"),
        f"-max_total_time={SECONDS}", "-rss_limit_mb=1024", "-timeout=20", "-seed=1",
        f"-artifact_prefix={tmp_path}/", str(tmp_path / "corpus"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=SECONDS + 300, check=False)
    tail = "\n".join(done.stderr.splitlines()[-40:])
    assert done.returncode == 0, f"the fuzzer found something; reproduce with: python fuzz/fuzz_decode.py <crash file>\n{tail}"
    runs = re.search(r"Done (\d+) runs", done.stderr)
    assert runs and int(runs.group(1)) > 100, tail
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*"))


def test_every_seed_passes_the_fuzz_target(tmp_path):
    """The target itself on its seeds, in-process: valid seeds give tensors, broken ones InputError."""
    pytest.importorskip("atheris", reason="the fuzzer needs atheris (the [fuzz] extra)")
    sys.path.insert(0, str(REPO / "fuzz"))
    import fuzz_decode

    assert fuzz_decode.write_seeds(tmp_path) > 20
    for seed in sorted(tmp_path.iterdir()):
        fuzz_decode.test_one_input(seed.read_bytes())


def test_inputs_the_fuzzer_found_stay_fixed():
    """Every finding kept in fuzz/regressions/ ends as a tensor or an InputError (the target raises otherwise)."""
    pytest.importorskip("atheris", reason="the fuzzer needs atheris (the [fuzz] extra)")
    sys.path.insert(0, str(REPO / "fuzz"))
    import fuzz_decode

    findings = sorted((REPO / "fuzz" / "regressions").iterdir())
    assert findings
    for finding in findings:
        fuzz_decode.test_one_input(finding.read_bytes())
