"""The decode limits in the daemon: the same options as classify, settable in the config file, honoured per file."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from watch_support import Daemon

from edge_birads.cli import cli
from edge_birads.cli_shared import limits_from
from edge_birads.limits import DEFAULT_LIMITS
from edge_birads.watch.config import ConfigError, build_config

SAMPLES = Path(__file__).resolve().parent.parent / "edge_birads" / "samples"
BENIGN = SAMPLES / "cbis-P00173-left-cc-benign.png"  # 662 x 1024 = 677,888 pixels, 114,727 bytes
MALIGNANT = SAMPLES / "cbis-P00820-left-cc-malignant.png"  # 567 x 1024 = 580,608 pixels, 97,227 bytes
LIMIT_OPTIONS = ("--max-pixels", "--max-file-mb", "--time-limit")


@pytest.mark.parametrize("command", ["classify", "watch"])
def test_both_commands_list_the_decode_limit_options(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    for option in LIMIT_OPTIONS:
        assert option in result.output, (command, option)
    for variable in ("EDGE_BIRADS_MAX_PIXELS", "EDGE_BIRADS_MAX_FILE_MB", "EDGE_BIRADS_TIME_LIMIT"):
        assert variable in " ".join(result.output.split()), (command, variable)


def test_the_two_commands_share_one_definition_of_the_limits() -> None:
    def params(name: str) -> dict:
        return {p.opts[0]: p for p in cli.commands[name].params if p.opts[0] in LIMIT_OPTIONS}

    classify, watch = params("classify"), params("watch")
    assert sorted(classify) == sorted(watch) == sorted(LIMIT_OPTIONS)
    for option in LIMIT_OPTIONS:
        assert repr(classify[option].type) == repr(watch[option].type) and classify[option].envvar == watch[option].envvar
        assert watch[option].default is None, "watch: not given means the config file's value"
        default = classify[option].default
        shown = int(default) if float(default).is_integer() else default
        assert watch[option].help.endswith(f"[default: {shown}]"), "watch's help names classify's default"
    defaults = [classify[option].default for option in LIMIT_OPTIONS]
    assert limits_from(*defaults) == DEFAULT_LIMITS, "the options' defaults are the runtime's limits"


def test_config_file_sets_the_limits_and_the_command_line_wins(tmp_path: Path) -> None:
    conf = tmp_path / "watch.conf"
    conf.write_text("[watch]\ninbox = /srv/in\nresults = /srv/out\nmax_pixels = 30000000\nmax_file_mb = 64\ntime_limit = 20\n")
    config = build_config({}, conf)
    assert (config.limits.max_pixels, config.limits.max_file_bytes, config.limits.max_seconds) == (30_000_000, 64 * 2**20, 20.0)
    assert config.limits.min_side == 8, "the limits not settable there keep their defaults"
    config = build_config({"max_pixels": 5_000_000, "time_limit": 0.0}, conf)
    assert (config.limits.max_pixels, config.limits.max_seconds) == (5_000_000, 0.0)
    default = build_config({"inbox": "/a", "results": "/b"})
    assert default.limits.max_pixels == 120_000_000 and default.limits.max_file_bytes == 512 * 2**20


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("max_pixels = 0", "max-pixels must be at least 1, not 0"),
        ("max_pixels = 5e6", "max_pixels = '5e6' is not a valid int"),
        ("max_file_mb = -1", "max-file-mb must be more than 0, not -1"),
        ("time_limit = -2", "time-limit must be 0 (no limit) or more seconds, not -2"),
        ("time_limit = soon", "time_limit = 'soon' is not a valid float"),
        # nan and inf: the setting's usual line (they passed, then every file failed, or build_config crashed)
        ("time_limit = nan", "time-limit must be 0 (no limit) or more seconds, not nan"),
        ("time_limit = inf", "time-limit must be 0 (no limit) or more seconds, not inf"),
        ("max_file_mb = nan", "max-file-mb must be more than 0, not nan"),
        ("max_file_mb = -inf", "max-file-mb must be more than 0, not -inf"),
        ("stable_seconds = NaN", "stable-seconds must be between 0 and 3600, not nan"),
        ("heartbeat_seconds = infinity", "heartbeat-seconds must be between 0.1 and 3600, not inf"),
    ],
)
def test_a_bad_limit_in_the_config_file_is_one_clear_line(tmp_path: Path, line: str, message: str) -> None:
    conf = tmp_path / "watch.conf"
    conf.write_text(f"[watch]\ninbox = {tmp_path}\nresults = {tmp_path / 'r'}\n{line}\n")
    with pytest.raises(ConfigError) as info:
        build_config({}, conf)
    assert str(info.value) in (message, f"config file {conf}: {message}")
    result = CliRunner().invoke(cli, ["watch", "--config", str(conf)])
    usage = "Usage: cli watch [OPTIONS] [INBOX]\nTry 'cli watch --help' for help.\n\n"
    assert (result.exit_code, result.output) == (2, f"{usage}Error: {info.value}\n")
    assert not (tmp_path / "r").exists(), "refused before anything is made"


def test_the_daemon_honours_the_limits_of_its_config_file(tmp_path: Path) -> None:
    """max_pixels and max_file_mb from the config: each refused image is filed as an error naming the file and the
    reason classify gives, and the image after them is still classified."""
    noise = np.random.default_rng(0).integers(0, 256, (700, 700), dtype=np.uint8)  # 490,000 pixels, ~490 KB as PNG
    ok, encoded = cv2.imencode(".png", noise)
    assert ok
    conf = tmp_path / "watch.conf"
    conf.write_text("[watch]\nmax_pixels = 600000\nmax_file_mb = 0.3\n")
    daemon = Daemon(tmp_path, extra=("--config", str(conf)))
    shutil.copy(BENIGN, daemon.inbox / "1-benign.png")
    (daemon.inbox / "2-noise.png").write_bytes(encoded.tobytes())
    shutil.copy(MALIGNANT, daemon.inbox / "3-malignant.png")
    daemon.start()
    daemon.wait_all(3)
    assert daemon.stop() == 0
    failures = {record["file"]: record["error"] for record in daemon.failure_records()}
    size = len(encoded)
    assert failures == {
        "1-benign.png": "image is 662x1024 pixels, over the limit of 600000 pixels",
        "2-noise.png": f"file is {size / 1024:.1f} KiB ({size} bytes), over the limit of 307.2 KiB (314572 bytes)",
    }
    log = daemon.log_text()
    for name, reason in failures.items():
        assert f"{name}: {reason}" in log
    (result,) = daemon.result_records()
    assert result["file"] == "3-malignant.png" and result["error"] is None and result["group"]
    # classify with the same limits gives the same reason for the same file.
    run = CliRunner().invoke(cli, ["classify", "--max-pixels", "600000", str(BENIGN)])
    assert run.exit_code == 1 and f"error: {BENIGN}: {failures['1-benign.png']}" in run.output



@pytest.mark.parametrize("command", ["classify", "watch"])
@pytest.mark.parametrize(
    ("option", "value", "range_"),
    [("--time-limit", "nan", "x>=0"), ("--time-limit", "inf", "x>=0"), ("--max-file-mb", "nan", "x>0"),
     ("--max-file-mb", "inf", "x>0")],
)
def test_nan_or_inf_on_the_command_line_is_the_options_usual_one_line_error(
    tmp_path: Path, command: str, option: str, value: str, range_: str
) -> None:
    arguments = [str(tmp_path)] + (["--results", str(tmp_path / "r")] if command == "watch" else [])
    usage = "PATHS..." if command == "classify" else "[INBOX]"
    expected = (
        f"Usage: cli {command} [OPTIONS] {usage}\nTry 'cli {command} --help' for help.\n\n"
        f"Error: Invalid value for '{option}': {value} is not in the range {range_}.\n"
    )
    given = CliRunner().invoke(cli, [command, *arguments, option, value])
    assert (given.exit_code, given.output) == (2, expected)
    variable = {"--time-limit": "EDGE_BIRADS_TIME_LIMIT", "--max-file-mb": "EDGE_BIRADS_MAX_FILE_MB"}[option]
    from_env = CliRunner(env={variable: value}).invoke(cli, [command, *arguments])
    assert (from_env.exit_code, from_env.output) == (2, expected), "the environment variable too"
