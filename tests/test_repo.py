"""Repository promises: the README's commands are what CI runs, and the disclaimer is where users look."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()[:15]
    return [line.strip() for line in lines if line.startswith("    python3 ")]


def test_readme_starts_with_the_two_setup_commands():
    commands = readme_commands()
    assert len(commands) == 2
    install, tests = commands
    assert "pip install ." in install and "edge-birads classify examples/" in install
    assert tests.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert readme_commands()[1] in ci


def test_readme_says_it_is_not_a_diagnostic_device():
    head = (REPO / "README.md").read_text(encoding="utf-8")[:3000]
    assert "not a diagnostic device" in head and "clinician" in head


def test_readme_model_section_is_the_bundled_card():
    import sys

    sys.path.insert(0, str(REPO / "tools"))
    from sync_readme import rendered

    assert rendered() in (REPO / "README.md").read_text(encoding="utf-8"), "README is stale: python tools/sync_readme.py"


def test_readme_table_example_is_what_classify_prints():
    import sys

    sys.path.insert(0, str(REPO / "tools"))
    from sync_readme import classify_example

    assert classify_example() in (REPO / "README.md").read_text(encoding="utf-8"), "README is stale: python tools/sync_readme.py"
