"""End to end against real DICOM software: Orthanc (a real PACS) sends the 8 real CBIS-DDSM DICOMs to
`edge-birads receive`, `edge-birads watch` classifies them and sends one SR each back to Orthanc.

Both edge-birads commands run as real processes; Orthanc, storescu and dciodvfy are the Debian packages'
binaries (skipped with a message when absent; .ci/run installs them).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("pynetdicom", reason="the DICOM node needs pip install 'edge-birads[node]'")
pytest.importorskip("highdicom", reason="the DICOM node needs pip install 'edge-birads[node]'")

import pydicom  # noqa: E402
from dicom_support import Orthanc, Process, closed_port, edge_birads, free_port, need, wait_for  # noqa: E402

RECEIVER_AE = "EDGEBIRADS"


class Node:
    """`edge-birads receive` and `edge-birads watch` on folders under ``root``."""

    def __init__(self, root: Path, destination: str | None, retry_max: float = 1.0) -> None:
        self.root = root
        self.inbox = root / "inbox"
        self.results = root / "results"
        self.outbox = root / "outbox"
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        receive = edge_birads(
            "receive", str(self.inbox), "--ae-title", RECEIVER_AE, "--port", str(self.port), "--bind", "127.0.0.1"
        )
        self.receiver = Process("receive", receive, root / "receive.log", root)
        watch = edge_birads(
            "watch", str(self.inbox), "--results", str(self.results), "--stable-seconds", "0.5",
            "--heartbeat-seconds", "0.5", "--sr-outbox", str(self.outbox), "--send-retry-max", str(retry_max),
        )  # fmt: skip
        if destination:
            watch += ["--send-to", destination]
        self.watcher = Process("watch", watch, root / "watch.log", root)

    def start(self) -> Node:
        self.receiver.start()
        self.watcher.start()
        self.wait_listening()
        wait_for(
            lambda: (self.status() or {}).get("pid") == self.watcher.proc.pid, "the daemon's first heartbeat", procs=self.procs
        )
        return self

    @property
    def procs(self) -> tuple[Process, Process]:
        return (self.receiver, self.watcher)

    def wait_listening(self) -> None:
        echoscu = need("echoscu", "dcmtk")
        wait_for(
            lambda: (
                subprocess.run([echoscu, "-aec", RECEIVER_AE, "127.0.0.1", str(self.port)], capture_output=True).returncode == 0
            ),
            "the receiver to answer C-ECHO",
            procs=(self.receiver,),
        )

    def status(self) -> dict | None:
        try:
            return json.loads((self.results / ".edge-birads" / "status.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()

    def logs(self) -> str:
        return self.receiver.log_text() + self.watcher.log_text()


def uids(path: Path) -> dict:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {k: str(ds.get(k)) for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID", "PatientName")}


def storescu(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([need("storescu", "dcmtk"), *args], capture_output=True, text=True, timeout=300)


def test_orthanc_sends_eight_mammograms_and_gets_eight_reports_back(tmp_path: Path, cbis_dicoms):
    need("Orthanc", "orthanc")
    dciodvfy = need("dciodvfy", "dicom3tools")
    orthanc_port = free_port()
    node = Node(tmp_path / "node", destination=f"ORTHANC@127.0.0.1:{orthanc_port}")
    orthanc = Orthanc(
        tmp_path / "orthanc", dicom_port=orthanc_port, modalities={"edgebirads": [RECEIVER_AE, "127.0.0.1", node.port]}
    )
    sources = {uids(p)["SOPInstanceUID"]: uids(p) for p in cbis_dicoms}
    try:
        orthanc.start()
        uploads = [orthanc.upload(p) for p in cbis_dicoms]
        image_ids = [u["ID"] for u in uploads]
        study_of = {orthanc.tags(u["ID"])["SOPInstanceUID"]: u["ParentStudy"] for u in uploads}
        node.start()
        started = time.monotonic()
        # Orthanc sends the 8 images to edge-birads over DICOM (C-STORE), as a PACS would route them.
        job = orthanc.post("/modalities/edgebirads/store", {"Resources": image_ids, "Synchronous": True})
        sent_at = time.monotonic()
        assert job["InstancesCount"] == 8 and job["FailedInstancesCount"] == 0, job
        arrivals: dict[str, float] = {}

        def reports() -> list[dict]:
            found = [orthanc.get(f"/instances/{i}") for i in orthanc.get("/instances") if i not in image_ids]
            for instance in found:
                arrivals.setdefault(instance["ID"], time.monotonic())
            return found

        wait_for(lambda: len(reports()) >= 8, "8 reports in Orthanc", timeout=300, interval=0.2, procs=node.procs)
        loop_seconds = max(arrivals.values()) - started
        srs = reports()
        assert len(srs) == 8
        # Each report sits in the study of its image and references that image.
        referenced = set()
        for sr in srs:
            tags = orthanc.tags(sr["ID"])
            assert tags["Modality"] == "SR" and tags["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.88.33"
            evidence = tags["CurrentRequestedProcedureEvidenceSequence"][0]
            image_uid = evidence["ReferencedSeriesSequence"][0]["ReferencedSOPSequence"][0]["ReferencedSOPInstanceUID"]
            source = sources[image_uid]
            assert orthanc.get(f"/series/{sr['ParentSeries']}")["ParentStudy"] == study_of[image_uid]
            assert tags["StudyInstanceUID"] == source["StudyInstanceUID"] and tags["PatientID"] == source["PatientID"]
            referenced.add(image_uid)
            assert orthanc.received().count(tags["SOPInstanceUID"]) == 1  # delivered once
            # dciodvfy on the report as Orthanc stored it: no errors.
            path = tmp_path / f"{sr['ID']}.dcm"
            path.write_bytes(orthanc.request("GET", f"/instances/{sr['ID']}/file"))
            check = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
            errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
            assert errors == [], (path, errors)
        assert referenced == set(sources)
        def status_says_all_done() -> dict | None:  # the status file is rewritten at most once a second
            status = node.status() or {}
            outbox = status.get("outbox", {})
            done = status.get("counts", {}).get("classified") == 8 and outbox.get("sent") == 8 and outbox.get("pending") == 0
            return status if done else None

        status = wait_for(status_says_all_done, "the status to show 8 classified and 8 sent", procs=node.procs)
        assert status["counts"]["failed"] == 0
        received = node.receiver.log_text().count(": received from 'ORTHANC'")
        # No patient identifier in either log.
        logs = node.logs()
        for source in sources.values():
            assert source["PatientID"] not in logs
        # A CT image is refused: no presentation context for CT Image Storage.
        ct = pydicom.data.get_testdata_file("CT_small.dcm")
        result = storescu("-aec", RECEIVER_AE, "127.0.0.1", str(node.port), str(ct))
        assert result.returncode != 0 and "No presentation context for: (CT)" in result.stderr, result.stderr
        print(
            f"\nDICOM loop: {received} images received, {status['counts']['classified']} classified, {len(srs)} reports returned; "
            f"{sent_at - started:.1f} s for Orthanc to send, {loop_seconds:.1f} s from the send order to the last report in Orthanc "
            f"= {loop_seconds / 8:.2f} s per image"
        )
    finally:
        node.stop()
        orthanc.stop()


def test_a_destination_down_at_first_gets_every_report_exactly_once(tmp_path: Path, cbis_dicoms):
    need("Orthanc", "orthanc")
    # The PACS's port, bound but not listening while it is "down": connections are refused, and no other
    # process can take the port in the meantime.
    down, orthanc_port = closed_port()
    node = Node(tmp_path / "node", destination=f"ORTHANC@127.0.0.1:{orthanc_port}", retry_max=0.5)
    orthanc = Orthanc(tmp_path / "orthanc", dicom_port=orthanc_port, modalities={"edgebirads": [RECEIVER_AE, "127.0.0.1", 1]})
    try:
        node.start()
        result = storescu("-xr", "-aet", "MAMMO1", "-aec", RECEIVER_AE, "127.0.0.1", str(node.port), *map(str, cbis_dicoms))
        assert result.returncode == 0, result.stderr
        wait_for(
            lambda: (node.status() or {}).get("outbox", {}).get("written") == 8,
            "8 reports written",
            timeout=300,
            procs=node.procs,
        )
        wait_for(
            lambda: (node.status() or {}).get("outbox", {}).get("attempts_failed", 0) >= 2,
            "failed attempts while the PACS is down",
            procs=node.procs,
        )
        status = node.status()["outbox"]
        assert status["pending"] == 8 and status["sent"] == 0 and "cannot be reached" in status["last_error"]
        # The daemon dies (kill -9) with its queue full and comes back: the queue is still there.
        node.watcher.kill()
        node.watcher.start()
        down.close()
        orthanc.start()
        wait_for(lambda: len(orthanc.received()) >= 8, "8 reports delivered", timeout=120, procs=node.procs)
        wait_for(lambda: (node.status() or {}).get("outbox", {}).get("pending") == 0, "an empty queue", procs=node.procs)
        time.sleep(3)  # several retry periods: nothing arrives twice
        delivered = orthanc.received()
        assert len(delivered) == 8 and len(set(delivered)) == 8, delivered
        assert orthanc.get("/statistics")["CountInstances"] == 8
        assert len(list((node.outbox / "sent").glob("*.dcm"))) == 8
        assert "cannot be reached" in node.watcher.log_text()
    finally:
        down.close()
        node.stop()
        orthanc.stop()


def test_kill_9_of_the_receiver_mid_transfer_loses_nothing_the_sender_was_told_was_stored(tmp_path: Path, cbis_dicoms):
    from pynetdicom import AE

    root = tmp_path / "node"
    inbox = root / "inbox"
    inbox.mkdir(parents=True)
    port = free_port()
    receiver = Process(
        "receive", edge_birads("receive", str(inbox), "--port", str(port), "--bind", "127.0.0.1"), root / "r.log", root
    )
    stored: dict[str, bytes] = {}  # SOP Instance UID -> pixel data, for every C-STORE answered Success
    attempts = {"sent": 0, "failed": 0}
    stop = threading.Event()
    datasets = [pydicom.dcmread(p) for p in cbis_dicoms]

    def send_forever() -> None:
        rng = random.Random(3)
        ae = AE(ae_title="MAMMO1")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10  # a killed peer must not hold the sender long
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.1.2.5")
        while not stop.is_set():
            assoc = ae.associate("127.0.0.1", port, ae_title=RECEIVER_AE)
            if not assoc.is_established:
                time.sleep(0.05)
                continue
            try:
                for _ in range(8):
                    ds = datasets[rng.randrange(8)].copy()
                    ds.SOPInstanceUID = pydicom.uid.generate_uid()  # a new instance each time
                    attempts["sent"] += 1
                    status = assoc.send_c_store(ds)
                    if status is not None and status.get("Status") == 0x0000:
                        stored[ds.SOPInstanceUID] = ds.PixelData
                    else:
                        attempts["failed"] += 1
                        break
            finally:
                if assoc.is_established:
                    assoc.release()

    sender = threading.Thread(target=send_forever)
    receiver.start()
    sender.start()
    kills = half_files = 0

    def temporaries() -> list[str]:
        return [entry.name for entry in os.scandir(inbox) if entry.name.startswith(".edge-birads-receive-")]

    try:
        rng = random.Random(11)
        for k in range(6):
            before = len(stored)
            wait_for(lambda: len(stored) >= before + 2, "two instances stored by this receiver", procs=(receiver,))
            if k % 2 == 0:
                time.sleep(rng.uniform(0.0, 0.3))  # at a random moment (mostly while the data is on the wire)
            else:
                wait_for(temporaries, "an instance being written to disk", interval=0.0005, procs=(receiver,))
            receiver.kill()
            kills += 1
            half_files += bool(temporaries())  # killed while writing: the partial file is a dot-name
            for path in inbox.iterdir():  # what the daemon would read is complete, even now
                if not path.name.startswith("."):
                    assert len(pydicom.dcmread(path).PixelData) > 0
            receiver.start()
        time.sleep(1.0)
    finally:
        stop.set()
        sender.join(timeout=120)
        receiver.stop()
    print(
        f"\nreceiver kill -9 x{kills} ({half_files} while writing a file): {attempts['sent']} C-STOREs started, "
        f"{len(stored)} answered Success, {attempts['failed']} cut off"
    )
    assert kills == 6 and half_files >= 1 and attempts["failed"] >= 1 and len(stored) >= 12, (attempts, len(stored), half_files)
    on_disk = {p.name: p for p in inbox.iterdir() if not p.name.startswith(".")}
    # Everything the sender was told is stored is there, complete.
    for uid, pixels in stored.items():
        assert f"{uid}.dcm" in on_disk, f"{uid} was answered Success but is not in the inbox"
        assert pydicom.dcmread(on_disk[f"{uid}.dcm"]).PixelData == pixels
    # Anything the daemon could pick up is a complete file (at most an instance whose answer was lost).
    for path in on_disk.values():
        assert len(pydicom.dcmread(path).PixelData) > 0
    assert len(on_disk) - len(stored) <= kills
    # Partial transfers of killed receivers are dot-names (never tracked by the daemon) and were swept at restart.
    assert [p.name for p in inbox.iterdir() if p.name.startswith(".edge-birads-receive-")] == []
