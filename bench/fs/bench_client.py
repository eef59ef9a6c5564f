#!/usr/bin/env python3
"""fs native client benchmark: fs_bench_client (FileClient, in-process meta on RocksDB, 3 ff-storage at
replication 3 on this machine) beside fio on the same disk with the same block size and parallelism, in
one run. One JSON line per case; writes bench/results/fs_client_<machine>.json. Targets (issue 6):
native read >= 0.9x fio; writes are reported against fio/3 (every byte is written three times on the
same disk), as bench_storage.py does.

Each case runs --rounds times, ours and fio back to back in every round (who goes first alternates), and
compares the medians: this VM's disk moves by up to 2x from minute to minute, so a case's two sides are
measured in the same minutes. --rounds 1 runs every case of ours first, then fio's (the older method).

Usage: bench/fs/bench_client.py [--build-dir build] [--seconds 3] [--rounds 3] [--file-mb 128]
       [--parallelism 1,4,16] [--blocks 1048576,4194304] [--ops write,read] [--patterns seq,rand]
       [--machine cpu] [--beside-storage] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python" / "tests"))
sys.path.insert(0, str(REPO / "bench" / "fs"))
from bench_storage import fio, prefill_storage_file, storage_bench  # noqa: E402
from test_fs_support import LocalCluster  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", default=os.environ.get("FF_BUILD_DIR", "build"))
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (ours, fio) per case; medians compared")
    parser.add_argument("--file-mb", type=int, default=128)
    parser.add_argument("--parallelism", default="1,4,16")
    parser.add_argument("--blocks", default=f"{1 << 20},{4 << 20}")
    parser.add_argument("--ops", default="write,read")
    parser.add_argument("--patterns", default="seq,rand")
    parser.add_argument("--machine", default="cpu")
    parser.add_argument("--transport", choices=["tcp", "grpc"], default="tcp",
                        help="the storage servers' transport (tcp: our own, the default; grpc)")
    parser.add_argument("--beside-storage", action="store_true",
                        help="with --rounds > 1: also run ff-bench-storage (the storage client alone, no meta, no "
                             "FileClient) on the same cluster with the same op, pattern, block and depth = P in every "
                             "round: what FileClient adds over the storage path")
    parser.add_argument("--group-sync-ms", type=int, default=0,
                        help="the storage servers' chunk.group_sync_ms (0: every write durable on each replica before "
                             "it is acknowledged; N: synced every N ms, docs/fs-chunk-engine.md \"Group sync\")")
    parser.add_argument("--out", default=None)
    parser.add_argument("--no-local-reads", action="store_true", help="read every chunk over RPC (A/B of local reads)")
    parser.add_argument("--fio-huge-pages", action="store_true",
                        help="read cases also run fio with its buffers on huge pages (--mem=shmhuge), as FileClient's "
                             "local reads land in huge-page buffers; reserve them first: echo 512 > "
                             "/proc/sys/vm/nr_hugepages")
    parser.add_argument("--no-read-ahead", action="store_true", help="sequential reads do not read ahead (A/B)")
    parser.add_argument("--local-read-piece-bytes", type=int, default=None,
                        help="fs_bench_client --local-read-piece-bytes (local reads longer than this read in pieces); "
                             "not passed to the --ab-args side")
    parser.add_argument("--ab-args", default=None,
                        help="with --rounds > 1: also run fs_bench_client with these extra arguments in every round "
                             "(an A/B in the same minutes; who goes first rotates); reported as b_MB_per_s and "
                             "ratio_vs_b (ours / b)")
    args = parser.parse_args()
    if not 0 <= args.group_sync_ms <= 60_000:
        parser.error(f"--group-sync-ms: {args.group_sync_ms} is outside [0, 60000]")
    build = REPO / args.build_dir
    bench_bin = build / "bench-tools" / "fs_bench_client"
    if not bench_bin.exists() or not (build / "bin" / "ff-storage").exists():
        # scripts/bench.sh runs every bench script: without fs (FF_BUILD_FS) there is nothing to measure.
        print(f"bench_client: skipped: {bench_bin} or the fs tools are not built (fs needs its libraries)",
              file=sys.stderr)
        return
    out_path = pathlib.Path(args.out or REPO / "bench" / "results" / f"fs_client_{args.machine}.json")
    data_dir = tempfile.mkdtemp(prefix="ff_fs_client_bench_")
    results = []
    with LocalCluster(build / "bin", nodes=3, targets_per_node=1, heartbeat_timeout_s=10, data_dir=data_dir,
                      stats_interval_s=30, transport=args.transport,
                      chunk_settings={"group_sync_ms": args.group_sync_ms} if args.group_sync_ms else None) as cluster:
        cluster.start()

        def run_ours(ops: str, patterns: str, blocks: str, parallelism: str, reuse: bool,
                     extra: list[str] | None = None) -> list[dict]:
            run = subprocess.run(
                [str(bench_bin), "--mgmtd", cluster.mgmtd_address, "--meta-db", str(cluster.dir / "meta"),
                 "--file-mb", str(args.file_mb), "--seconds", str(args.seconds), "--ops", ops,
                 "--patterns", patterns, "--blocks", blocks, "--parallelism", parallelism]
                + (["--reuse"] if reuse else [])
                + (["--no-local-reads"] if args.no_local_reads else [])
                + (["--no-read-ahead"] if args.no_read_ahead else [])
                + (["--local-read-piece-bytes", str(args.local_read_piece_bytes)]
                   if args.local_read_piece_bytes is not None and extra is None else [])
                + (extra or []),
                capture_output=True, text=True, timeout=3600)
            print(run.stderr.strip(), file=sys.stderr)
            if run.returncode != 0:
                print(cluster.logs(), file=sys.stderr)
                sys.exit(f"fs_bench_client failed ({run.returncode})")
            return [json.loads(line) for line in run.stdout.splitlines()]

        storage_prefilled = False

        def run_storage_client(op: str, pattern: str, block: str, parallel: str) -> float:
            nonlocal storage_prefilled
            if not storage_prefilled:  # its own file, so reads find data
                prefill_storage_file(cluster, 1 << 20, args.file_mb)
                storage_prefilled = True
            return storage_bench(cluster, 1 << 20, "--op", op, "--pattern", pattern, "--block-bytes", block,
                                 "--queue-depth", parallel, "--file-bytes", str(args.file_mb << 20), "--seconds",
                                 str(args.seconds), timeout=args.seconds + 300)["MB_per_s"]

        def report(case: dict, ours_mb: list[float], fio_mb: list[float], fio_huge_mb: list[float] | None = None,
                   b_mb: list[float] | None = None, storage_mb: list[float] | None = None) -> None:
            op = case["op"]
            mine, theirs = statistics.median(ours_mb), statistics.median(fio_mb)
            target = 0.9 * theirs if op == "read" else 0.9 * theirs / 3
            line = {**case, "MB_per_s": round(mine, 1), "fio_MB_per_s": round(theirs, 1),
                    "ratio_vs_fio": round(mine / theirs, 3) if theirs else None,
                    "target_MB_per_s": round(target, 1), "meets_target": mine >= target}
            if fio_huge_mb:
                huge = statistics.median(fio_huge_mb)
                line["fio_huge_pages_MB_per_s"] = round(huge, 1)
                line["ratio_vs_fio_huge_pages"] = round(mine / huge, 3) if huge else None
            if b_mb:
                b = statistics.median(b_mb)
                line["b_args"] = args.ab_args
                line["b_MB_per_s"] = round(b, 1)
                line["ratio_vs_b"] = round(mine / b, 3) if b else None
                line["rounds_b_MB_per_s"] = [round(x, 1) for x in b_mb]
            if storage_mb:
                storage = statistics.median(storage_mb)
                line["storage_client_MB_per_s"] = round(storage, 1)
                line["ratio_vs_storage_client"] = round(mine / storage, 3) if storage else None
                line["rounds_storage_client_MB_per_s"] = [round(x, 1) for x in storage_mb]
            if len(ours_mb) > 1:
                line["rounds_MB_per_s"] = [round(x, 1) for x in ours_mb]
                line["rounds_fio_MB_per_s"] = [round(x, 1) for x in fio_mb]
                if fio_huge_mb:
                    line["rounds_fio_huge_pages_MB_per_s"] = [round(x, 1) for x in fio_huge_mb]
            print(json.dumps(line), flush=True)
            results.append(line)

        if args.rounds <= 1:
            for case in run_ours(args.ops, args.patterns, args.blocks, args.parallelism, reuse=False):
                fio_mb = fio(cluster.dir, case["op"], case["pattern"], case["block_bytes"], case["parallel"],
                             args.seconds, args.file_mb)
                report(case, [case["MB_per_s"]], [fio_mb])
        else:
            prefilled = False  # the first run creates and prefills the file, the others reuse it
            cases = itertools.product(args.blocks.split(","), args.ops.split(","), args.patterns.split(","),
                                      args.parallelism.split(","))
            for block, op, pattern, parallel in cases:
                ours_runs, fio_runs, fio_huge_runs, b_runs, storage_runs = [], [], [], [], []
                sides = ["ours", "fio"] + (["b"] if args.ab_args else []) + (["storage"] if args.beside_storage else [])
                for round_index in range(args.rounds):
                    # Who goes first rotates, so no side always gets the disk's earlier minute.
                    shift = round_index % len(sides)
                    for side in sides[shift:] + sides[:shift]:
                        if side == "ours":
                            (case,) = run_ours(op, pattern, block, parallel, reuse=prefilled)
                            prefilled = True
                            ours_runs.append(case)
                        elif side == "storage":
                            storage_runs.append(run_storage_client(op, pattern, block, parallel))
                        elif side == "b":
                            (b_case,) = run_ours(op, pattern, block, parallel, reuse=prefilled,
                                                 extra=args.ab_args.split())
                            prefilled = True
                            b_runs.append(b_case["MB_per_s"])
                        else:
                            fio_runs.append(fio(cluster.dir, op, pattern, int(block), int(parallel), args.seconds,
                                                args.file_mb))
                            if args.fio_huge_pages and op == "read":
                                fio_huge_runs.append(fio(cluster.dir, op, pattern, int(block), int(parallel),
                                                         args.seconds, args.file_mb, huge_pages=True))
                # The counts of all rounds; the rest of the first round's line.
                case = dict(ours_runs[0])
                for key in ("ios", "errors", "local_reads", "local_reads_read_before_answer", "local_reads_read_ahead",
                            "seconds"):
                    case[key] = sum(run[key] for run in ours_runs)
                case["avg_latency_ms"] = statistics.median(run["avg_latency_ms"] for run in ours_runs)
                report(case, [run["MB_per_s"] for run in ours_runs], fio_runs, fio_huge_runs, b_runs, storage_runs)
    disk = subprocess.run(["df", "--output=source,fstype", data_dir], capture_output=True, text=True).stdout.split("\n")[1].strip()
    document = {
        "benchmark": "fs native client: FileClient (in-process meta on RocksDB; 3 ff-storage at replication 3, "
                     "ChunkEngine O_DIRECT+io_uring, sync data; P threads x 1 I/O in flight) vs fio (io_uring, "
                     "O_DIRECT, iodepth P, dsync writes) on the same disk; medians of `rounds` rounds of both, "
                     "back to back in each round",
        "device": f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores shared by the 3 servers, "
                  f"the client and fio (load average at the end {os.getloadavg()[0]:.1f}); disk {disk}",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds_per_case": args.seconds, "rounds": args.rounds, "transport": args.transport,
        "group_sync_ms": args.group_sync_ms, "file_mb": args.file_mb,
        "fio_huge_pages": "read cases also ran fio with --mem=shmhuge (its buffers on huge pages, as FileClient's local "
                          "reads land in huge-page buffers): fio_huge_pages_MB_per_s" if args.fio_huge_pages else None,
        "results": results,
    }
    shutil.rmtree(data_dir, ignore_errors=True)
    out_path.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {out_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
