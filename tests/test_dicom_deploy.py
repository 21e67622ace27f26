"""The DICOM node's service files: the receive unit, the watch unit's send drop-in, the example config."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_birads.receive import build_receive_config
from edge_birads.watch.config import build_config
from edge_birads.watch.outbox import Destination, build_send_config

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy" / "raspberrypi"


def filled(name: str, tmp_path: Path) -> str:
    """A unit or config as install.sh writes it (placeholders filled), the command pointing at this venv."""
    command = str(Path(sys.executable).parent / "edge-birads")
    text = (DEPLOY / name).read_text()
    text = text.replace("@PREFIX@/venv/bin/edge-birads", command)
    for key, value in {"PREFIX": "/opt/edge-birads", "CONFIG": str(tmp_path / "watch.conf"), "USER": "root", "DATA": str(tmp_path),
                       "INBOX": str(tmp_path / "inbox"), "READWRITE": str(tmp_path)}.items():  # fmt: skip
        text = text.replace(f"@{key}@", value)
    import re

    assert not re.search(r"@[A-Z]+@", text), "an unfilled placeholder"
    return text


def test_example_config_describes_receive_and_send(tmp_path: Path):
    config = tmp_path / "watch.conf"
    config.write_text(filled("watch.conf.example", tmp_path))
    watch = build_config({}, config)
    receive = build_receive_config({}, config)
    assert receive.inbox == watch.inbox == tmp_path / "inbox"
    assert (receive.ae_title, receive.port, receive.allowed_calling) == ("EDGEBIRADS", 11112, ())
    assert build_send_config({}, config, watch.state) is None  # reports are off until [send] is uncommented
    text = config.read_text().replace("# [send]", "[send]").replace("# destination =", "destination =")
    config.write_text(text)
    send = build_send_config({}, config, watch.state)
    assert send.destination == Destination("PACS", "192.168.1.10", 104) and send.outbox == watch.state / "outbox"


def test_receive_unit_runs_receive_with_the_config_and_network(tmp_path: Path):
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string(filled("edge-birads-receive.service", tmp_path))
    service = unit["Service"]
    assert service["ExecStart"].endswith(f"edge-birads receive --config {tmp_path / 'watch.conf'}")
    assert service["ReadWritePaths"] == str(tmp_path / "inbox")
    assert "AF_INET" in service["RestrictAddressFamilies"] and "PrivateNetwork" not in service
    dropin = configparser.ConfigParser(interpolation=None)
    dropin.read_string((DEPLOY / "edge-birads-watch-send.conf").read_text())
    assert dropin["Service"]["PrivateNetwork"] == "no" and "AF_INET" in dropin["Service"]["RestrictAddressFamilies"]


def test_watch_unit_sends_sigterm_to_the_daemon_alone(tmp_path: Path):
    """Its --jobs workers keep SIGTERM's default (the pool kills them so when one dies): a stop is the daemon's."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string(filled("edge-birads-watch.service", tmp_path))
    assert (unit["Service"]["KillSignal"], unit["Service"]["KillMode"]) == ("SIGTERM", "mixed")


def test_units_pass_systemd_analyze_verify(tmp_path: Path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not found (systemd is not installed here)")
    names = ["edge-birads-receive.service", "edge-birads-watch.service"]
    for name in names:
        (tmp_path / name).write_text(filled(name, tmp_path))
    result = subprocess.run(
        [analyze, "verify", "--man=no", *(str(tmp_path / n) for n in names)], capture_output=True, text=True, timeout=120,
        env={"SYSTEMD_LOG_LEVEL": "warning", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_installer_offers_the_dicom_node():
    result = subprocess.run(["bash", str(DEPLOY / "install.sh"), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "--dicom              also the DICOM node" in result.stdout
