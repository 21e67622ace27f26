"""Helpers for the DICOM node tests: a real Orthanc, the DCMTK tools, edge-birads as real processes.

Orthanc is the Debian package's binary run directly with a configuration this
module writes into the test's temporary folder (storage, index and logs stay
there; the package's own service is not used). Orthanc 1.10 cannot bind to
one interface, so the configuration refuses every HTTP client but localhost
and every DICOM peer but the 127.0.0.1 modalities it lists.

A Lua ``ReceivedInstanceFilter`` appends the SOP Instance UID of every
instance Orthanc receives, new or not, to ``received.log``: that is how the
tests count deliveries (a second delivery of a stored instance is otherwise
invisible in Orthanc's REST API).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def closed_port() -> tuple[socket.socket, int]:
    """A port that refuses connections (bound, not listening) and that no other process can take until closed."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


def need(tool: str, package: str) -> str:
    """The Debian package's tool: pynetdicom installs console scripts of the same names (storescu, echoscu) into
    the virtual environment, which an activated venv puts first on PATH, so the venv is left out of the search."""
    outside_venv = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and not p.startswith(sys.prefix))
    path = shutil.which(tool, path=outside_venv)
    if path is None:
        pytest.skip(f"{tool} not found: apt-get install {package} (.ci/run installs it)")
    return path


def wait_for(predicate, what: str, timeout: float = TIMEOUT, interval: float = 0.1, procs: tuple = ()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for proc in procs:
            if proc.proc is not None and proc.proc.poll() is not None:
                raise AssertionError(
                    f"{proc.name} exited with {proc.proc.returncode} while waiting for {what}:\n{proc.log_text()[-3000:]}"
                )
        time.sleep(interval)
    tails = "\n".join(f"--- {proc.name}\n{proc.log_text()[-2000:]}" for proc in procs)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")


class Process:
    """A child process with its output in a log file."""

    def __init__(self, name: str, command: list[str], log_path: Path, cwd: Path) -> None:
        self.name = name
        self.command = command
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None

    def start(self) -> Process:
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("JOURNAL_STREAM", None)
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {' '.join(self.command)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.command, cwd=self.cwd, env=env, stdout=log, stderr=log)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def edge_birads(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge_birads", *args]


LUA = """
function ReceivedInstanceFilter(dicom, origin, info)
   local f = io.open("%s", "a")
   f:write(dicom.SOPInstanceUID .. "\\n")
   f:close()
   return true
end
"""


class Orthanc(Process):
    """One Orthanc in ``root``, on loopback ports chosen here."""

    def __init__(self, root: Path, aet: str = "ORTHANC", modalities: dict | None = None, dicom_port: int | None = None) -> None:
        self.binary = need("Orthanc", "orthanc")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = dicom_port or free_port()
        self.received_log = root / "received.log"
        (root / "count.lua").write_text(LUA % self.received_log)
        config = {
            "Name": f"edge-birads test {aet}",
            "StorageDirectory": str(root / "db"),
            "IndexDirectory": str(root / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": True,
            "DicomModalities": modalities or {},
            "Plugins": [],
            "LuaScripts": [str(root / "count.lua")],
            "StableAge": 1,
            "SaveJobs": False,
            "HttpTimeout": 60,
            "DicomScuTimeout": 60,
        }
        (root / "orthanc.json").write_text(json.dumps(config, indent=1))
        super().__init__(
            f"Orthanc {aet}", [self.binary, "--logdir=" + str(root), str(root / "orthanc.json")], root / "orthanc.out", root
        )

    def start(self) -> Orthanc:
        super().start()
        wait_for(lambda: self._alive(), f"{self.name} to answer HTTP", procs=(self,))
        return self

    def _alive(self) -> bool:
        try:
            self.get("/system")
            return True
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def log_text(self) -> str:
        logs = sorted(self.root.glob("Orthanc*.log*"))
        return super().log_text() + "".join(p.read_text(errors="replace") for p in logs[-1:])

    # ------------------------------------------------------------ REST

    def request(self, method: str, path: str, body: bytes | dict | list | None = None, timeout: float = TIMEOUT):
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
        ctype = response.headers.get("Content-Type", "")
        return json.loads(payload) if "json" in ctype else payload

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, body):
        return self.request("POST", path, body)

    def upload(self, path: Path) -> dict:
        return self.post("/instances", path.read_bytes())

    def instances(self) -> list[dict]:
        return [self.get(f"/instances/{i}") for i in self.get("/instances")]

    def tags(self, instance_id: str) -> dict:
        return self.get(f"/instances/{instance_id}/simplified-tags")

    def received(self) -> list[str]:
        try:
            return self.received_log.read_text().split()
        except FileNotFoundError:
            return []
