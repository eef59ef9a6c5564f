#!/usr/bin/env python3
"""mdtest against ff-meta over gRPC and over our TCP transport: starts one ff-meta per transport (RocksDB, fsync per
commit, no storage) and runs fs_mdtest through RemoteMeta with several client thread counts, and the same phases in-process (the meta library over RocksDB)
and on the local file system, for the issue's target (>= 10,000 creates+stats per second with one meta server).
Writes bench/results/fs_mdtest_<machine>.json (machine: CPU model and core count).

Usage: python3 bench/fs/mdtest_rpc.py [--build build] [--scratch /tmp] [--threads 16,64,128] [--files 200]
       [--transports grpc,tcp]
"""
import argparse
import datetime
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time


def cpu_model() -> str:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def run_mdtest(binary: pathlib.Path, args: list[str]) -> list[dict]:
    output = subprocess.run([str(binary), *args], check=True, capture_output=True, text=True, timeout=900).stdout
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", default=os.environ.get("FF_BUILD_DIR", "build"))
    parser.add_argument("--scratch", default="/tmp")
    parser.add_argument("--threads", default="16,64,128")
    parser.add_argument("--files", type=int, default=200, help="files per thread")
    parser.add_argument("--clients", type=int, default=2, help="RemoteMeta instances (gRPC channels)")
    parser.add_argument("--transports", default="grpc,tcp",
                        help="comma-separated: grpc, tcp (one ff-meta per transport, each on its own store)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    build = pathlib.Path(args.build)
    mdtest, meta = build / "bench-bin" / "fs_mdtest", build / "bin" / "ff-meta"
    for binary in (mdtest, meta):
        if not binary.exists():
            print(f"{binary} is not built (fs needs its libraries)", file=sys.stderr)
            return 1
    machine = f"{cpu_model()}, {os.cpu_count()} cores"
    slug = re.sub(r"[^a-z0-9]+", "_", re.sub(r"\(r\)|\(tm\)", "", machine.lower())).strip("_")
    out = pathlib.Path(args.out or f"bench/results/fs_mdtest_{slug}.json")

    transports = [t for t in args.transports.split(",") if t]
    for transport in transports:
        if transport not in ("grpc", "tcp"):
            parser.error(f"--transports: '{transport}' is not grpc or tcp")
    work = pathlib.Path(tempfile.mkdtemp(prefix="ff_mdtest_rpc_", dir=args.scratch))
    servers, logs, addresses = {}, [], {}
    results, summary = [], []
    try:
        # One ff-meta per transport, each on its own store (tcp:// listen addresses serve our TCP transport).
        for transport in transports:
            scheme = "tcp://" if transport == "tcp" else ""
            config = work / f"meta_{transport}.toml"
            config.write_text(
                f'[meta]\nlisten = "{scheme}127.0.0.1:0"\naddress_file = "{work}/meta_{transport}.addr"\n'
                f'standalone_chains = 8\ninode_batch = 4096\n[kv]\nkind = "rocksdb"\npath = "{work}/kv_{transport}"\n'
                f'sync = true\n[metrics]\nstats_interval_s = 5\n')
            log = open(work / f"meta_{transport}.log", "wb")
            logs.append(log)
            servers[transport] = subprocess.Popen([str(meta), "--config", str(config)], stdout=log,
                                                  stderr=subprocess.STDOUT)
        for transport, server in servers.items():
            deadline = time.monotonic() + 30
            address_file = work / f"meta_{transport}.addr"
            while not address_file.exists():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ff-meta did not start: {(work / f'meta_{transport}.log').read_text()}")
                time.sleep(0.1)
            addresses[transport] = address_file.read_text().strip()
        threads_list = [int(t) for t in args.threads.split(",")]
        for index, threads in enumerate(threads_list):
            common = ["--threads", str(threads), "--files", str(args.files), "--scratch", args.scratch]
            row = {"threads": threads}
            modes = []
            for transport in transports:
                name = "gRPC" if transport == "grpc" else "our TCP transport"
                remote = ["--meta", addresses[transport], "--clients", str(args.clients)]
                modes.append((f"ff-meta over {name}", transport, remote))
                modes.append((f"ff-meta over {name}, no batching", f"{transport}_no_batching", remote + ["--batches", "0"]))
            modes.append(("in-process library", "in_process", ["--kv", "rocksdb", "--sync", "1"]))
            for mode, key, extra in modes:
                print(f"[{index + 1}/{len(threads_list)}] {threads} threads, {mode}", file=sys.stderr, flush=True)
                load = os.getloadavg()[0]
                lines = run_mdtest(mdtest, common + extra)
                for line in lines:
                    line["mode"] = mode
                    line["load_avg_1m"] = round(load, 2)
                    print(json.dumps(line), flush=True)
                results.extend(lines)
                mixed = next(line for line in lines if line["phase"] == "create+stat")
                row[key] = round(mixed["ops_per_s"])
                row.setdefault("local_fs", round(mixed["local_fs_ops_per_s"]))
                row.setdefault("load_avg_1m", round(load, 2))
            summary.append(row)
    finally:
        for server in servers.values():
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        for log in logs:
            log.close()
        shutil.rmtree(work, ignore_errors=True)
    document = {
        "benchmark": "fs mdtest: creates+stats per second (create then stat phases, N threads, one directory each) "
                     "against ONE ff-meta per transport (gRPC; our TCP transport, tcp:// addresses; RemoteMeta, RocksDB with a "
                     "WAL fsync per commit, group commit; "
                     "with RemoteMeta's batching, default, and without), "
                     "the same meta library in-process, and the local file system (no fsync) in the same scratch "
                     "directory; target >= 10,000 creates+stats/s with one meta server",
        "device": f"{machine} (shared; client, server and local fs on the same VM); scratch {args.scratch}",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "files_per_thread": args.files,
        "summary_creates_plus_stats_per_s": summary,
        "results": results,
    }
    out.write_text(json.dumps(document, indent=1) + "\n")
    for row in summary:
        over = " ".join(f"{key} {value}" for key, value in row.items() if key != "threads")
        print(f"threads {row['threads']:4}: {over}", file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
