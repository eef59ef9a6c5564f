"""fireflyer.flow fault handling: resume after SIGKILL of the driver, bounded retries, error reports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pa = pytest.importorskip("pyarrow")
pytest.importorskip("duckdb")
import pyarrow.parquet as pq  # noqa: E402

from fireflyer import flow  # noqa: E402

PYTHON_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DRIVER = textwrap.dedent("""
    import os, sys, time, uuid
    sys.path.insert(0, {python_dir!r})
    from fireflyer import flow

    root, inputs, runs = sys.argv[1], sys.argv[2], sys.argv[3]

    def slow_double(table):
        # One marker per execution of a task, so the test can count executions.
        open(os.path.join(runs, uuid.uuid4().hex), "w").close()
        time.sleep(0.4)
        return table.set_column(0, "x", pa.compute.multiply(table.column("x"), 2))

    import pyarrow as pa, pyarrow.compute
    session = flow.init(data_root=root, num_executors=1, progress=False)
    total = session.read_parquet(inputs).map_batches(slow_double).map("sum(x) as s")
    print(sum(r["s"] for r in total.take_all()), session.tasks_run, session.tasks_reused, flush=True)
""")

kParts = 8
kRowsPerPart = 100


def completed_tasks(root: str) -> list[str]:
    tasks = os.path.join(root, "tasks")
    if not os.path.isdir(tasks):
        return []
    return [d for d in os.listdir(tasks) if d.startswith("pipeline-")]


def test_resume_after_sigkill_reuses_completed_tasks(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(kParts):
        values = list(range(i * kRowsPerPart, (i + 1) * kRowsPerPart))
        pq.write_table(pa.table({"x": values}), inputs / f"part-{i}.parquet")
    expected = 2 * sum(range(kParts * kRowsPerPart))
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(python_dir=PYTHON_DIR))
    root, runs = str(tmp_path / "root"), tmp_path / "runs"
    runs.mkdir()
    command = [sys.executable, str(script), root, str(inputs), str(runs)]

    driver = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while len(completed_tasks(root)) < 3 and time.time() < deadline and driver.poll() is None:
        time.sleep(0.05)
    os.kill(driver.pid, signal.SIGKILL)  # the driver, then its worker processes (same process group)
    try:
        os.killpg(driver.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    driver.wait(timeout=30)
    done = completed_tasks(root)
    assert 3 <= len(done) < kParts, f"killed after {len(done)} completed tasks; {driver.stderr.read().decode()}"
    for task in done:  # no partial output is ever visible: every task directory has its manifest
        assert os.path.exists(os.path.join(root, "tasks", task, "manifest.json"))
    for marker in runs.iterdir():
        marker.unlink()

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    total, tasks_run, tasks_reused = (int(float(v)) for v in rerun.stdout.split())
    assert total == expected
    assert len(list(runs.iterdir())) == kParts - len(done)  # completed tasks were not recomputed
    assert tasks_reused == len(done) and tasks_run == kParts - len(done)


def test_failing_task_is_retried_then_succeeds(tmp_path):
    markers = str(tmp_path / "markers")
    os.makedirs(markers)

    def flaky(table):
        path = os.path.join(markers, str(table.column("x")[0].as_py()))
        if not os.path.exists(path):  # fails on the first attempt of every task only
            open(path, "w").close()
            raise RuntimeError("transient failure")
        return table

    session = flow.init(data_root=str(tmp_path / "root"), num_executors=2, progress=False, max_retries=2)
    assert session.from_items([{"x": i} for i in range(40)], 4).map_batches(flaky).count() == 40
    assert session.stages[-1].retries == 4 and len(os.listdir(markers)) == 4


def test_task_failing_every_attempt_is_reported_with_partition_and_files(tmp_path):
    def poison(table):
        if 25 in table.column("x").to_pylist():
            raise ValueError("row 25 is poison")
        return table

    session = flow.init(data_root=str(tmp_path / "root"), num_executors=2, progress=False, max_retries=1)
    df = session.from_items([{"x": i} for i in range(40)], 4).map_batches(poison)
    with pytest.raises(flow.FlowTaskError) as info:
        df.count()
    error = info.value
    assert isinstance(error, RuntimeError) and error.partition == 2 and error.attempts == 2
    assert len(error.files) == 1 and error.files[0].endswith("part-00002.parquet")
    assert "row 25 is poison" in str(error) and "partition 2" in str(error) and "map_batches(poison)" in str(error)
    assert session.stages[-1].done == 3  # the other partitions completed and will be reused
