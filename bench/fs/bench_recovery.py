#!/usr/bin/env python3
"""fs recovery benchmark: how fast a returning storage target catches up. A local 3-server cluster at
replication 3 (one target per server); a file of --chunks chunks is written; server 3 is killed (SIGKILL);
every chunk is written again on the two left (so every chunk differs on the returning target); server 3
starts again, and the time from its start until its chain serves on all three targets is the recovery
(listing the target's chunk metadata in pages, then one full replacement per chunk). Once per
--sync-batch value (StorageConfig::sync_batch: chunks replaced at once), each on a fresh cluster.
Writes bench/results/fs_recovery_cpu.json.

Usage: bench/fs/bench_recovery.py [--build-dir build] [--chunks 1000] [--chunk-bytes 262144,1048576]
       [--sync-batch 1,16] [--rounds 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python" / "tests"))
from test_fs_support import LocalCluster  # noqa: E402


def serving_targets(cluster: LocalCluster) -> int:
    chains = cluster.routing()["chains"]
    return min(sum(t["state"] == "serving" for t in chain["targets"]) for chain in chains)


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout_s} s")
        time.sleep(0.05)


def write_all(cluster: LocalCluster, chunks: int, chunk_bytes: int) -> None:
    result = cluster.run_tool("ff-bench-storage", "--rpc-timeout-s", "10", "bench", "--op", "write", "--pattern", "seq",
                              "--block-bytes", str(chunk_bytes), "--chunk-bytes", str(chunk_bytes), "--queue-depth",
                              "8", "--file-bytes", str(chunks * chunk_bytes), "--seconds", "600", "--max-ops",
                              str(chunks), timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"ff-bench-storage failed: {result.stderr[-2000:]}")
    line = json.loads(result.stdout.strip().splitlines()[-1])
    if line["errors"] != 0 or line["ops"] < chunks:
        raise RuntimeError(f"the write pass did not write every chunk: {line}")


def one_recovery(build: pathlib.Path, data_dir: str | None, chunks: int, chunk_bytes: int, sync_batch: int) -> dict:
    with LocalCluster(build / "bin", nodes=3, targets_per_node=1, heartbeat_timeout_s=3, data_dir=data_dir,
                      stats_interval_s=60, storage_settings={"sync_batch": sync_batch}) as cluster:
        cluster.start()
        write_all(cluster, chunks, chunk_bytes)
        cluster.kill("storage3")
        wait_until(lambda: serving_targets(cluster) == 2, 60, "server 3's target was not taken out of its chain")
        write_all(cluster, chunks, chunk_bytes)
        started = time.monotonic()
        cluster.start_storage(3)
        wait_until(lambda: serving_targets(cluster) == 3, 900, "the returning target did not serve again")
        seconds = time.monotonic() - started
    return {"bench": "fs_recovery", "sync_batch": sync_batch, "chunks": chunks, "chunk_bytes": chunk_bytes,
            "seconds_to_serving": round(seconds, 2), "chunks_per_s": round(chunks / seconds, 1),
            "MB_per_s": round(chunks * chunk_bytes / seconds / 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", default=os.environ.get("FF_BUILD_DIR", "build"))
    parser.add_argument("--chunks", type=int, default=1000)
    parser.add_argument("--chunk-bytes", default=f"{256 << 10},{1 << 20}", help="chunk sizes, comma-separated")
    parser.add_argument("--sync-batch", default="1,16")
    parser.add_argument("--rounds", type=int, default=1, help="alternations of the --sync-batch values")
    parser.add_argument("--data-dir", default=None, help="where the clusters' directories go (default: /tmp)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "fs_recovery_cpu.json"))
    args = parser.parse_args()
    build = pathlib.Path(args.build_dir).resolve()
    results = []
    for chunk_bytes in (int(b) for b in args.chunk_bytes.split(",")):
        for _ in range(args.rounds):
            for batch in (int(b) for b in args.sync_batch.split(",")):
                row = one_recovery(build, args.data_dir, args.chunks, chunk_bytes, batch)
                print(json.dumps(row), flush=True)
                results.append(row)
    out = {
        "benchmark": "fs recovery: a SIGKILLed ff-storage's target returning after every chunk of a file was written "
                     "again without it; seconds from its start until its chain serves on all three targets",
        "device": f"{platform.machine()} CPU, {os.cpu_count()} cores shared by the 3 servers, mgmtd and the client",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "results": results,
    }
    pathlib.Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
