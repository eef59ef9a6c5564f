"""The real-process test of the fs storage layer: 1 ff-mgmtd + 3 ff-storage on 127.0.0.1, a writer
writing checksummed chunks while one storage server is SIGKILLed and restarted several times; afterwards
every acknowledged chunk must read back correctly from EVERY replica."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_fs_support import LocalCluster  # noqa: E402


@pytest.fixture(scope="module")
def bin_dir(build_dir: pathlib.Path) -> pathlib.Path:
    path = build_dir / "bin"
    for tool in ("ff-mgmtd", "ff-storage", "ff-admin", "ff-bench-storage"):
        if not (path / tool).exists():
            pytest.skip(f"{tool} is not built in {path} (fs needs its libraries: FF_BUILD_FS)")
    return path


def test_sigkill_restart_loses_no_acknowledged_chunk(bin_dir: pathlib.Path) -> None:
    started = time.monotonic()
    with LocalCluster(bin_dir, nodes=3, targets_per_node=2, heartbeat_timeout_s=3.0) as cluster:
        try:
            cluster.start()
            log = cluster.dir / "acked.log"
            writer = subprocess.Popen(
                [str(bin_dir / "ff-bench-storage"), "--mgmtd", cluster.mgmtd_address, "--rpc-timeout-s", "2",
                 "write-check", "--seconds", "22", "--chunk-bytes", str(64 << 10), "--log", str(log)],
                stdout=subprocess.PIPE, stderr=open(cluster.dir / "writer.log", "wb"), text=True)
            # Kill node 2 three times while the writer runs; each restart recovers before serving again.
            for _ in range(3):
                time.sleep(2.5)
                cluster.kill("storage2")
                time.sleep(2.0)
                cluster.start_storage(2)
            out, _ = writer.communicate(timeout=90)
            assert writer.returncode == 0, f"writer failed: {out}\n{cluster.logs()}"
            summary = json.loads(out.strip().splitlines()[-1])
            assert summary["acknowledged"] > 20, summary
            # Every target must be serving again (the restarted one synced) before reading every replica.
            cluster.wait_serving(40)
            result = cluster.run_tool("ff-bench-storage", "verify", "--log", str(log), timeout=120)
            assert result.returncode == 0, f"verify failed: {result.stdout}\n{result.stderr[-4000:]}"
            verified = json.loads(result.stdout.strip().splitlines()[-1])
            assert verified["bad"] == 0
            assert verified["chunks"] == summary["acknowledged"]
            assert verified["replica_reads"] == 3 * verified["chunks"]
            routing = cluster.routing()
            print(f"writer {summary}, verify {verified}, chain versions {[c['version'] for c in routing['chains']]}")
            assert max(c["version"] for c in routing["chains"]) > 1, "the kills must have changed the chains"
        except BaseException:
            print(cluster.logs())
            raise
    assert time.monotonic() - started < 90
