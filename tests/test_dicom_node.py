"""The DICOM node's parts against real DICOM peers (pynetdicom SCU/SCP, dciodvfy), on real CBIS-DDSM DICOMs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

pynetdicom = pytest.importorskip("pynetdicom", reason="the DICOM node needs pip install 'edge-birads[node]'")
pytest.importorskip("highdicom", reason="the DICOM node needs pip install 'edge-birads[node]'")

import pydicom  # noqa: E402
from dicom_support import closed_port, free_port, wait_for  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402

from edge_birads.card import load_card  # noqa: E402
from edge_birads.classifier import default_model_path  # noqa: E402
from edge_birads.cli import cli  # noqa: E402
from edge_birads.receive import STORAGE_CLASSES, ReceiveConfig, Receiver  # noqa: E402
from edge_birads.sr import build_report, read_source, report_uids  # noqa: E402
from edge_birads.watch.log import EventLog  # noqa: E402
from edge_birads.watch.outbox import Destination, SendConfig, SrOutput  # noqa: E402

SC = "1.2.840.10008.5.1.4.1.1.7"
CT = "1.2.840.10008.5.1.4.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.33"
EXPLICIT = "1.2.840.10008.1.2.1"
RLE = "1.2.840.10008.1.2.5"


class ListLog(EventLog):
    """The daemon's event log, keeping the lines instead of writing them to fd 2."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, level: str, message: str) -> None:
        self.lines.append(f"{level}: {message}")

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def receiver(tmp_path: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    log = ListLog()
    made = []

    def start(**options) -> Receiver:
        config = ReceiveConfig(inbox=inbox, port=free_port(), bind="127.0.0.1", **options)
        node = Receiver(config, log)
        node.log_lines = log
        node.start()
        made.append(node)
        return node

    yield start
    for node in made:
        node.stop()


def scu(calling: str = "MAMMO1", contexts=((SC, (RLE, EXPLICIT)),)) -> AE:
    ae = AE(ae_title=calling)
    for uid, syntaxes in contexts:
        for syntax in syntaxes:  # one context per syntax: the SCP accepts one syntax per context
            ae.add_requested_context(uid, syntax)
    return ae


def associate(ae: AE, node: Receiver):
    assoc = ae.associate("127.0.0.1", node.config.port, ae_title=node.config.ae_title)
    return assoc


def patient_strings(path: Path) -> list[str]:
    source = pydicom.dcmread(path, stop_before_pixels=True)
    return [str(source.get(k)) for k in ("PatientID", "PatientName") if str(source.get(k, "") or "")]


# --------------------------------------------------------------------- receive


def test_receive_help_names_the_command_and_its_options():
    result = CliRunner().invoke(cli, ["receive", "--help"], prog_name="edge-birads")
    assert result.exit_code == 0
    assert result.output.startswith("Usage: edge-birads receive [OPTIONS] [INBOX]\n")
    for option in ("--ae-title", "--port", "--bind", "--allow-calling", "--config"):
        assert option in result.output
    assert "Research use only, not a diagnostic device." in " ".join(result.output.split())


def test_receive_reads_the_watch_config_file(tmp_path: Path):
    config = tmp_path / "watch.conf"
    config.write_text(
        f"[watch]\ninbox = {tmp_path / 'in'}\nresults = {tmp_path / 'out'}\n"
        "[receive]\nae_title = PIRECEIVER\nport = 104\nallowed_calling_ae_titles = MAMMO1, PACS\n"
    )
    from edge_birads.receive import build_receive_config

    built = build_receive_config({"inbox": None, "port": None, "ae_title": None, "allowed_calling": ()}, config)
    assert built == ReceiveConfig(inbox=tmp_path / "in", ae_title="PIRECEIVER", port=104, allowed_calling=("MAMMO1", "PACS"))
    config.write_text(f"[receive]\ninbox = {tmp_path}\nae_tilte = X\n")
    result = CliRunner().invoke(cli, ["receive", "--config", str(config)])
    assert result.exit_code == 2
    assert "unknown setting 'ae_tilte' in [receive]" in result.output


@pytest.mark.parametrize(
    "command", [["receive", "INBOX"], ["watch", "INBOX", "--results", "R", "--send-to", "PACS@127.0.0.1:104"]]
)
def test_without_the_node_extra_the_commands_say_what_to_install(tmp_path: Path, monkeypatch, command):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pynetdicom" else real(name, *a))
    (tmp_path / "INBOX").mkdir()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, command, prog_name="edge-birads")
    assert result.exit_code == 2
    assert "Error: the DICOM node needs pynetdicom: pip install 'edge-birads[node]'" in result.output


def test_echo_and_a_real_mammogram_land_in_the_inbox_complete_and_named_by_uid(receiver, cbis_dicoms):
    node = receiver()
    assoc = associate(scu(contexts=((SC, (RLE, EXPLICIT)), ("1.2.840.10008.1.1", (EXPLICIT,)))), node)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    source = cbis_dicoms[0]
    status = assoc.send_c_store(source)
    assoc.release()
    assert status.Status == 0x0000
    uid = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
    files = [p.name for p in node.config.inbox.iterdir()]
    assert files == [f"{uid}.dcm"]
    stored = pydicom.dcmread(node.config.inbox / f"{uid}.dcm")
    original = pydicom.dcmread(source)
    assert stored.file_meta.TransferSyntaxUID == RLE  # as sent, not re-encoded
    assert stored.PixelData == original.PixelData and stored.SOPInstanceUID == uid
    # Never a patient identifier in what it logs.
    log = node.log_lines.text()
    assert f"{uid}.dcm: received from 'MAMMO1'" in log
    for text in patient_strings(source):
        assert text not in log


def test_other_sop_classes_are_refused_at_negotiation_and_non_mammography_by_status(receiver, tmp_path: Path):
    node = receiver()
    assoc = associate(scu(contexts=((CT, (EXPLICIT,)), (SC, (EXPLICIT,)))), node)
    assert assoc.is_established
    accepted = {context.abstract_syntax for context in assoc.accepted_contexts}
    assert CT not in accepted and SC in accepted
    rejected = {context.abstract_syntax: context.result for context in assoc.rejected_contexts}
    assert rejected == {CT: 0x03}  # abstract syntax not supported
    # A Secondary Capture whose Modality is CT: refused with 0xC001 and a comment.
    ds = synthetic_image(SC, modality="CT")
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0xC001 and "not mammography" in status.ErrorComment
    assert list(node.config.inbox.iterdir()) == []
    assert f"refused instance {ds.SOPInstanceUID}" in node.log_lines.text()


def test_the_offered_classes_are_the_single_frame_image_classes():
    assert set(STORAGE_CLASSES.values()) == {
        "1.2.840.10008.5.1.4.1.1.1.2",
        "1.2.840.10008.5.1.4.1.1.1.2.1",
        "1.2.840.10008.5.1.4.1.1.1.1",
        "1.2.840.10008.5.1.4.1.1.1.1.1",
        "1.2.840.10008.5.1.4.1.1.1",
        SC,
    }


def test_calling_ae_allow_list_refuses_others_and_says_so(receiver):
    node = receiver(allowed_calling=("MAMMO1",))
    assoc = associate(scu(calling="INTRUDER"), node)
    assert assoc.is_rejected
    assert "refused association from calling AE 'INTRUDER'" in node.log_lines.text()
    assoc = associate(scu(calling="MAMMO1"), node)
    assert assoc.is_established
    assoc.release()


def test_success_is_answered_only_after_file_rename_and_folder_are_fsynced(receiver, cbis_dicoms, monkeypatch):
    from edge_birads import durable

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync_folder(folder) -> None:
        events.append("fsync folder")
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        real_fsync(fd)
        os.close(fd)

    monkeypatch.setattr(durable.os, "fsync", lambda fd: (events.append("fsync file"), real_fsync(fd))[1])
    monkeypatch.setattr(
        durable.os,
        "replace",
        lambda a, b: (events.append(f"rename {Path(a).name[:20]} -> {Path(b).suffix}"), real_replace(a, b))[1],
    )
    monkeypatch.setattr(durable, "fsync_dir", fsync_folder)
    node = receiver()
    assoc = associate(scu(), node)
    status = assoc.send_c_store(cbis_dicoms[1])
    events.append(f"response 0x{status.Status:04X}")
    assoc.release()
    assert events == ["fsync file", "rename .edge-birads-receive -> .dcm", "fsync folder", "response 0x0000"]


def test_start_removes_partial_transfers_of_dead_receivers_only(tmp_path: Path):
    from edge_birads.receive import TMP_PREFIX

    dead = subprocess.Popen(["true"])
    dead.wait()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / f"{TMP_PREFIX}{dead.pid}-0").write_bytes(b"half an instance")
    (inbox / f"{TMP_PREFIX}{os.getppid()}-3").write_bytes(b"another receiver, still writing")
    (inbox / "1.2.3.dcm").write_bytes(b"complete")
    assert Receiver(ReceiveConfig(inbox=inbox), ListLog()).sweep() == 1
    assert sorted(p.name for p in inbox.iterdir()) == sorted([f"{TMP_PREFIX}{os.getppid()}-3", "1.2.3.dcm"])


def synthetic_image(sop_class: str, modality: str = "MG", rows: int = 64):
    """A small honest DICOM image (uncompressed) of ``sop_class``."""
    from pydicom.dataset import Dataset, FileMetaDataset

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = EXPLICIT
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientID = "SYNTH-1"
    ds.PatientName = "Synthetic^Test"
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = os.urandom(rows * rows * 2)
    return ds


# --------------------------------------------------------------------- the report


@pytest.fixture(scope="module")
def card():
    return load_card(default_model_path())


def record_for(card, score: float) -> dict:
    """The record the daemon writes for an image with this suspicion score (built by the runtime's own code)."""
    import numpy as np

    from edge_birads.classifier import to_prediction
    from edge_birads.results import Result

    rest = (1 - score) / (len(card.labels) - 1)
    probabilities = np.array([score if name == card.malignant_label else rest for name in card.labels])
    return Result(file="x.dcm", rule=card.rule, latency_ms=1.0, prediction=to_prediction(probabilities, card)).to_dict()


def content_values(report) -> dict:
    values = {}
    for item in report.ContentSequence:
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        kind = item.ValueType
        if kind == "TEXT":
            values[name] = item.TextValue
        elif kind == "NUM":
            values[name] = float(item.MeasuredValueSequence[0].NumericValue)
        elif kind == "CODE":
            values[name] = item.ConceptCodeSequence[0].CodeMeaning
        elif kind == "IMAGE":
            ref = item.ReferencedSOPSequence[0]
            values[name] = (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID)
    return values


def test_report_references_the_source_and_holds_the_result(cbis_dicoms, card):
    source = read_source(cbis_dicoms[4])
    record = record_for(card, 0.73)
    report = build_report(source, record, card)
    assert report.SOPClassUID == SR and report.Modality == "SR"
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID"):
        assert report.get(keyword) == source.get(keyword), keyword
    assert report.SeriesInstanceUID != source.SeriesInstanceUID
    evidence = report.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    values = content_values(report)
    assert values["Source image"] == (source.SOPClassUID, source.SOPInstanceUID)
    assert values["BI-RADS triage group"] == card.malignant_label
    assert values["Probability of cancer"] == pytest.approx(0.73)
    assert values["Recommendation"] == "Refer for review (suspicion score at or above threshold)"
    assert values[f"Referral threshold on P({card.malignant_label})"] == pytest.approx(card.referral_threshold)
    assert values["Model SHA-256"] == card.sha256
    assert values["Algorithm Name"] == f"edge-birads model '{card.name}'"
    assert "Research use only, not a diagnostic device" in values["Comment"]
    assert (report.CompletionFlag, report.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    low = content_values(build_report(source, record_for(card, card.referral_threshold / 2), card))
    assert low["Recommendation"] == "Routine (suspicion score below threshold)"
    # One image, one model: the same UIDs every time (a PACS stores a re-send once).
    again = build_report(source, record, card)
    assert (again.SOPInstanceUID, again.SeriesInstanceUID) == (report.SOPInstanceUID, report.SeriesInstanceUID)
    assert report_uids(source.SOPInstanceUID, source.StudyInstanceUID, "0" * 64)[1] != report.SOPInstanceUID


def test_report_passes_dciodvfy(cbis_dicoms, card, tmp_path: Path):
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy not found: apt-get install dicom3tools (.ci/run installs it)")
    path = tmp_path / "report.dcm"
    build_report(read_source(cbis_dicoms[0]), record_for(card, 0.5), card).save_as(path, enforce_file_format=True)
    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    assert "ComprehensiveSR" in lines
    errors = [line for line in lines if line.startswith("Error")]
    assert errors == []


# --------------------------------------------------------------------- the outbox


class CountingSCP:
    """A real C-STORE SCP (pynetdicom) that counts each SOP Instance it is sent; status chosen per test."""

    def __init__(self, port: int, status: int = 0x0000) -> None:
        self.port = port
        self.status = status
        self.received: list[str] = []
        self.server = None

    def start(self) -> CountingSCP:
        ae = AE(ae_title="PACS")
        ae.add_supported_context(SR, [EXPLICIT, "1.2.840.10008.1.2"])

        def on_store(event):
            self.received.append(event.dataset.SOPInstanceUID)
            return self.status

        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def file_reports(output: SrOutput, tmp_path: Path, cbis_dicoms, card, count: int) -> list[str]:
    """Copy ``count`` real DICOMs into a fake inbox and hand each a result, as the daemon does."""
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    uids = []
    for i, source in enumerate(cbis_dicoms[:count]):
        target = inbox / f"{i}.dcm"
        shutil.copyfile(source, target)
        output.after_result(target, record_for(card, 0.1 * i))
        uids.append(build_report(read_source(target), record_for(card, 0.1 * i), card).SOPInstanceUID)
    return uids


def test_outbox_waits_for_a_down_destination_then_delivers_each_report_once(tmp_path: Path, cbis_dicoms, card):
    down, port = closed_port()
    config = SendConfig(outbox=tmp_path / "outbox", destination=Destination("PACS", "127.0.0.1", port), retry_max_seconds=0.5)
    log = ListLog()
    output = SrOutput(config, card, log)
    output.start()
    pacs = None
    try:
        uids = file_reports(output, tmp_path, cbis_dicoms, card, 3)
        wait_for(lambda: output.status()["attempts_failed"] >= 2, "two failed attempts")
        status = output.status()
        assert status["pending"] == 3 and status["sent"] == 0 and "cannot be reached" in status["last_error"]
        # The same results again (a restart that finds them written, a re-sent image): nothing new filed.
        file_reports(output, tmp_path, cbis_dicoms, card, 3)
        assert output.status()["written"] == 3
        down.close()
        pacs = CountingSCP(port).start()
        wait_for(lambda: output.status()["pending"] == 0, "the queue to drain")
        time.sleep(1.5)  # several retry periods: nothing is sent again
        assert sorted(pacs.received) == sorted(uids)
        assert output.status()["sent"] == 3
        assert sorted(p.name for p in (tmp_path / "outbox" / "sent").iterdir()) == sorted(
            f"{read_source(tmp_path / 'inbox' / f'{i}.dcm').SOPInstanceUID}.{card.sha256[:12]}.dcm" for i in range(3)
        )
    finally:
        down.close()
        output.stop()
        if pacs is not None:
            pacs.stop()
    # A new process on the same outbox (a restart) sends nothing again.
    again = SrOutput(config, card, ListLog())
    pacs = CountingSCP(port).start()
    try:
        again.start()
        file_reports(again, tmp_path, cbis_dicoms, card, 3)
        time.sleep(1.5)
        assert pacs.received == [] and again.status()["written"] == 0
    finally:
        again.stop()
        pacs.stop()


def test_a_report_the_destination_refuses_is_set_aside_not_retried_forever(tmp_path: Path, cbis_dicoms, card):
    port = free_port()
    pacs = CountingSCP(port, status=0xA900).start()
    config = SendConfig(outbox=tmp_path / "outbox", destination=Destination("PACS", "127.0.0.1", port), retry_max_seconds=0.5)
    log = ListLog()
    output = SrOutput(config, card, log)
    output.start()
    try:
        file_reports(output, tmp_path, cbis_dicoms, card, 1)
        wait_for(lambda: output.status()["rejected"] == 1, "the refusal")
        time.sleep(1.0)
        assert len(pacs.received) == 1 and output.status()["pending"] == 0
        reasons = list((tmp_path / "outbox" / "rejected").glob("*.reason.json"))
        assert len(reasons) == 1 and json.loads(reasons[0].read_text())["status"] == "0xA900"
        assert "refused by PACS@127.0.0.1" in log.text()
    finally:
        output.stop()
        pacs.stop()


def test_non_dicom_results_get_no_report(tmp_path: Path, example_pngs, card):
    output = SrOutput(SendConfig(outbox=tmp_path / "outbox"), card, ListLog())
    output.start()
    output.after_result(example_pngs[0], record_for(card, 0.5))
    assert output.status()["pending"] == 0 and output.status()["not_dicom"] == 1



# --------------------------------------------------------------------- the daemon's hook


@pytest.mark.parametrize("lost", ["index-entry-and-move", "move-only"])
def test_a_daemon_that_died_after_the_result_still_files_the_report(tmp_path: Path, cbis_dicoms, lost: str):
    """A crash after the result is durable but before the input left the inbox: the restart files the report."""
    from watch_support import Daemon

    outbox = tmp_path / "outbox"
    daemon = Daemon(tmp_path, extra=("--sr-outbox", str(outbox)))
    shutil.copyfile(cbis_dicoms[2], daemon.inbox / "a.dcm")
    shutil.copyfile(cbis_dicoms[3], daemon.inbox / "b.dcm")
    daemon.start()
    daemon.wait_all(2)
    assert daemon.stop() == 0
    pending = sorted(p.name for p in (outbox / "pending").iterdir())
    assert len(pending) == 2
    # Undo what a crash right after the result of a.dcm would not have done: the report, the move (and the index entry).
    for name in pending:
        if name.startswith(pydicom.dcmread(cbis_dicoms[2], stop_before_pixels=True).SOPInstanceUID):
            (outbox / "pending" / name).unlink()
    os.rename(daemon.done / "a.dcm", daemon.inbox / "a.dcm")
    if lost == "index-entry-and-move":
        for entry in (daemon.results / ".edge-birads" / "content").iterdir():
            if "a.dcm" in json.loads(entry.read_text())["names"]:
                entry.unlink()
    daemon.start()
    wait_for(lambda: daemon.inbox_names() == [".edge-birads-watch.lock"] or daemon.inbox_names() == [], "a.dcm to be finished")
    assert daemon.stop() == 0
    assert sorted(p.name for p in (outbox / "pending").iterdir()) == pending
    assert len(daemon.result_records()) == 2  # and still one result each
    status = daemon.status()
    assert status["outbox"]["pending"] == 2 and status["outbox"]["written"] == 1


def test_send_settings_come_from_the_config_file_and_the_command_line_wins(tmp_path: Path):
    from edge_birads.watch.outbox import SendConfigError, build_send_config

    config = tmp_path / "watch.conf"
    config.write_text("[send]\ndestination = PACS@10.0.0.5:104\ncalling_ae_title = PI1\nretry_max_seconds = 30\n")
    built = build_send_config({"outbox": None, "destination": None}, config, tmp_path / "state")
    assert built == SendConfig(
        outbox=tmp_path / "state" / "outbox",
        destination=Destination("PACS", "10.0.0.5", 104),
        calling_ae_title="PI1",
        retry_max_seconds=30.0,
    )
    assert build_send_config({"destination": "ORTHANC@127.0.0.1:4242"}, config, tmp_path).destination == Destination(
        "ORTHANC", "127.0.0.1", 4242
    )
    assert build_send_config({}, None, tmp_path) is None  # no outbox, no destination: no reports
    with pytest.raises(SendConfigError, match="is not AE_TITLE@HOST:PORT"):
        build_send_config({"destination": "PACS:104"}, None, tmp_path)
    with pytest.raises(SendConfigError, match="retry_max_seconds must be between 0.1 and 3600, not 0"):
        build_send_config({"outbox": "x", "retry_max_seconds": 0}, None, tmp_path)


def test_a_sender_that_cannot_record_a_delivery_stops_with_one_line(tmp_path: Path, cbis_dicoms, card):
    """The daemon sees the thread gone and exits 74 (systemd restarts it); the report stays pending, not lost."""
    port = free_port()
    pacs = CountingSCP(port).start()
    config = SendConfig(outbox=tmp_path / "outbox", destination=Destination("PACS", "127.0.0.1", port), retry_max_seconds=0.5)
    log = ListLog()
    output = SrOutput(config, card, log)
    output.start()
    try:
        (tmp_path / "outbox" / "sent").rmdir()  # the move to sent/ will fail
        file_reports(output, tmp_path, cbis_dicoms, card, 1)
        wait_for(lambda: not output.alive(), "the sender to stop")
        assert [line for line in log.lines if "the DICOM sender stopped" in line] == [
            "error: the DICOM sender stopped: FileNotFoundError: "
            + f"[Errno 2] No such file or directory: '{next((tmp_path / 'outbox' / 'pending').iterdir())}' -> "
            + f"'{tmp_path / 'outbox' / 'sent' / next((tmp_path / 'outbox' / 'pending').iterdir()).name}'"
        ]
        assert output.status()["pending"] == 1
    finally:
        output.stop()
        pacs.stop()


def test_kill_9_of_the_daemon_at_random_moments_loses_no_report(tmp_path: Path, cbis_dicoms, card):
    """Images arrive, the daemon is killed again and again while it classifies, files and sends: every image
    ends with exactly one result and its report delivered. A kill between the destination's Success and the
    move to sent/ may send a report again: with the same SOP Instance UID, which a PACS stores once."""
    import random

    from watch_support import Daemon
    from watch_support import wait_for as wait_for_daemon

    port = free_port()
    pacs = CountingSCP(port).start()
    outbox = tmp_path / "outbox"
    daemon = Daemon(tmp_path, extra=("--sr-outbox", str(outbox), "--send-to", f"PACS@127.0.0.1:{port}", "--send-retry-max", "0.5"))
    rng = random.Random(7)
    try:
        daemon.start()
        for i, source in enumerate(cbis_dicoms):
            daemon.wait_started()  # the kill lands while it works, not while it loads the model
            shutil.copyfile(source, daemon.inbox / f".{i}.part")
            os.rename(daemon.inbox / f".{i}.part", daemon.inbox / f"{i}.dcm")
            time.sleep(rng.uniform(0.0, 1.5))
            daemon.kill()
            daemon.start()
        daemon.wait_all(len(cbis_dicoms))
        wait_for_daemon(lambda: len(set(pacs.received)) == len(cbis_dicoms), what="every report delivered", daemon=daemon)
        wait_for_daemon(lambda: not list((outbox / "pending").iterdir()), what="an empty outbox", daemon=daemon)
        assert daemon.stop() == 0
    finally:
        pacs.stop()
    expected = {build_report(read_source(p), record_for(card, 0.5), card).SOPInstanceUID for p in cbis_dicoms}
    assert set(pacs.received) == expected
    assert len(daemon.result_records()) == len(cbis_dicoms)
    assert sorted(p.name for p in (outbox / "sent").iterdir()) == sorted(f"{read_source(p).SOPInstanceUID}.{card.sha256[:12]}.dcm" for p in cbis_dicoms)
    print(f"\ndaemon kill -9 x{len(cbis_dicoms)}: {len(pacs.received)} deliveries of {len(expected)} reports")
