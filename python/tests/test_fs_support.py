"""(Support module, no tests.) LocalCluster: ff-mgmtd + N ff-storage processes on 127.0.0.1 (free ports, a temporary directory),
always cleaned up; optionally etcd, ff-meta (metadata on RocksDB or etcd) and ff-fuse mounts (start_meta, start_fuse,
start_all). Used by python/tests/test_fs_cluster.py, test_fs_fuse.py, bench/fs/bench_*.py, deploy/local-cluster and
the demo."""

from __future__ import annotations

import json
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request


def is_mounted(path: str | os.PathLike) -> bool:
    """True while something is mounted at path, also a FUSE mount whose daemon died (os.path.ismount says False
    there: stat fails with ENOTCONN)."""
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as mounts:
        # Fields are space-separated with spaces in paths escaped as \040.
        return any(line.split()[1].replace("\\040", " ") == target for line in mounts)


_CHOSEN_PORTS: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free port for a server started later, chosen below the kernel's ephemeral range: a port that
    the kernel handed out for a bind to port 0 and took back here could be handed to another server
    binding port 0 (the metrics endpoints do) before ours binds it. Never the same port twice in this
    process."""
    low = _ephemeral_low()
    for _ in range(500):
        port = random.randint(max(1024, low - 12000), low - 1)
        if port in _CHOSEN_PORTS:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _CHOSEN_PORTS.add(port)
        return port
    raise RuntimeError(f"no free port found below {low}")


class LocalCluster:
    def __init__(self, bin_dir: pathlib.Path, nodes: int = 3, targets_per_node: int = 2, heartbeat_timeout_s: float = 4.0,
                 data_dir: str | None = None, direct_io: bool = True, stats_interval_s: float = 5.0,
                 path: str | os.PathLike | None = None, keep: bool = False,
                 storage_settings: dict[str, int | float] | None = None, transport: str = "tcp",
                 chunk_settings: dict[str, int | float] | None = None, meta_transport: str | None = None):
        """path: use exactly this directory (created) instead of a fresh temporary one under data_dir;
        keep: stop() leaves the directory in place (as FF_KEEP_CLUSTER=1 does); storage_settings: more
        [storage] keys of every ff-storage config (e.g. {"sync_batch": 1}); chunk_settings: more [chunk] keys (e.g.
        {"group_sync_ms": 100}); transport: what the storage
        servers listen on: "tcp" (our own TCP transport, tcp:// listen addresses; the default, docs/fs-operations.md
        "Our own TCP transport") or "grpc"; meta_transport: what ff-meta listens on (default: the same as transport)."""
        for name, value in (("transport", transport), ("meta_transport", meta_transport or transport)):
            if value not in ("grpc", "tcp"):
                raise ValueError(f"{name}={value!r}: expected 'grpc' or 'tcp'")
        self.storage_scheme = "tcp://" if transport == "tcp" else ""
        self.meta_scheme = "tcp://" if (meta_transport or transport) == "tcp" else ""
        self.bin = pathlib.Path(bin_dir)
        self.nodes = nodes
        self.targets_per_node = targets_per_node
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.direct_io = direct_io
        self.stats_interval_s = stats_interval_s
        if path is not None:
            self.dir = pathlib.Path(path).resolve()
            self.dir.mkdir(parents=True, exist_ok=True)
        else:
            self.dir = pathlib.Path(tempfile.mkdtemp(prefix="ff_fs_cluster_", dir=data_dir))
        self.keep = keep
        self.storage_settings = dict(storage_settings or {})
        self.chunk_settings = dict(chunk_settings or {})
        self.mgmtd_address = f"127.0.0.1:{free_port()}"
        self.storage_ports = {node: free_port() for node in range(1, nodes + 1)}
        self.processes: dict[str, subprocess.Popen] = {}
        self.etcd_address: str | None = None
        self.meta_addresses: dict[str, str] = {}  # ff-meta instance name -> [tcp://]host:port
        self.mounts: dict[str, pathlib.Path] = {}  # ff-fuse instance name -> mountpoint

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
            f'[storage]\nnode_id = {node}\nlisten = "{self.storage_scheme}127.0.0.1:{self.storage_ports[node]}"\n'
            f'mgmtd = "{self.mgmtd_address}"\ntargets = [{targets}]\nheartbeat_interval_s = 0.5\n'
            f'heartbeat_timeout_s = {self.heartbeat_timeout_s}\n'
            + "".join(f"{key} = {value}\n" for key, value in self.storage_settings.items()) +
            f'[chunk]\ndirect_io = {"true" if self.direct_io else "false"}\npreallocate_mb = 16\n'
            + "".join(f"{key} = {value}\n" for key, value in self.chunk_settings.items()) +
            f'[metrics]\nstats_interval_s = {self.stats_interval_s}\n')
        self._spawn(f"storage{node}", [str(self.bin / "ff-storage"), "--config", str(config)])

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout_s: float = 20) -> None:
        process = self.processes.get(name)
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

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

    def wait_registered(self, timeout_s: float = 30) -> None:
        """Until mgmtd lists every storage node alive."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                routing = self.routing()
                if sum(n["status"] == "alive" for n in routing["nodes"]) == self.nodes:
                    return
            except (RuntimeError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"storage nodes did not register within {timeout_s} s; logs in {self.dir}")
            time.sleep(0.2)

    def start(self, create_table: bool = True) -> None:
        self.start_mgmtd()
        for node in self.storage_ports:
            self.start_storage(node)
        self.wait_registered(30)
        if create_table:
            result = self.admin("create-chain-table", "--table", "1", "--replication", "3", "--targets-per-node",
                                str(self.targets_per_node), "--nodes", ",".join(map(str, self.storage_ports)))
            # A cluster restarted on its old directory (deploy/local-cluster) already has its table.
            if result.returncode != 0 and "already exists" not in result.stderr:
                raise RuntimeError(f"create-chain-table failed: {result.stderr}")
            self.wait_serving(30)

    def wait_serving(self, timeout_s: float) -> None:
        result = self.admin("wait-serving", "--timeout-s", str(timeout_s), timeout=timeout_s + 30)
        if result.returncode != 0:
            raise RuntimeError(f"chains not all serving within {timeout_s} s: {result.stderr}\n{self.admin('routing').stdout}")

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.dir.glob("*.log")))

    # ------------------------------------------------------------------ etcd, ff-meta, ff-fuse
    def start_etcd(self, timeout_s: float = 30, client_port: int | None = None) -> str:
        """etcd on 127.0.0.1 (random ports unless client_port is given, data in the scratch directory); returns
        its client address once it is healthy."""
        client_port, peer_port = client_port or free_port(), free_port()
        self._spawn("etcd", [
            "etcd", "--name=ff", f"--data-dir={self.dir}/etcd", f"--listen-client-urls=http://127.0.0.1:{client_port}",
            f"--advertise-client-urls=http://127.0.0.1:{client_port}", f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=ff=http://127.0.0.1:{peer_port}"])
        # Healthy, not just listening: etcd restarted on its old data directory accepts connections before it
        # has a leader, and its first requests then time out. /health answers true once a read went through raft.
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{client_port}/health", timeout=2) as response:
                    last = response.read().decode(errors="replace")
                if json.loads(last).get("health") == "true":
                    break
            except (OSError, ValueError) as error:
                last = str(error)
            if self.processes["etcd"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"etcd was not healthy within {timeout_s} s (last: {last}): {self.logs()}")
            time.sleep(0.1)
        self.etcd_address = f"127.0.0.1:{client_port}"
        return self.etcd_address

    def meta_config(self, name: str, kv: str, address: str) -> pathlib.Path:
        config = self.dir / f"{name}.toml"
        if kv == "rocksdb":
            store = f'kind = "rocksdb"\npath = "{self.dir}/{name}-db"\n'
        elif kv == "etcd":
            if self.etcd_address is None:
                raise RuntimeError("start_etcd() first: ff-meta on etcd needs it")
            store = f'kind = "etcd"\netcd_endpoints = ["{self.etcd_address}"]\n'
        else:
            raise ValueError(f"kv = {kv!r}: expected 'rocksdb' or 'etcd'")
        config.write_text(
            f'[meta]\nlisten = "{address}"\nmgmtd = "{self.mgmtd_address}"\nchain_table = 1\n'
            f'[kv]\n{store}[metrics]\nstats_interval_s = {self.stats_interval_s}\n')
        return config

    def start_meta(self, name: str = "meta1", kv: str = "rocksdb", timeout_s: float = 30) -> str:
        """ff-meta (same address and store again when restarted under the same name); waits until it accepts
        connections and returns its address."""
        address = self.meta_addresses.get(name) or f"{self.meta_scheme}127.0.0.1:{free_port()}"
        config = self.meta_config(name, kv, address)
        self._spawn(name, [str(self.bin / "ff-meta"), "--config", str(config)])
        self.wait_listening(name, address, timeout_s)
        self.meta_addresses[name] = address
        return address

    def wait_listening(self, name: str, address: str, timeout_s: float = 30) -> None:
        """Until the process `name` accepts connections at host:port `address`; an error (with the logs) if it
        exits or the time runs out first."""
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return
            except OSError:
                if self.processes[name].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not listen at {address} within {timeout_s} s:\n{self.logs()}")
                time.sleep(0.1)

    def start_fuse(self, mountpoint: str | os.PathLike | None = None, name: str = "fuse", meta: str = "remote",
                   data: str = "cluster", extra: list[str] | None = None, timeout_s: float = 30) -> pathlib.Path:
        """ff-fuse mounted at mountpoint (default: <dir>/mnt). meta: "remote" (the started ff-meta instances),
        "embedded" (RocksDB in <dir>/<name>-meta) or "memory"; data: "cluster" (through mgmtd) or "memory".
        Waits until the mount is there."""
        mount = pathlib.Path(mountpoint) if mountpoint is not None else self.dir / "mnt"
        mount.mkdir(parents=True, exist_ok=True)
        if mountpoint is None:
            # mkdtemp made the scratch directory 0700: other users could not reach the mount inside it.
            os.chmod(self.dir, 0o755)
        argv = [str(self.bin / "ff-fuse"), "--mount", str(mount)]
        if meta == "remote":
            if not self.meta_addresses:
                raise RuntimeError("start_meta() first (or meta='embedded')")
            argv += ["--meta", ",".join(self.meta_addresses.values())]
        elif meta == "embedded":
            argv += ["--embedded-meta", str(self.dir / f"{name}-meta")]
        elif meta == "memory":
            argv += ["--embedded-meta", ":memory:"]
        else:
            raise ValueError(f"meta = {meta!r}: expected 'remote', 'embedded' or 'memory'")
        argv += ["--memory-data"] if data == "memory" else ["--mgmtd", self.mgmtd_address]
        self._spawn(name, argv + list(extra or []))
        deadline = time.monotonic() + timeout_s
        while not os.path.ismount(mount):
            if self.processes[name].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ff-fuse did not mount {mount} within {timeout_s} s:\n{self.logs()}")
            time.sleep(0.05)
        self.mounts[name] = mount
        return mount

    def start_all(self, kv: str = "rocksdb", mountpoint: str | os.PathLike | None = None,
                  fuse_extra: list[str] | None = None) -> pathlib.Path:
        """The whole local cluster: mgmtd, storage servers, the chain table, etcd when kv == "etcd", ff-meta when
        built (else ff-fuse keeps the metadata in-process on RocksDB), and an ff-fuse mount (fuse_extra: more
        ff-fuse flags); returns the mount."""
        if kv == "etcd":
            self.start_etcd()
        self.start()
        if (self.bin / "ff-meta").exists():
            self.start_meta(kv=kv)
            return self.start_fuse(mountpoint, meta="remote", extra=fuse_extra)
        if kv != "rocksdb":
            raise RuntimeError("--kv etcd needs ff-meta, which is not built")
        return self.start_fuse(mountpoint, meta="embedded", extra=fuse_extra)

    def unmount(self, name: str = "fuse", timeout_s: float = 15) -> None:
        """SIGTERM to ff-fuse (it unmounts), then a lazy unmount if the mount is still there."""
        mount = self.mounts.get(name)
        self.kill(name, signal.SIGTERM, timeout_s=timeout_s)
        if mount is not None and is_mounted(mount):
            subprocess.run(["fusermount3", "-u", "-z", str(mount)], capture_output=True, timeout=30)
        self.mounts.pop(name, None)

    def stop(self) -> None:
        # Mounts first (their last releases need meta and storage), then ff-meta, then the rest, etcd last.
        def rank(name: str) -> int:
            return 0 if name in self.mounts or name.startswith("fuse") else 1 if name.startswith("meta") else \
                3 if name == "etcd" else 2
        for group in sorted({rank(name) for name in self.processes}):
            names = [name for name in self.processes if rank(name) == group]
            for name in names:
                if self.processes[name].poll() is None:
                    self.processes[name].send_signal(signal.SIGTERM)
            for name in names:
                process = self.processes[name]
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        for mount in self.mounts.values():
            if is_mounted(mount):
                subprocess.run(["fusermount3", "-u", "-z", str(mount)], capture_output=True, timeout=30)
        self.mounts.clear()
        if not self.keep and not os.environ.get("FF_KEEP_CLUSTER"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def fuse_unavailable_reason() -> str | None:
    """Why FUSE mounts cannot work here (None when they can): no /dev/fuse, or neither root nor fusermount3."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as e:
        return f"/dev/fuse cannot be opened: {e.strerror}"
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        return "not root and no fusermount3"
    return None
