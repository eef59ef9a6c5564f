#!/usr/bin/env python3
"""fs storage benchmark: ff-bench-storage against a local 3-server cluster at replication 3, beside fio on
the same disk with the same block size and queue depth, in one run. One JSON line per case; writes
bench/results/fs_storage_cpu.json. Targets (issue 5): read >= 0.9x fio, write >= 0.9x fio/3 (every byte
is written three times on the same disk). Each case runs --rounds rounds of ours and fio back to back (who goes
first rotates) and compares the medians: this VM's disk moves between runs.

Usage: bench/fs/bench_storage.py [--build-dir build] [--seconds 3] [--rounds 3] [--file-mb 256] [--depths 1,8]
       [--blocks 4096,1048576,4194304] [--ops write,read] [--patterns seq,rand] [--transports grpc,tcp]
       [--server-counters] [--baseline-storage PATH] [--group-sync-ms 0,100] [--out FILE]

--transports: one cluster per transport (the storage servers on gRPC, or on our own TCP transport: tcp://
listen addresses), all on the same disk; each case runs ours on every cluster, one after the other, beside
one fio run, and prints one line per transport ("transport" names it).

--baseline-storage: an A/B of two ff-storage builds: each transport also gets a cluster whose storage servers
are the ff-storage at PATH (the other programs stay this build's), measured right after this build's on the
same case (who goes first rotates from case to case); its lines carry "storage_build": "baseline" (this build's:
"this").
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import pathlib
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python" / "tests"))
from test_fs_support import LocalCluster  # noqa: E402

BLOCKS = [4 << 10, 1 << 20, 4 << 20]
# ff-storage's stats-line counters that --server-counters reports per client I/O.
SERVER_COUNTERS = ("writes", "forwards", "reads", "inline_reads", "parallel_forwards", "tail_commits_in_worker",
                   "synced_batches", "unsynced_batches", "wal_syncs", "dsync_writes", "lazy_commits", "rocksdb_wal_file_syncs",
                   "rocksdb_writes_grouped", "patched_writes", "merged_patches", "patches_settled",
                   "patches_settled_by_updates")


def storage_bench(cluster: LocalCluster, chunk_bytes: int, *extra: str, timeout: float) -> dict:
    """One `ff-bench-storage bench` case against `cluster`: its JSON line."""
    out = cluster.run_tool("ff-bench-storage", "--rpc-timeout-s", "10", "bench", "--chunk-bytes", str(chunk_bytes),
                           *extra, timeout=timeout)
    if out.returncode != 0 and not out.stdout.strip():
        raise RuntimeError(f"ff-bench-storage failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_run(runs: list[dict]) -> dict:
    """The run whose MB/s is the (lower) median of `runs`: its latencies and counters go with the median figure."""
    ordered = sorted(runs, key=lambda run: run["MB_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def prefill_storage_file(cluster: LocalCluster, chunk_bytes: int, file_mb: int) -> None:
    """Writes ff-bench-storage's file once (4 MiB blocks, depth 8), so read cases find data."""
    storage_bench(cluster, chunk_bytes, "--op", "write", "--pattern", "seq", "--block-bytes", str(4 << 20),
                  "--queue-depth", "8", "--file-bytes", str(file_mb << 20), "--seconds", "600", "--max-ops",
                  str(file_mb // 4), timeout=900)


def fio(directory: pathlib.Path, op: str, pattern: str, block: int, depth: int, seconds: float, file_mb: int,
        metadata_sync: bool = False, huge_pages: bool = False) -> float:
    """MB/s of fio with io_uring + O_DIRECT; writes are O_DSYNC like the chunk engine's data writes.
    metadata_sync: also fdatasync after every write (what a replica adds per write: its synced RocksDB
    batch, an fdatasync of the WAL), the like-for-like baseline of our writes. huge_pages: fio's buffers on huge pages
    (--mem=shmhuge; needs huge pages reserved, /proc/sys/vm/nr_hugepages), as our clients' read buffers are."""
    rw = {("read", "seq"): "read", ("read", "rand"): "randread", ("write", "seq"): "write",
          ("write", "rand"): "randwrite"}[(op, pattern)]
    command = ["fio", "--name=ff", f"--filename={directory}/fio.dat", f"--size={file_mb}M", f"--rw={rw}", f"--bs={block}",
               f"--iodepth={depth}", "--ioengine=io_uring", "--direct=1", f"--runtime={seconds}", "--time_based",
               "--output-format=json"]
    if huge_pages:
        command.append("--mem=shmhuge")
    if op == "write":
        command.append("--sync=dsync")
        if metadata_sync:
            command.append("--fdatasync=1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    if result.returncode != 0:
        raise RuntimeError(f"fio failed: {result.stderr}")
    job = json.loads(result.stdout)["jobs"][0]
    return job["read" if op == "read" else "write"]["bw_bytes"] / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", default=os.environ.get("FF_BUILD_DIR", "build"))
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--file-mb", type=int, default=128)
    parser.add_argument("--depths", default="1,8")
    parser.add_argument("--blocks", default=",".join(str(b) for b in BLOCKS))
    parser.add_argument("--ops", default="write,read")
    parser.add_argument("--patterns", default="seq,rand")
    parser.add_argument("--chunk-bytes", type=int, default=1 << 20,
                        help="the file's chunk size (1 MiB, the file system's default layout; blocks larger than a "
                             "chunk are several chunk I/Os in parallel)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of (ours on every cluster, fio) per case, back to back; each figure is the median "
                             "of its rounds (this VM's disk moves between runs)")
    parser.add_argument("--local-reads", type=int, default=1, help="also run each read case with local reads (0: no)")
    parser.add_argument("--caller-threads", type=int, default=1,
                        help="also run each read case with local reads by queue-depth caller threads, each reading "
                             "one block at a time and served on its own thread where a kept answer allows (cached "
                             "local reads, StorageClient::read_cached_now; caller_* fields; 0: no)")
    parser.add_argument("--caller-queue", type=int, default=1,
                        help="also run each read case of blocks within a chunk with local reads by one thread keeping "
                             "queue-depth reads in flight through one io_uring (StorageClient::CachedReadQueue, as "
                             "fio's one job at that iodepth; queue_* fields; 0: no)")
    parser.add_argument("--fio-huge-pages", action="store_true",
                        help="read cases also run fio with its buffers on huge pages (--mem=shmhuge), as our read buffers "
                             "of 1 MiB and more are; reserve them first: echo 512 > /proc/sys/vm/nr_hugepages")
    parser.add_argument("--transports", default="tcp",
                        help="comma-separated: grpc, tcp (the storage servers' transport; one cluster each)")
    parser.add_argument("--server-counters", action="store_true",
                        help="each line also gets the storage servers' counters per client I/O (all three servers "
                             "together, from their stats lines: synced batches, WAL fsyncs, DSYNC writes, patches)")
    parser.add_argument("--baseline-storage", default=None,
                        help="an ff-storage binary to compare with: one more cluster per transport runs it")
    parser.add_argument("--group-sync-ms", default="0",
                        help="comma-separated: the storage servers' chunk.group_sync_ms (0: every write durable on "
                             "each replica before it is acknowledged, the default; N: the chunk engines sync every N ms "
                             "instead, docs/fs-chunk-engine.md \"Group sync\"); one cluster per value, each line names "
                             "its value")
    parser.add_argument("--ab-client-args", default=None,
                        help="an A/B of client settings: each case also runs ff-bench-storage with these extra "
                             "arguments (e.g. \"--coalesce-write-max-bytes 0\") on the same clusters, in the same "
                             "rounds; its lines carry \"client_variant\": \"ab\" (the others: \"default\")")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "fs_storage_cpu.json"))
    args = parser.parse_args()
    bin_dir = REPO / args.build_dir / "bin"
    depths = [int(d) for d in args.depths.split(",")]
    data_dir = tempfile.mkdtemp(prefix="ff_fs_bench_")
    results = []
    transports = args.transports.split(",")
    for transport in transports:
        if transport not in ("grpc", "tcp"):
            parser.error(f"--transports: '{transport}' is not grpc or tcp")
    try:
        group_sync_values = [int(value) for value in args.group_sync_ms.split(",")]
    except ValueError:
        parser.error(f"--group-sync-ms: '{args.group_sync_ms}' is not a comma-separated list of integers")
    if args.rounds < 1:
        parser.error(f"--rounds: {args.rounds} is not a positive number of rounds")
    if any(value < 0 or value > 60_000 for value in group_sync_values):
        parser.error(f"--group-sync-ms: {args.group_sync_ms} has a value outside [0, 60000]")
    variants = {"default": ()}
    if args.ab_client_args:
        variants["ab"] = tuple(shlex.split(args.ab_client_args))
    builds = {"this": bin_dir}
    if args.baseline_storage:
        baseline = pathlib.Path(args.baseline_storage).resolve()
        if not os.access(baseline, os.X_OK):
            parser.error(f"--baseline-storage: '{baseline}' is not an executable file")
        # This build's programs, but ff-storage from the baseline.
        baseline_bin = pathlib.Path(tempfile.mkdtemp(prefix="ff_baseline_bin_"))
        for program in bin_dir.iterdir():
            (baseline_bin / program.name).symlink_to(baseline if program.name == "ff-storage" else program.resolve())
        builds["baseline"] = baseline_bin
    with contextlib.ExitStack() as stack:
        clusters = {}
        for transport in transports:
            for build, build_bin in builds.items():
                for group_ms in group_sync_values:
                    cluster = stack.enter_context(LocalCluster(
                        build_bin, nodes=3, targets_per_node=1, heartbeat_timeout_s=10, data_dir=data_dir,
                        stats_interval_s=1 if args.server_counters else 30, transport=transport,
                        chunk_settings={"group_sync_ms": group_ms} if group_ms else None))
                    cluster.start()
                    clusters[(transport, build, group_ms)] = cluster

        def server_counters(cluster: LocalCluster) -> dict[str, int]:
            """The counters of the storage servers' latest stats lines, summed."""
            totals: dict[str, int] = {}
            for node in range(1, 4):
                lines = [line for line in (cluster.dir / f"storage{node}.log").read_text(errors="replace").splitlines()
                         if "synced_batches=" in line]
                if not lines:
                    continue
                for key, value in re.findall(r"(\w+)=(\d+)(?=\s|$)", lines[-1]):
                    totals[key] = totals.get(key, 0) + int(value)
            return totals

        def bench(cluster: LocalCluster, *extra: str) -> dict:
            if args.server_counters:
                time.sleep(1.2)  # a stats line after the previous case
                before = server_counters(cluster)
            result = storage_bench(cluster, args.chunk_bytes, *extra, timeout=args.seconds + 300)
            if args.server_counters and result.get("ops"):
                time.sleep(1.2)
                after = server_counters(cluster)
                result["server_counters_per_io"] = {
                    key: round((after[key] - before.get(key, 0)) / result["ops"], 3)
                    for key in SERVER_COUNTERS if key in after}
            return result

        for cluster in clusters.values():
            prefill_storage_file(cluster, args.chunk_bytes, args.file_mb)
        fio_dir = next(iter(clusters.values())).dir
        case_index = 0
        for block in [int(b) for b in args.blocks.split(",")]:
            for op in args.ops.split(","):
                for pattern in args.patterns.split(","):
                    for depth in depths:
                        case = ("--op", op, "--pattern", pattern, "--block-bytes", str(block), "--queue-depth",
                                str(depth), "--file-bytes", str(args.file_mb << 20), "--seconds", str(args.seconds))
                        # Each round runs ours on every cluster and fio back to back; who goes first rotates from
                        # case to case and round to round, so no side always gets the disk's earlier seconds. This
                        # VM's disk moves between runs (fio alone: 0.68 to 1.8 GB/s for one case within ten minutes),
                        # so each figure is the median of its rounds.
                        keys = [(cluster_key, variant) for cluster_key in clusters for variant in variants]
                        runs: dict = {key: [] for key in keys}
                        local_runs: dict = {key: [] for key in keys}
                        caller_runs: dict = {key: [] for key in keys}
                        queue_runs: dict = {key: [] for key in keys}
                        fio_runs: list[float] = []
                        extra_runs: dict[str, list[float]] = {}
                        for round_index in range(args.rounds):
                            shift = case_index % len(keys)
                            fio_first = case_index % 2 == 1
                            case_index += 1

                            def run_fio() -> None:
                                fio_runs.append(fio(fio_dir, op, pattern, block, depth, args.seconds, args.file_mb))
                                if op == "read" and args.fio_huge_pages:
                                    extra_runs.setdefault("fio_huge_pages_MB_per_s", []).append(
                                        fio(fio_dir, op, pattern, block, depth, args.seconds, args.file_mb,
                                            huge_pages=True))
                                if op == "write":
                                    # Second baseline, like with like: fio O_DSYNC writes each followed by an
                                    # fdatasync (each replica syncs a RocksDB batch per write; plain fio does not).
                                    extra_runs.setdefault("fio_fdatasync_MB_per_s", []).append(
                                        fio(fio_dir, op, pattern, block, depth, args.seconds, args.file_mb,
                                            metadata_sync=True))

                            if fio_first:
                                run_fio()
                            for key in keys[shift:] + keys[:shift]:
                                runs[key].append(bench(clusters[key[0]], *case, *variants[key[1]]))
                                if op == "read" and args.local_reads:
                                    # The same reads served from the targets' files (docs/fs.md, "Local reads"):
                                    # the read RPC still goes to a target, the bytes do not travel over TCP.
                                    local_runs[key].append(bench(clusters[key[0]], *case, *variants[key[1]],
                                                                 "--local-reads"))
                                if op == "read" and args.caller_threads:
                                    # Synchronous callers on this host (FUSE's threads, a thread pool): a read of a
                                    # chunk whose whole version a target named is read on the caller's thread without
                                    # asking (docs/fs.md, "Cached local reads").
                                    caller_runs[key].append(bench(clusters[key[0]], *case, *variants[key[1]],
                                                                  "--local-reads", "--caller-threads"))
                                if op == "read" and args.caller_queue and block <= args.chunk_bytes:
                                    # One caller keeping queue-depth reads of kept chunks in flight through one
                                    # io_uring (StorageClient::CachedReadQueue; FileClient's batch reads).
                                    queue_runs[key].append(bench(clusters[key[0]], *case, *variants[key[1]],
                                                                 "--local-reads", "--caller-queue"))
                            if not fio_first:
                                run_fio()
                        fio_mb = statistics.median(fio_runs)
                        extra = {name: round(statistics.median(values), 1) for name, values in extra_runs.items()}
                        target = 0.9 * fio_mb if op == "read" else 0.9 * fio_mb / 3
                        for key in keys:
                            (transport, build, group_ms), variant = key
                            mine = median_run(runs[key])
                            mine_mb = statistics.median(r["MB_per_s"] for r in runs[key])
                            line = {**mine, "transport": transport, "group_sync_ms": group_ms,
                                    "fio_MB_per_s": round(fio_mb, 1),
                                    "MB_per_s": round(mine_mb, 1),
                                    "ratio_vs_fio": round(mine_mb / fio_mb, 3) if fio_mb else None,
                                    "target_MB_per_s": round(target, 1), "meets_target": mine_mb >= target,
                                    "rounds": args.rounds,
                                    "rounds_MB_per_s": [round(r["MB_per_s"], 1) for r in runs[key]],
                                    "rounds_fio_MB_per_s": [round(value, 1) for value in fio_runs],
                                    **extra}
                            # The local-read runs and the caller-thread runs, each as prefix_* fields.
                            for prefix, extra_runs_of in (("local", local_runs), ("caller", caller_runs),
                                                          ("queue", queue_runs)):
                                variant_runs = extra_runs_of[key]
                                if not variant_runs:
                                    continue
                                median = median_run(variant_runs)
                                variant_mb = statistics.median(r["MB_per_s"] for r in variant_runs)
                                line[f"{prefix}_MB_per_s"] = round(variant_mb, 1)
                                line[f"{prefix}_p50_us"] = median["p50_us"]
                                line[f"{prefix}_reads"] = median["local_reads"]
                                line[f"{prefix}_read_fallbacks"] = median["local_read_fallbacks"]
                                line[f"{prefix}_cached_reads"] = median.get("cached_local_reads")
                                line[f"{prefix}_cache_misses"] = median.get("cached_local_read_misses")
                                line[f"{prefix}_ratio_vs_fio"] = round(variant_mb / fio_mb, 3) if fio_mb else None
                                line[f"{prefix}_meets_target"] = variant_mb >= target
                                line[f"rounds_{prefix}_MB_per_s"] = [round(r["MB_per_s"], 1) for r in variant_runs]
                            if args.baseline_storage:
                                line["storage_build"] = build
                            if args.ab_client_args:
                                line["client_variant"] = variant
                            huge = extra.get("fio_huge_pages_MB_per_s")
                            if huge:
                                line["ratio_vs_fio_huge_pages"] = round(mine_mb / huge, 3)
                                if "local_MB_per_s" in line:
                                    line["local_ratio_vs_fio_huge_pages"] = round(line["local_MB_per_s"] / huge, 3)
                            fio_sync = extra.get("fio_fdatasync_MB_per_s")
                            if fio_sync:
                                line["ratio_vs_fio_fdatasync"] = round(mine_mb / fio_sync, 3)
                            print(json.dumps(line), flush=True)
                            results.append(line)
    document = {
        "benchmark": "fs storage: ff-bench-storage (StorageClient over gRPC or our TCP transport: each line's "
                     "transport, 3 ff-storage at replication 3, "
                     "ChunkEngine O_DIRECT+io_uring, sync data) vs fio (io_uring, O_DIRECT, dsync writes) on the same disk",
        "note": "Our writes sync more than fio's: each replica's data write is O_DSYNC like fio's, and each "
                "replica also syncs a RocksDB batch per write (an fdatasync of its WAL: the head's and "
                "middle's pending batch, the tail's commit batch, all three at once since the head and the "
                "middle forward while they store; the head's and middle's commits after acknowledging are "
                "unsynced and ride on a later synced batch), all three replicas on this one disk; a small "
                "overwrite is also copied in place later (one more O_DSYNC write per replica, off the "
                "critical path). fio_fdatasync_MB_per_s is fio with "
                "--sync=dsync --fdatasync=1 (one data write + one fdatasync per write, as one replica "
                "does); ratio_vs_fio and the target keep the issue's baseline (plain dsync fio). Read cases "
                "also run with local reads (local_*: the client asks the target over RPC, then reads the "
                "bytes from the target's file itself and checks their CRC32C; docs/fs.md; a small read of a chunk whose whole "
                "version a target named before is read again without asking while the target's read stamps show no "
                "change: cached local reads), and with caller threads (caller_*: queue-depth threads each reading one "
                "block at a time, a read a kept answer can serve read on the caller's own thread) and with a caller "
                "queue (queue_*: one thread keeping queue-depth reads in flight through one io_uring, each read of "
                "a kept chunk checked as a caller thread's is; blocks within a chunk only). Lines with "
                "group_sync_ms > 0 ran storage servers whose chunk engines sync every that many ms instead of on "
                "each write's path (no O_DSYNC data write, no synced batch per write; a killed process loses "
                "nothing, a power loss may lose the last interval's writes on that machine).",
        "device": f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores shared by the 3 servers, "
                  f"the client and fio (and anything else running: load average at the end "
                  f"{os.getloadavg()[0]:.1f}); disk "
                  + subprocess.run(["df", "--output=source,fstype", data_dir], capture_output=True, text=True).stdout.split("\n")[1].strip(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds_per_case": args.seconds, "rounds": args.rounds, "file_mb": args.file_mb, "chunk_bytes": args.chunk_bytes,
        "fio_huge_pages": "read cases also ran fio with --mem=shmhuge (its buffers on huge pages, as our read buffers of "
                          "1 MiB and more are): fio_huge_pages_MB_per_s" if args.fio_huge_pages else None,
        "results": results,
    }
    if args.ab_client_args:
        document["ab_client_args"] = (f"lines with client_variant 'ab' ran ff-bench-storage with {args.ab_client_args!r} "
                                      "on the same clusters, in the same rounds")
    if args.baseline_storage:
        document["baseline_storage"] = ("lines with storage_build 'baseline' ran the ff-storage at "
                                        f"{args.baseline_storage}, the others this build's")
    shutil.rmtree(data_dir, ignore_errors=True)
    if "baseline" in builds:
        shutil.rmtree(builds["baseline"], ignore_errors=True)
    pathlib.Path(args.out).write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
