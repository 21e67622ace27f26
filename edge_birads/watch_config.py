"""Settings of the watch daemon: command line, config file, defaults, and start-up checks.

The service reads a small INI file (``[watch]`` section) so that an operator
can change folders without editing the systemd unit; options given on the
command line win over the file. Everything that can be wrong with the
settings or the folders is found here, before the model is loaded, and
reported as one line, so a mistyped path never becomes a restart loop of
tracebacks in the journal.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from pathlib import Path

from edge_birads.durable import TMP_PREFIX

SECTION = "watch"
DEFAULT_STABLE_SECONDS = 3.0
DEFAULT_SCAN_POLL = 2.0  # --poll: how often the inbox is listed
DEFAULT_SCAN_INOTIFY = 30.0  # with inotify: a safety-net rescan (event queue overflow, missed events)
DEFAULT_HEARTBEAT = 10.0
DEFAULT_MAX_ATTEMPTS = 3


class ConfigError(Exception):
    """Settings that cannot work (usage error: exit 2)."""


class StartupError(Exception):
    """A folder or model that is not usable right now (exit 1; systemd retries)."""


@dataclass(frozen=True)
class WatchConfig:
    """Everything the daemon needs, resolved to absolute paths."""

    inbox: Path
    results: Path
    done: Path
    failed: Path
    state: Path
    status_file: Path
    poll: bool = False
    stable_seconds: float = DEFAULT_STABLE_SECONDS
    scan_interval: float = DEFAULT_SCAN_INOTIFY
    close_write: bool = True
    model: Path | None = None
    threads: int = 1
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    heartbeat_seconds: float = DEFAULT_HEARTBEAT


# key in the file -> (type, help); the same names as the long options, with "_" for "-".
FILE_KEYS = {
    "inbox": "path",
    "results": "path",
    "done": "path",
    "failed": "path",
    "state": "path",
    "status_file": "path",
    "poll": "bool",
    "stable_seconds": "float",
    "scan_interval": "float",
    "close_write": "bool",
    "model": "path",
    "threads": "int",
    "max_attempts": "int",
    "heartbeat_seconds": "float",
}


def read_config_file(path: str | Path) -> dict:
    """Parse the ``[watch]`` section of an INI file into typed values.

    Unknown keys are errors: a typo such as ``resluts =`` must not silently
    fall back to a default folder.
    """
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except (configparser.Error, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"config file {path} is not valid INI: {first}") from None
    if not parser.has_section(SECTION):
        raise ConfigError(f"config file {path} has no [{SECTION}] section")
    values: dict = {}
    for key, raw in parser.items(SECTION):
        kind = FILE_KEYS.get(key.replace("-", "_"))
        if kind is None:
            raise ConfigError(f"config file {path}: unknown setting {key!r} (known: {', '.join(sorted(FILE_KEYS))})")
        raw = raw.strip()
        if raw == "":
            continue
        try:
            if kind == "bool":
                values[key.replace("-", "_")] = parser.getboolean(SECTION, key)
            elif kind == "int":
                values[key.replace("-", "_")] = int(raw)
            elif kind == "float":
                values[key.replace("-", "_")] = float(raw)
            else:
                values[key.replace("-", "_")] = raw
        except ValueError:
            raise ConfigError(f"config file {path}: {key} = {raw!r} is not a valid {kind}") from None
    return values


def build_config(options: dict, config_file: str | Path | None = None) -> WatchConfig:
    """Merge command-line ``options`` (None = not given) over the config file and defaults."""
    merged = read_config_file(config_file) if config_file else {}
    merged.update({key: value for key, value in options.items() if value is not None})
    if not merged.get("inbox"):
        raise ConfigError("no inbox folder: give INBOX or 'inbox =' in the config file")
    if not merged.get("results"):
        raise ConfigError("no results folder: give --results DIR or 'results =' in the config file")
    inbox = _absolute(merged["inbox"])
    results = _absolute(merged["results"])
    done = _absolute(merged["done"]) if merged.get("done") else inbox.parent / "done"
    failed = _absolute(merged["failed"]) if merged.get("failed") else inbox.parent / "failed"
    state = _absolute(merged["state"]) if merged.get("state") else results / ".edge-birads"
    status_file = _absolute(merged["status_file"]) if merged.get("status_file") else state / "status.json"
    poll = bool(merged.get("poll", False))
    scan_default = DEFAULT_SCAN_POLL if poll else DEFAULT_SCAN_INOTIFY
    config = WatchConfig(
        inbox=inbox,
        results=results,
        done=done,
        failed=failed,
        state=state,
        status_file=status_file,
        poll=poll,
        stable_seconds=float(merged.get("stable_seconds", DEFAULT_STABLE_SECONDS)),
        scan_interval=float(merged.get("scan_interval", scan_default)),
        close_write=bool(merged.get("close_write", True)),
        model=_absolute(merged["model"]) if merged.get("model") else None,
        threads=int(merged.get("threads", 1)),
        max_attempts=int(merged.get("max_attempts", DEFAULT_MAX_ATTEMPTS)),
        heartbeat_seconds=float(merged.get("heartbeat_seconds", DEFAULT_HEARTBEAT)),
    )
    _check_values(config)
    return config


def _absolute(value: str | Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(value))))


def _check_values(config: WatchConfig) -> None:
    if not 0 <= config.stable_seconds <= 3600:
        raise ConfigError(f"stable-seconds must be between 0 and 3600, not {config.stable_seconds}")
    if not 0.05 <= config.scan_interval <= 3600:
        raise ConfigError(f"scan-interval must be between 0.05 and 3600 seconds, not {config.scan_interval}")
    if not 0.1 <= config.heartbeat_seconds <= 3600:
        raise ConfigError(f"heartbeat-seconds must be between 0.1 and 3600, not {config.heartbeat_seconds}")
    if not 1 <= config.threads <= 64:
        raise ConfigError(f"threads must be between 1 and 64, not {config.threads}")
    if not 1 <= config.max_attempts <= 1000:
        raise ConfigError(f"max-attempts must be between 1 and 1000, not {config.max_attempts}")
    for label, folder in (("results", config.results), ("done", config.done), ("failed", config.failed), ("state", config.state)):
        if folder == config.inbox:
            raise ConfigError(f"the {label} folder must not be the inbox itself ({folder})")


def prepare_folders(config: WatchConfig) -> int:
    """Lock the inbox, create the output folders and prove every folder is usable, before any work.

    Returns the lock's file descriptor, to be kept open for the process's life.

    Writability is tested by creating a file, not with ``os.access``: root
    passes access() on a read-only mount or an immutable folder, and the
    daemon must fail at start, not at the first result.
    """
    if not config.inbox.is_dir():
        if config.inbox.exists():
            raise StartupError(f"inbox {config.inbox} is not a folder")
        raise StartupError(f"inbox folder {config.inbox} does not exist")
    # Taking the lock proves the inbox writable (files are moved out of it) and comes
    # before any probe file is made, so two daemons never touch each other's folders.
    lock_fd = lock_inbox(config.inbox)
    for label, folder in (
        ("results", config.results),
        ("done", config.done),
        ("failed", config.failed),
        ("state", config.state),
        ("status", config.status_file.parent),
    ):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"cannot create the {label} folder {folder}: {_reason(exc)}") from None
        if not folder.is_dir():
            raise StartupError(f"the {label} path {folder} is not a folder")
        _probe(label, folder)
    inbox_device = config.inbox.stat().st_dev
    for label, folder in (("done", config.done), ("failed", config.failed)):
        if folder.stat().st_dev != inbox_device:
            raise StartupError(
                f"the {label} folder {folder} must be on the same filesystem as the inbox {config.inbox} "
                "(inputs are moved by an atomic rename)"
            )
    return lock_fd


LOCK_NAME = ".edge-birads-watch.lock"


def lock_inbox(inbox: Path) -> int:
    """Hold an exclusive lock on the inbox for the life of the process; return its descriptor.

    Two daemons on one inbox would classify the same file twice (each would
    move it and write a record). The lock is a dotfile in the inbox, which
    the daemon itself ignores, and is released by the kernel when the process
    dies, so a crash never leaves a stale lock behind.
    """
    import fcntl

    path = inbox / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StartupError(f"cannot create the lock file {path}: {_reason(exc)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise StartupError(f"another edge-birads watch (pid {holder}) is already watching {inbox}") from None
    except OSError as exc:
        os.close(fd)
        raise StartupError(f"cannot lock {path}: {_reason(exc)}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def _probe(label: str, folder: Path) -> None:
    probe = folder / f"{TMP_PREFIX}probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StartupError(f"{label} folder {folder} is not writable: {_reason(exc)}") from None


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__
