"""ff-meta as a real process: 1 ff-mgmtd + 3 ff-storage + ff-meta on RocksDB, a client workload
(ff-meta-client: creates, renames, write sessions whose close asks the storage servers for the length, and
unlinks, through RemoteMeta, logging every acknowledged operation) while
ff-meta is SIGKILLed and restarted; afterwards every acknowledged operation is visible and the
namespace passes fsck. On etcd: two stateless ff-meta servers, one SIGKILLed mid-workload, the client
fails over to the other."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_fs_support import LocalCluster, free_port  # noqa: E402


@pytest.fixture(scope="module")
def bin_dir(build_dir: pathlib.Path) -> pathlib.Path:
    path = build_dir / "bin"
    for tool in ("ff-mgmtd", "ff-storage", "ff-admin", "ff-meta", "ff-meta-client"):
        if not (path / tool).exists():
            pytest.skip(f"{tool} is not built in {path} (fs needs its libraries: FF_BUILD_FS)")
    return path


def write_meta_config(cluster: LocalCluster, name: str, address: str, kv: str, etcd: str | None = None) -> pathlib.Path:
    store = (f'kind = "rocksdb"\npath = "{cluster.dir}/{name}-db"\n' if kv == "rocksdb" else
             f'kind = "etcd"\netcd_endpoints = ["{etcd}"]\netcd_prefix = "/test/meta/"\n')
    config = cluster.dir / f"{name}.toml"
    config.write_text(
        f'[meta]\nlisten = "{address}"\nmgmtd = "{cluster.mgmtd_address}"\nchain_table = 1\nstripe = 2\n'
        f'maintenance_interval_s = 1\nrouting_wait_s = 20\n[kv]\n{store}[metrics]\nstats_interval_s = 2\n')
    return config


def spawn_meta(cluster: LocalCluster, name: str, config: pathlib.Path, address: str, timeout_s: float = 30) -> None:
    """Starts ff-meta (our own spawn, so this test does not depend on LocalCluster's ff-meta helpers) and waits
    until it accepts connections."""
    cluster._spawn(name, [str(cluster.bin / "ff-meta"), "--config", str(config)])
    cluster.wait_listening(name, address, timeout_s)


def client(bin_dir: pathlib.Path, addresses: list[str], *args: str) -> list[str]:
    return [str(bin_dir / "ff-meta-client"), "--meta", ",".join(addresses), "--rpc-timeout-ms", "1000",
            "--op-timeout-ms", "30000", *args]


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


@pytest.mark.parametrize("scheme", ["", "tcp://"], ids=["grpc", "tcp"])
def test_meta_sigkill_restart_loses_no_acknowledged_operation(bin_dir: pathlib.Path, scheme: str) -> None:
    """ff-meta on gRPC and on our TCP transport (a tcp:// listen address)."""
    with LocalCluster(bin_dir, nodes=3, targets_per_node=2, heartbeat_timeout_s=3.0) as cluster:
        try:
            cluster.start()
            address = f"{scheme}127.0.0.1:{free_port()}"
            config = write_meta_config(cluster, "meta", address, "rocksdb")
            spawn_meta(cluster, "meta", config, address)
            log = cluster.dir / "ops.log"
            workload = subprocess.Popen(client(bin_dir, [address], "workload", "--threads", "4", "--seconds", "12",
                                               "--log", str(log)),
                                        stdout=subprocess.PIPE, stderr=open(cluster.dir / "client.log", "wb"), text=True)
            for _ in range(3):
                time.sleep(2.5)
                cluster.kill("meta")  # SIGKILL: no clean shutdown, RocksDB recovers from its WAL
                time.sleep(0.5)
                spawn_meta(cluster, "meta", config, address)
            out, _ = workload.communicate(timeout=120)
            assert workload.returncode == 0, f"workload failed: {out}\n{cluster.logs()}"
            summary = last_json(out)
            assert summary["creates"] > 50 and summary["renames"] > 20, summary
            # Write sessions closed (exact lengths asked of the storage servers) and unlinks (chunks collected).
            assert summary["sessions"] > 10 and summary["unlinks"] > 5, summary
            assert summary["errors"] == 0, summary  # every operation outlived the restarts (op timeout 30 s)
            assert summary["failovers"] > 0, f"the kills must have been noticed: {summary}"
            checked = subprocess.run(client(bin_dir, [address], "verify", "--log", str(log)), capture_output=True,
                                     text=True, timeout=120)
            assert checked.returncode == 0, f"verify: {checked.stdout}\n{checked.stderr[-3000:]}"
            report = last_json(checked.stdout)
            assert report["problems"] == 0 and report["checked"] == summary["creates"], report
            # The running instance's metrics endpoint counts the verifier's requests.
            port = re.findall(r"ff-meta: metrics at http://127\.0\.0\.1:(\d+)/metrics",
                              (cluster.dir / "meta.log").read_text(errors="replace"))[-1]
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            requests = re.search(r"^ff_meta_requests_total (\d+)", metrics, re.MULTILINE)
            assert requests is not None and int(requests.group(1)) >= report["checked"], metrics[:2000]
            assert "ff_meta_server_seconds_bucket" in metrics
            # A clean stop on SIGTERM, then fsck of the store (RocksDB: one process at a time).
            cluster.kill("meta", signal.SIGTERM)
            assert cluster.processes["meta"].returncode == 0, cluster.logs()
            fsck = subprocess.run([str(bin_dir / "ff-meta"), "--config", str(config), "--fsck"], capture_output=True,
                                  text=True, timeout=60)
            assert fsck.returncode == 0, f"fsck: {fsck.stdout}\n{fsck.stderr[-3000:]}"
            fsck_report = last_json(fsck.stdout)
            assert fsck_report["problems"] == []
            assert fsck_report["inodes"] >= summary["creates"] - summary["unlinks"] + 1
            print(f"workload {summary}, verify {report}, fsck {fsck_report}")
        except BaseException:
            print(cluster.logs())
            raise


def test_two_meta_servers_on_etcd_fail_over(bin_dir: pathlib.Path) -> None:
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (Debian etcd-server)")
    with LocalCluster(bin_dir, nodes=3, targets_per_node=1, heartbeat_timeout_s=3.0) as cluster:
        try:
            etcd = cluster.start_etcd()
            cluster.start()
            addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
            for index, address in enumerate(addresses):
                name = f"meta{index + 1}"
                spawn_meta(cluster, name, write_meta_config(cluster, name, address, "etcd", etcd), address)
            log = cluster.dir / "ops.log"
            workload = subprocess.Popen(client(bin_dir, addresses, "workload", "--threads", "3", "--seconds", "8",
                                               "--log", str(log)),
                                        stdout=subprocess.PIPE, stderr=open(cluster.dir / "client.log", "wb"), text=True)
            time.sleep(3)
            cluster.kill("meta1")
            time.sleep(1)
            cluster.kill("meta2")  # both down for a moment, then meta1 back: the client finds it
            spawn_meta(cluster, "meta1", cluster.dir / "meta1.toml", addresses[0])
            out, _ = workload.communicate(timeout=120)
            assert workload.returncode == 0, f"workload failed: {out}\n{cluster.logs()}"
            summary = last_json(out)
            assert summary["errors"] == 0 and summary["creates"] > 10 and summary["failovers"] > 0, summary
            checked = subprocess.run(client(bin_dir, addresses, "verify", "--log", str(log)), capture_output=True,
                                     text=True, timeout=120)
            assert checked.returncode == 0, f"verify: {checked.stdout}\n{checked.stderr[-3000:]}"
            cluster.kill("meta1", signal.SIGTERM)
            fsck = subprocess.run([str(bin_dir / "ff-meta"), "--config", str(cluster.dir / "meta1.toml"), "--fsck"],
                                  capture_output=True, text=True, timeout=60)
            assert fsck.returncode == 0 and last_json(fsck.stdout)["problems"] == [], fsck.stdout + fsck.stderr
            print(f"workload {summary}, verify {last_json(checked.stdout)}")
        except BaseException:
            print(cluster.logs())
            raise


def test_meta_waits_for_an_etcd_that_is_not_up_yet(bin_dir: pathlib.Path) -> None:
    """ff-meta started before its etcd: it retries opening the store (a warning names the store and the error)
    instead of exiting, and serves once etcd is healthy (deploy/local-cluster restarts depend on this)."""
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (Debian etcd-server)")
    with LocalCluster(bin_dir, nodes=1, targets_per_node=1) as cluster:
        try:
            etcd_port = free_port()
            address = f"127.0.0.1:{free_port()}"
            config = cluster.dir / "meta1.toml"
            config.write_text(
                f'[meta]\nlisten = "{address}"\nstandalone_chains = 2\nrouting_wait_s = 60\n'
                f'[kv]\nkind = "etcd"\netcd_endpoints = ["127.0.0.1:{etcd_port}"]\n')
            cluster._spawn("meta1", [str(bin_dir / "ff-meta"), "--config", str(config)])
            log = cluster.dir / "meta1.log"
            deadline = time.monotonic() + 30
            while "not serving yet" not in log.read_text(errors="replace"):
                assert cluster.processes["meta1"].poll() is None, f"ff-meta exited without etcd:\n{cluster.logs()}"
                assert time.monotonic() < deadline, f"no retry warning within 30 s:\n{cluster.logs()}"
                time.sleep(0.1)
            assert "etcd store is not serving yet" in log.read_text(errors="replace")
            cluster.start_etcd(client_port=etcd_port)
            cluster.wait_listening("meta1", address, 30)  # raises if ff-meta exits or does not serve in time
            created = subprocess.run(client(bin_dir, [address], "workload", "--threads", "1", "--seconds", "1",
                                            "--log", str(cluster.dir / "ops.log")),
                                     capture_output=True, text=True, timeout=60)
            assert created.returncode == 0 and last_json(created.stdout)["creates"] > 0, created.stdout + created.stderr
        except BaseException:
            print(cluster.logs())
            raise


def test_meta_stop_is_bounded_when_etcd_hangs(bin_dir: pathlib.Path) -> None:
    """SIGTERM while operations wait on an etcd that stopped answering (SIGSTOPped): ff-meta exits within
    meta.stop_timeout_s, with an error naming it, instead of waiting out the KV store's RPC deadlines and
    retry budget (5 s per attempt, up to 64 attempts)."""
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (Debian etcd-server)")
    with LocalCluster(bin_dir, nodes=1, targets_per_node=1) as cluster:
        etcd = cluster.start_etcd()
        etcd_pid = cluster.processes["etcd"].pid
        address = f"127.0.0.1:{free_port()}"
        config = cluster.dir / "meta1.toml"
        config.write_text(f'[meta]\nlisten = "{address}"\nstandalone_chains = 2\nstop_timeout_s = 1\n'
                          f'[kv]\nkind = "etcd"\netcd_endpoints = ["{etcd}"]\n')
        meta = cluster._spawn("meta1", [str(bin_dir / "ff-meta"), "--config", str(config)])
        workload = None
        try:
            cluster.wait_listening("meta1", address, 30)
            os.kill(etcd_pid, signal.SIGSTOP)
            workload = subprocess.Popen(client(bin_dir, [address], "workload", "--threads", "2", "--seconds", "60",
                                               "--log", str(cluster.dir / "ops.log")),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.5)  # the workload's operations now wait on etcd
            started = time.monotonic()
            meta.send_signal(signal.SIGTERM)
            code = meta.wait(timeout=60)
            elapsed = time.monotonic() - started
            log = (cluster.dir / "meta1.log").read_text(errors="replace")
            assert elapsed < 4, f"ff-meta took {elapsed:.1f} s to stop with stop_timeout_s = 1:\n{log[-3000:]}"
            assert code == 3, f"exit code {code}:\n{log[-3000:]}"
            assert "did not finish within meta.stop_timeout_s = 1 s" in log, log[-3000:]
        except BaseException:
            print(cluster.logs())
            raise
        finally:
            os.kill(etcd_pid, signal.SIGCONT)
            if workload is not None:
                workload.kill()
                workload.wait()


def test_bad_config_is_named(bin_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[meta]\nlisten = "127.0.0.1:0"\nstandalone_chains = 2\n[kv]\nkind = "foundationdb"\n')
    result = subprocess.run([str(bin_dir / "ff-meta"), "--config", str(config)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2
    assert "kv.kind" in result.stdout + result.stderr and "foundationdb" in result.stdout + result.stderr
    config.write_text('[meta]\nlisten = "127.0.0.1:0"\nstandalone_chains = 2\nstrip = 3\n[kv]\npath = "x"\n')
    result = subprocess.run([str(bin_dir / "ff-meta"), "--config", str(config)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2 and "meta.strip" in result.stdout + result.stderr
