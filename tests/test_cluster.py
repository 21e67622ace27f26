"""``classify --scheduler``: a real Dask LocalCluster of two worker processes gives the one-process output, row for row."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_jobs import rows  # the jsonl records without latency_ms

from edge_birads.cli import cli

distributed = pytest.importorskip("distributed", reason="the [cluster] extra (Dask distributed) is not installed")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes on 127.0.0.1, started by the test (as `--scheduler local:2` would)."""
    from edge_birads.cluster import local_cluster

    with local_cluster(2) as started:
        yield started


@pytest.fixture(scope="module")
def archive(tmp_path_factory, cbis_dicoms) -> Path:
    """The real DICOMs (links), repeated, with bad files between them."""
    folder = tmp_path_factory.mktemp("archive") / "in"
    folder.mkdir()
    for i in range(3):
        for j, source in enumerate(cbis_dicoms):
            (folder / f"{i}-{j}-{source.name}").symlink_to(source)
    (folder / "0-3-garbage.dcm").write_bytes(b"DICM" * 100)
    (folder / "1-2-truncated.dcm").write_bytes(cbis_dicoms[1].read_bytes()[:4096])
    (folder / "2-5-empty.png").write_bytes(b"")
    (folder / "2-6-dangling.dcm").symlink_to(folder / "nowhere.dcm")
    return folder


@pytest.fixture(scope="module")
def one_process(archive):
    result = CliRunner().invoke(cli, ["classify", "--format", "jsonl", "--jobs", "1", str(archive)])
    assert result.exit_code == 1, result.output
    assert len(rows(result.stdout)) == 28 and sum(r["error"] is not None for r in rows(result.stdout)) == 4
    return result


def test_the_cluster_prints_the_one_process_rows_in_order(cluster, archive, one_process):
    result = CliRunner().invoke(cli, ["classify", "--format", "jsonl", "--scheduler", cluster.scheduler_address,
                                      "--batch-size", "3", str(archive)])
    assert result.exit_code == 1, result.output
    assert rows(result.stdout) == rows(one_process.stdout)
    assert result.stderr == one_process.stderr  # one error line per bad file, the same summary


def test_both_workers_did_work_and_each_loaded_the_model_once(cluster, archive):
    from edge_birads.classifier import Classifier
    from edge_birads.cluster import ATTRIBUTE

    def loaded(dask_worker):
        (classifier,) = getattr(dask_worker, ATTRIBUTE).values()
        return id(classifier), classifier.sha256

    command = ["classify", "--format", "jsonl", "--scheduler", cluster.scheduler_address, "--batch-size", "2", str(archive)]
    with distributed.Client(cluster) as client:
        with distributed.get_task_stream(client) as stream:
            assert CliRunner().invoke(cli, command).exit_code == 1
        first = client.run(loaded)
        assert CliRunner().invoke(cli, command).exit_code == 1
        second = client.run(loaded)
    batches = [task for task in stream.data if "edge-birads-" in str(task["key"])]
    assert len(batches) == 14  # 28 files in batches of 2, each run once
    assert {task["worker"] for task in batches} == set(first)  # spread over both workers
    assert len(first) == 2 and {sha for _, sha in first.values()} == {Classifier().sha256}
    assert first == second  # the same Classifier object: loaded once per worker, not per task or per run


def test_a_killed_worker_loses_nothing_and_repeats_nothing(archive, one_process):
    """SIGKILL of one worker process mid-run: Dask reruns its batches elsewhere; every file once, in order."""
    from edge_birads.classifier import Classifier
    from edge_birads.cluster import ClusterSettings, classify_on_cluster, local_cluster

    files = sorted(archive.iterdir())
    classifier = Classifier()
    settings = ClusterSettings(str(classifier.model_path), classifier.sha256, batch_size=2)
    with local_cluster(2) as cluster, distributed.Client(cluster) as client:
        pids = client.run(os.getpid)
        results, killed = [], None
        for result in classify_on_cluster(client, files, settings, classifier.failure):
            results.append(result)
            if len(results) == 4:
                killed = sorted(pids.values())[0]
                os.kill(killed, signal.SIGKILL)
        after = client.run(os.getpid, wait=True)
    assert killed not in after.values()  # the worker really died (its nanny started a new one)
    got = [result.to_dict() for result in results]
    for record in got:
        record.pop("latency_ms")
    assert got == rows(one_process.stdout)


def test_the_plugin_refuses_a_worker_whose_model_differs(tmp_path):
    from edge_birads.classifier import Classifier
    from edge_birads.cluster import ClusterSettings, register
    from edge_birads.errors import ModelError

    classifier = Classifier()
    settings = ClusterSettings(str(classifier.model_path), "0" * 64)  # the client's model is another file
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client, pytest.raises(ModelError) as info:
            register(client, settings)
    assert f"has sha256 {classifier.sha256[:12]}..., the client's has 000000000000...: workers must see the same model file" in str(info.value)


def test_scheduler_usage_errors(archive):
    runner = CliRunner()
    bad = runner.invoke(cli, ["classify", "--scheduler", "myhost:8786", str(archive)])
    assert bad.exit_code == 2 and "'myhost:8786' is not a scheduler address (tcp://HOST:8786) or local:N" in bad.stderr
    both = runner.invoke(cli, ["classify", "--scheduler", "local:2", "--jobs", "2", str(archive)])
    assert both.exit_code == 2 and "--jobs cannot be used with --scheduler" in both.stderr
    zero = runner.invoke(cli, ["classify", "--scheduler", "local:0", str(archive)])
    assert zero.exit_code == 2 and "local:N needs a number of workers N >= 1" in zero.stderr


def test_local_n_starts_its_own_cluster(cbis_dicoms):
    result = CliRunner().invoke(cli, ["classify", "--format", "jsonl", "--scheduler", "local:2", *map(str, cbis_dicoms[:4])])
    assert result.exit_code == 0, result.output
    assert [r["file"] for r in rows(result.stdout)] == list(map(str, cbis_dicoms[:4]))


def test_ctrl_c_cancels_the_remaining_batches_and_exits_130(cluster, tmp_path, example_pngs):
    images = tmp_path / "in"
    images.mkdir()
    for i in range(400):
        (images / f"img-{i:03d}.png").symlink_to(example_pngs[i % 2])
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "edge_birads", "classify", "--format", "jsonl", "--batch-size", "2",
         "--scheduler", cluster.scheduler_address, str(images)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    first = process.stdout.readline()
    assert first.startswith('{"file": ')
    process.send_signal(signal.SIGINT)
    rest, stderr = process.stdout.read(), process.stderr.read()  # not communicate(): it skips readline's buffer
    process.wait(timeout=60)
    assert process.returncode == 130, stderr
    done = re.fullmatch(r"interrupted: (\d+) of 400 files done \(\d+ classified, 0 failed, their results above are complete\); \d+ not read\.\n", stderr)
    assert done, stderr
    records = (first + rest).splitlines()
    assert len(records) == int(done.group(1)) < 400
    assert [json.loads(r)["file"] for r in records] == [str(images / f"img-{i:03d}.png") for i in range(len(records))]
    with distributed.Client(cluster) as client:  # nothing of that run is left on the cluster
        deadline = time.monotonic() + 20
        while any("edge-birads-" in str(key) for keys in client.processing().values() for key in keys) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = client.run_on_scheduler(lambda dask_scheduler: [k for k in dask_scheduler.tasks if "edge-birads-" in str(k)])
    assert left == []


def test_a_batch_dask_gives_up_on_is_error_rows_and_the_rest_goes_on(archive, one_process):
    """With no retries allowed, the killed worker's batches fail (KilledWorker): one error row per file, in place."""
    import dask

    from edge_birads.classifier import Classifier
    from edge_birads.cluster import ClusterSettings, classify_on_cluster, local_cluster

    files = sorted(archive.iterdir())
    classifier = Classifier()
    settings = ClusterSettings(str(classifier.model_path), classifier.sha256, batch_size=2)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with local_cluster(2) as cluster, distributed.Client(cluster) as client:
            pids = client.run(os.getpid)
            results = []
            for result in classify_on_cluster(client, files, settings, classifier.failure):
                results.append(result)
                if len(results) == 4:
                    os.kill(sorted(pids.values())[0], signal.SIGKILL)
    assert [r.file for r in results] == [str(f) for f in files]
    given_up = [i for i, r in enumerate(results) if r.error and r.error.startswith("the cluster could not classify this file's batch (KilledWorker")]
    assert given_up, "no batch failed although no retry was allowed"
    assert all((i ^ 1) in given_up or (i ^ 1) >= len(files) for i in given_up), given_up  # whole batches of 2
    expected = rows(one_process.stdout)
    for i, result in enumerate(results):
        record = result.to_dict()
        record.pop("latency_ms")
        if i not in given_up:
            assert record == expected[i]
