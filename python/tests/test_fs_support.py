"""(Support module, no tests.) LocalCluster: ff-mgmtd + N ff-storage processes on 127.0.0.1 (free ports, a temporary directory),
always cleaned up. Used by python/tests/test_fs_cluster.py and bench/fs/bench_storage.py."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    def __init__(self, bin_dir: pathlib.Path, nodes: int = 3, targets_per_node: int = 2, heartbeat_timeout_s: float = 4.0,
                 data_dir: str | None = None, direct_io: bool = True, stats_interval_s: float = 5.0):
        self.bin = pathlib.Path(bin_dir)
        self.nodes = nodes
        self.targets_per_node = targets_per_node
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.direct_io = direct_io
        self.stats_interval_s = stats_interval_s
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="ff_fs_cluster_", dir=data_dir))
        self.mgmtd_address = f"127.0.0.1:{free_port()}"
        self.storage_ports = {node: free_port() for node in range(1, nodes + 1)}
        self.processes: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------------ processes
    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "ab")
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.processes[name] = process
        return process

    def start_mgmtd(self) -> None:
        config = self.dir / "mgmtd.toml"
        config.write_text(
            f'[mgmtd]\nlisten = "{self.mgmtd_address}"\nheartbeat_timeout_s = {self.heartbeat_timeout_s}\n'
            f'scan_interval_s = 0.2\n[store]\nkind = "rocksdb"\npath = "{self.dir}/mgmtd-db"\n'
            f'[metrics]\nstats_interval_s = {self.stats_interval_s}\n')
        self._spawn("mgmtd", [str(self.bin / "ff-mgmtd"), "--config", str(config)])

    def start_storage(self, node: int) -> None:
        config = self.dir / f"storage{node}.toml"
        targets = ", ".join(f'"{self.dir}/node{node}/t{i}"' for i in range(self.targets_per_node))
        config.write_text(
            f'[storage]\nnode_id = {node}\nlisten = "127.0.0.1:{self.storage_ports[node]}"\n'
            f'mgmtd = "{self.mgmtd_address}"\ntargets = [{targets}]\nheartbeat_interval_s = 0.5\n'
            f'heartbeat_timeout_s = {self.heartbeat_timeout_s}\n'
            f'[chunk]\ndirect_io = {"true" if self.direct_io else "false"}\npreallocate_mb = 16\n'
            f'[metrics]\nstats_interval_s = {self.stats_interval_s}\n')
        self._spawn(f"storage{node}", [str(self.bin / "ff-storage"), "--config", str(config)])

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.get(name)
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            process.wait(timeout=20)

    def run_tool(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin / tool), "--mgmtd", self.mgmtd_address, *args], capture_output=True,
                              text=True, timeout=timeout)

    def admin(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return self.run_tool("ff-admin", *args, timeout=timeout)

    def routing(self) -> dict:
        result = self.admin("routing", "--json")
        if result.returncode != 0:
            raise RuntimeError(f"ff-admin routing failed: {result.stderr}")
        return json.loads(result.stdout)

    def start(self, create_table: bool = True) -> None:
        self.start_mgmtd()
        for node in self.storage_ports:
            self.start_storage(node)
        deadline = time.monotonic() + 30
        while True:
            try:
                routing = self.routing()
                if sum(n["status"] == "alive" for n in routing["nodes"]) == self.nodes:
                    break
            except (RuntimeError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"storage nodes did not register within 30 s; logs in {self.dir}")
            time.sleep(0.2)
        if create_table:
            result = self.admin("create-chain-table", "--table", "1", "--replication", "3", "--targets-per-node",
                                str(self.targets_per_node), "--nodes", ",".join(map(str, self.storage_ports)))
            if result.returncode != 0:
                raise RuntimeError(f"create-chain-table failed: {result.stderr}")
            self.wait_serving(30)

    def wait_serving(self, timeout_s: float) -> None:
        result = self.admin("wait-serving", "--timeout-s", str(timeout_s), timeout=timeout_s + 30)
        if result.returncode != 0:
            raise RuntimeError(f"chains not all serving within {timeout_s} s: {result.stderr}\n{self.admin('routing').stdout}")

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.dir.glob("*.log")))

    def stop(self) -> None:
        for name in list(self.processes):
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in self.processes.items():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if not os.environ.get("FF_KEEP_CLUSTER"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
