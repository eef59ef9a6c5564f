"""The real-process test of the fs storage layer: 1 ff-mgmtd + 3 ff-storage on 127.0.0.1, a writer
writing checksummed chunks while one storage server is SIGKILLed and restarted several times; afterwards
every acknowledged chunk must read back correctly from EVERY replica."""

from __future__ import annotations

import json
import os
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


# tcp-group-sync: the storage servers' chunk engines sync every 100 ms instead of on every write's path
# (`chunk.group_sync_ms`): a killed process must lose no acknowledged chunk either.
@pytest.mark.parametrize("transport", ["grpc", "tcp", "tcp-group-sync"])
def test_sigkill_restart_loses_no_acknowledged_chunk(bin_dir: pathlib.Path, transport: str) -> None:
    started = time.monotonic()
    chunk_settings = {"group_sync_ms": 100} if transport.endswith("group-sync") else {}
    with LocalCluster(bin_dir, nodes=3, targets_per_node=2, heartbeat_timeout_s=3.0, transport=transport.split("-")[0],
                      chunk_settings=chunk_settings) as cluster:
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
            if chunk_settings:
                assert "group_sync_ms=100" in (cluster.dir / "storage1.log").read_text(errors="replace")
        except BaseException:
            print(cluster.logs())
            raise
    assert time.monotonic() - started < 90


def mgmtd_serves(bin_dir: pathlib.Path, address: str) -> bool:
    """This one mgmtd answers routing (a standby does not listen)."""
    result = subprocess.run([str(bin_dir / "ff-admin"), "--mgmtd", address, "--rpc-timeout-s", "1", "routing", "--json"],
                            capture_output=True, text=True, timeout=30)
    return result.returncode == 0


def test_etcd_standby_takes_over_within_bound(bin_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Two ff-mgmtd on one etcd: the first serves; after it is SIGKILLed the standby serves within
    lease_ttl + poll period + margin, with the cluster map the primary stored in etcd."""
    import shutil
    import signal

    from test_fs_support import free_port

    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed")
    client_port, peer_port = free_port(), free_port()
    etcd_log = open(tmp_path / "etcd.log", "wb")
    etcd = subprocess.Popen(
        ["etcd", "--name=ff", f"--data-dir={tmp_path}/etcd", f"--listen-client-urls=http://127.0.0.1:{client_port}",
         f"--advertise-client-urls=http://127.0.0.1:{client_port}", f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
         f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
         f"--initial-cluster=ff=http://127.0.0.1:{peer_port}"], stdout=etcd_log, stderr=subprocess.STDOUT)
    mgmtds: list[subprocess.Popen] = []
    addresses = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    try:
        # Start the mgmtds once etcd accepts connections. NOTE: an ff-mgmtd whose first connection to
        # etcd was refused can keep failing to reconnect for many seconds on this machine (gRPC channel
        # backoff under gVisor; docs/fs-operations.md), which is a startup-order problem, not takeover.
        import socket

        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", client_port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "etcd.log").read_text()
                time.sleep(0.1)
        for i, address in enumerate(addresses):
            config = tmp_path / f"mgmtd{i}.toml"
            config.write_text(f'[mgmtd]\nlisten = "{address}"\nid = "mgmtd-{i}"\n[store]\nkind = "etcd"\n'
                              f'etcd_endpoints = ["127.0.0.1:{client_port}"]\nlease_ttl_s = 2\n')
            mgmtds.append(subprocess.Popen([str(bin_dir / "ff-mgmtd"), "--config", str(config)],
                                           stdout=open(tmp_path / f"mgmtd{i}.log", "wb"), stderr=subprocess.STDOUT))
            if i == 0:
                time.sleep(0.5)

        # Whichever instance reaches etcd first becomes the primary (etcd may start slowly, so the one
        # started first need not win); exactly one serves.
        deadline = time.monotonic() + 30
        while True:
            serving = [i for i, address in enumerate(addresses) if mgmtd_serves(bin_dir, address)]
            if serving:
                break
            assert time.monotonic() < deadline, "\n".join((tmp_path / f"mgmtd{i}.log").read_text() for i in (0, 1))
            time.sleep(0.2)
        assert len(serving) == 1, "the standby must not serve while the primary holds the lease"
        primary, standby = serving[0], 1 - serving[0]
        mgmtds[primary].send_signal(signal.SIGKILL)
        mgmtds[primary].wait(timeout=10)
        killed = time.monotonic()
        while not mgmtd_serves(bin_dir, addresses[standby]):
            assert time.monotonic() - killed < 10, (tmp_path / f"mgmtd{standby}.log").read_text()
            time.sleep(0.1)
        took = time.monotonic() - killed
        print(f"standby served {took:.2f} s after the primary was killed (lease ttl 2 s)")
        assert took < 2 + 0.3 + 3
    finally:
        for process in [*mgmtds, etcd]:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def test_storage_and_clients_follow_a_mgmtd_takeover(bin_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Two ff-mgmtd on etcd; three storage servers, ff-admin and a fireflyer.fs client all given both addresses
    ("primary,standby"). After the primary is SIGKILLed the standby serves, the storage servers heartbeat to it
    (still alive there two heartbeat timeouts later, every chain serving), and the client's writes and reads
    go on without a restart."""
    import shutil
    import signal

    from test_fs_support import LocalCluster, free_port

    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed")
    fs = pytest.importorskip("fireflyer.fs")
    heartbeat_timeout_s = 4
    with LocalCluster(bin_dir, nodes=3, targets_per_node=1, heartbeat_timeout_s=heartbeat_timeout_s) as cluster:
        try:
            etcd = cluster.start_etcd()
            addresses = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
            for i, address in enumerate(addresses):
                config = cluster.dir / f"mgmtd{i}.toml"
                config.write_text(
                    f'[mgmtd]\nlisten = "{address}"\nid = "mgmtd-{i}"\nheartbeat_timeout_s = {heartbeat_timeout_s}\n'
                    f'scan_interval_s = 0.2\n[store]\nkind = "etcd"\netcd_endpoints = ["{etcd}"]\nlease_ttl_s = 2\n')
                cluster._spawn(f"mgmtd{i}", [str(bin_dir / "ff-mgmtd"), "--config", str(config)])
            cluster.mgmtd_address = ",".join(addresses)  # storage configs and ff-admin get both
            for node in cluster.storage_ports:
                cluster.start_storage(node)
            cluster.wait_registered(30)
            created = cluster.admin("create-chain-table", "--table", "1", "--replication", "3", "--targets-per-node", "1",
                                    "--nodes", "1,2,3")
            assert created.returncode == 0, created.stderr
            cluster.wait_serving(30)

            primary = [i for i, address in enumerate(addresses) if mgmtd_serves(bin_dir, address)]
            assert len(primary) == 1, f"exactly one mgmtd serves: {primary}"
            primary, standby = primary[0], 1 - primary[0]
            payload = os.urandom(300_000)
            with fs.Client(cluster.mgmtd_address, meta_db=str(tmp_path / "meta"), chunk_size=64 << 10,
                           meta_db_sync=False) as client:
                client.write_file("/before", payload)
                cluster.kill(f"mgmtd{primary}")
                killed = time.monotonic()
                while not mgmtd_serves(bin_dir, addresses[standby]):
                    assert time.monotonic() - killed < 15, cluster.logs()
                    time.sleep(0.1)
                # Two heartbeat timeouts on the new primary: a node that did not follow would be declared failed.
                time.sleep(2 * heartbeat_timeout_s)
                routing = cluster.routing()
                alive = sorted(n["id"] for n in routing["nodes"] if n["status"] == "alive")
                assert alive == [1, 2, 3], f"nodes alive on the new primary: {alive}\n{cluster.logs()}"
                cluster.wait_serving(30)
                client.write_file("/after", payload[::-1])
                assert client.read_file("/before") == payload
                assert client.read_file("/after") == payload[::-1]
        except BaseException:
            print(cluster.logs())
            raise



@pytest.mark.parametrize("key,value,expected", [
    ("sync_batch", "0", "expected >= 1"), ("sync_dump_page", "0", "expected >= 1"),
    ("scrub_mb_per_s", "-1.5", "expected >= 0"), ("scrub_pass_pause_s", "-1.5", "expected >= 0"),
    ("chunk.group_sync_ms", "60001", "expected 0 (off) to 60000")])
def test_storage_config_rejects_a_bad_recovery_or_scrub_setting(bin_dir: pathlib.Path, tmp_path: pathlib.Path,
                                                               key: str, value: str, expected: str) -> None:
    """ff-storage refuses a bad storage.sync_* / scrub_* / chunk.group_sync_ms value before serving, naming the key
    and the value."""
    section, _, name = key.rpartition(".")
    config = tmp_path / f"{name}.toml"
    config.write_text('[storage]\nnode_id = 1\nlisten = "127.0.0.1:1"\nmgmtd = "127.0.0.1:2"\n'
                      f'targets = ["{tmp_path / "t0"}"]\n' + (f"[{section}]\n" if section else "") + f"{name} = {value}\n")
    done = subprocess.run([str(bin_dir / "ff-storage"), "--config", str(config)], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{key if section else 'storage.' + key} = {value}, {expected}" in done.stdout + done.stderr


def test_admin_reports_how_each_chain_table_spreads_recovery(bin_dir: pathlib.Path) -> None:
    """ff-admin shows, per chain table, how many peer nodes each node shares chains with and how many chains a pair
    of nodes shares (what a returning target's recovery reads spread over), in text and JSON; create-chain-table
    prints it for the new table. 4 nodes x 3 targets at replication 3: every pair of nodes shares exactly 2 chains."""
    with LocalCluster(bin_dir, nodes=4, targets_per_node=3, heartbeat_timeout_s=3.0) as cluster:
        cluster.start()
        table = cluster.routing()["chain_tables"][0]
        assert (table["min_peers"], table["min_shared"], table["max_shared"]) == (3, 2, 2), table
        text = cluster.admin("routing").stdout
        assert "each node shares chains with 3 or more peer nodes; a pair of nodes shares 2-2 chains" in text, text
        created = cluster.admin("create-chain-table", "--table", "2", "--replication", "2", "--targets-per-node", "1",
                                "--nodes", "1,2,3,4")
        assert created.returncode == 0, created.stderr
        assert "a pair of nodes shares 1-1 chains" in created.stdout, created.stdout
