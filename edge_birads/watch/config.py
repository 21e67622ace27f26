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
import math
import os
from dataclasses import dataclass
from pathlib import Path

from edge_birads.durable import TMP_PREFIX
from edge_birads.cli_shared import MIB, limits_from
from edge_birads.limits import DEFAULT_LIMITS, DecodeLimits

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
    jobs: int = 1  # worker processes classifying (each with its own interpreter); 1: in the daemon's own process
    limits: DecodeLimits = DEFAULT_LIMITS  # max_pixels, max_file_mb, time_limit: the same as classify's options
    heatmap: Path | None = None  # a lesion-map picture per classified image in this folder (classify --heatmap); None: none


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
    "jobs": "int",
    "max_attempts": "int",
    "heartbeat_seconds": "float",
    "max_pixels": "int",
    "max_file_mb": "float",
    "time_limit": "float",
    "heatmap": "path",
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
    _check_finite(merged)
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
        jobs=int(merged.get("jobs", 1)),
        max_attempts=int(merged.get("max_attempts", DEFAULT_MAX_ATTEMPTS)),
        heartbeat_seconds=float(merged.get("heartbeat_seconds", DEFAULT_HEARTBEAT)),
        limits=limits_from(merged.get("max_pixels"), merged.get("max_file_mb"), merged.get("time_limit")),
        heatmap=_absolute(merged["heatmap"]) if merged.get("heatmap") else None,
    )
    _check_values(config)
    return config


def _absolute(value: str | Path) -> Path:
    """An absolute path with symbolic links resolved: inotify reports real paths, and a folder
    inside the inbox must be recognised whatever link it is named through."""
    return Path(os.path.realpath(os.path.expanduser(str(value))))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


# option -> (lowest, highest or None, what it must be, format of the value shown): a value outside is refused with
# "<option> must be <what>, not <value>". nan and inf are refused with the same line for every option, before
# any value is used (int(nan) would raise, setitimer refuses nan).
RANGES = {
    "stable-seconds": (0, 3600, "between 0 and 3600", ""),
    "scan-interval": (0.05, 3600, "between 0.05 and 3600 seconds", ""),
    "heartbeat-seconds": (0.1, 3600, "between 0.1 and 3600", ""),
    "threads": (1, 64, "between 1 and 64", ""),
    "jobs": (1, 64, "between 1 and 64", ""),
    "max-attempts": (1, 1000, "between 1 and 1000", ""),
    "max-pixels": (1, None, "at least 1", ""),
    "max-file-mb": (1 / MIB, None, "more than 0", "g"),  # the limit is whole bytes: more than 0 MB is at least one byte
    "time-limit": (0, None, "0 (no limit) or more seconds", "g"),
}


def _check_finite(merged: dict) -> None:
    for option, (_, _, what, shown) in RANGES.items():
        value = merged.get(option.replace("-", "_"))
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{option} must be {what}, not {value:{shown}}")


def _check_values(config: WatchConfig) -> None:
    limits = config.limits
    decode = {"max-pixels": limits.max_pixels, "max-file-mb": limits.max_file_bytes / MIB, "time-limit": limits.max_seconds}
    for option, (lowest, highest, what, shown) in RANGES.items():
        value = decode[option] if option in decode else getattr(config, option.replace("-", "_"))
        outside = (value < lowest) if highest is None else not (lowest <= value <= highest)
        if outside:
            raise ConfigError(f"{option} must be {what}, not {value:{shown}}")
    for label, folder in (("results", config.results), ("done", config.done), ("failed", config.failed), ("state", config.state)):
        if folder == config.inbox:
            raise ConfigError(f"the {label} folder must not be the inbox itself ({folder})")
    if config.heatmap is not None:
        # Beside the results (the same folder, or one inside it) is fine: a picture is named after its record,
        # NAME.heatmap.png beside NAME.json. Never among the inputs or the daemon's state.
        for label, folder in (("inbox", config.inbox), ("done", config.done), ("failed", config.failed), ("state", config.state)):
            if _inside(config.heatmap, folder):
                raise ConfigError(f"the heatmap folder {config.heatmap} must not be the {label} folder or inside it")


def output_folders(config: WatchConfig) -> tuple[tuple[str, Path], ...]:
    """Every folder the daemon writes, with its name for messages."""
    return (
        ("results", config.results),
        ("done", config.done),
        ("failed", config.failed),
        ("state", config.state),
        ("status", config.status_file.parent),
        *((("heatmap", config.heatmap),) if config.heatmap is not None else ()),
    )


def check_nesting(config: WatchConfig) -> None:
    """Refuse output folders inside the inbox (the daemon would take its own outputs for arrivals and
    quarantine its state) and an inbox inside an output folder. Paths are compared with links resolved."""
    for label, folder in output_folders(config):
        if _inside(folder, config.inbox):
            raise StartupError(f"the {label} folder {folder} must not be inside the inbox {config.inbox}")
        if _inside(config.inbox, folder):
            raise StartupError(f"the inbox {config.inbox} must not be inside the {label} folder {folder}")


def prepare_folders(config: WatchConfig) -> list[int]:
    """Lock the inbox and the outputs, create the output folders and prove every folder usable, before any work.

    Returns the locks' file descriptors, to be kept open for the process's life.

    Writability is tested by creating a file, not with ``os.access``: root
    passes access() on a read-only mount or an immutable folder, and the
    daemon must fail at start, not at the first result.
    """
    check_nesting(config)
    if not config.inbox.is_dir():
        if config.inbox.exists():
            raise StartupError(f"inbox {config.inbox} is not a folder")
        raise StartupError(f"inbox folder {config.inbox} does not exist")
    # Taking the lock proves the inbox writable (files are moved out of it) and comes
    # before any probe file is made, so two daemons never touch each other's folders.
    locks = [lock_inbox(config.inbox)]
    for label, folder in output_folders(config):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"cannot create the {label} folder {folder}: {_reason(exc)}") from None
        if not folder.is_dir():
            raise StartupError(f"the {label} path {folder} is not a folder")
        _probe(label, folder)
    # Two daemons writing one results (or state, or heatmap) folder would overwrite each other's records.
    locked = [("results", config.results), ("state", config.state)]
    if config.heatmap is not None and config.heatmap != config.results:
        locked.append(("heatmap", config.heatmap))
    for label, folder in locked:
        fd = lock_folder(folder)
        if fd is None:
            raise StartupError(f"another edge-birads watch ({_holder(config.state)}) already uses the {label} folder {folder}")
        locks.append(fd)
    inbox_device = config.inbox.stat().st_dev
    for label, folder in (("done", config.done), ("failed", config.failed), ("state", config.state)):
        if folder.stat().st_dev != inbox_device:
            raise StartupError(
                f"the {label} folder {folder} must be on the same filesystem as the inbox {config.inbox} "
                "(inputs are moved by an atomic rename" + (", into the state folder's work/ first)" if label == "state" else ")")
            )
    _write_pid(config.state)
    return locks


LOCK_NAME = ".edge-birads-watch.lock"
PID_NAME = "daemon.pid"


def lock_folder(folder: Path) -> int | None:
    """An exclusive lock on the folder itself, held for the life of the process; None if another process holds it.

    The lock is on the folder's own inode, so no file a sender or a user can
    delete or replace stands in for it, and the kernel releases it when the
    process dies, so a crash never leaves a stale lock. On a network file
    system that cannot lock a folder (NFS emulates flock with byte-range locks,
    which need a file open for writing), a lock file in the folder is locked instead.
    """
    import errno
    import fcntl

    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StartupError(f"cannot open the folder {folder}: {_reason(exc)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EBADF, errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP):
            raise StartupError(f"cannot lock the folder {folder}: {_reason(exc)}") from None
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StartupError(f"cannot create the lock file {path}: {_reason(exc)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as exc:
        os.close(fd)
        raise StartupError(f"cannot lock {path}: {_reason(exc)}") from None
    return fd


def lock_inbox(inbox: Path) -> int:
    """Hold an exclusive lock on the inbox for the life of the process; return its descriptor.

    Two daemons on one inbox would classify the same file twice. The lock is
    on the inbox folder itself (:func:`lock_folder`): deleting the dotfile
    ``.edge-birads-watch.lock``, which only names the holder's pid for the
    error message, does not release it. Creating that file also proves the
    inbox writable (files are moved out of it).
    """
    path = inbox / LOCK_NAME
    try:
        pid_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StartupError(f"cannot create the lock file {path}: {_reason(exc)}") from None
    fd = lock_folder(inbox)
    if fd is None:
        holder = os.pread(pid_fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(pid_fd)
        raise StartupError(f"another edge-birads watch (pid {holder}) is already watching {inbox}")
    try:
        os.ftruncate(pid_fd, 0)
        os.pwrite(pid_fd, f"{os.getpid()}\n".encode("ascii"), 0)
    finally:
        os.close(pid_fd)
    return fd


def _write_pid(state: Path) -> None:
    try:
        (state / PID_NAME).write_text(f"{os.getpid()}\n", encoding="ascii")
    except OSError as exc:
        raise StartupError(f"state folder {state} is not writable: {_reason(exc)}") from None


def _holder(state: Path) -> str:
    try:
        pid = (state / PID_NAME).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "pid unknown"


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
