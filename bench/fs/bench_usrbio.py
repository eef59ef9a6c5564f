#!/usr/bin/env python3
"""usrbio benchmark: many reads per doorbell through a shared-memory ring, beside the same reads through
FileClient directly (read per block; read_batch per batch), pread(2) on the ff-fuse mount (1 thread and N
threads), and a ring served by the ff-fuse daemon (when it serves .ff/usrbio). Starts a local cluster
(ff-mgmtd, 3 ff-storage x 2 targets at replication 3, ff-meta on RocksDB, an ff-fuse mount over ff-meta),
writes one file through the mount, then runs build/bench-tools/fs_usrbio_bench per block size. One JSON line
per case; writes bench/results/fs_usrbio_<machine>.json with the ratios of the ring to each baseline.

Usage: bench/fs/bench_usrbio.py [--build-dir build] [--seconds 3] [--file-mb 256] [--machine cpu] [--out FILE]
       [--blocks 1048576,4096] [--bench-args "--read-rpcs-per-node 0"]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python" / "tests"))
from test_fs_support import LocalCluster, fuse_unavailable_reason  # noqa: E402

# (block bytes, reads per doorbell)
SHAPES = [(1 << 20, 64), (4 << 10, 256)]


def expected_bytes(size: int) -> np.ndarray:
    """The file's content: byte i = (i * 2654435761 >> 13) & 0xff (the bench binary checks samples of it)."""
    index = np.arange(size, dtype=np.uint64)
    return ((index * np.uint64(2654435761)) >> np.uint64(13)).astype(np.uint8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", default=os.environ.get("FF_BUILD_DIR", "build"))
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--file-mb", type=int, default=256)
    parser.add_argument("--machine", default="cpu")
    parser.add_argument("--out", default=None)
    parser.add_argument("--blocks", default=",".join(str(b) for b, _ in SHAPES), help="block sizes to run (of SHAPES)")
    parser.add_argument("--bench-args", default="",
                        help="more fs_usrbio_bench flags, e.g. --read-rpcs-per-node 0 (space-separated)")
    args = parser.parse_args()
    build = (REPO / args.build_dir).resolve()
    bench = build / "bench-tools" / "fs_usrbio_bench"
    bin_dir = build / "bin"
    missing = [str(p) for p in [bench] + [bin_dir / t for t in ("ff-mgmtd", "ff-storage", "ff-admin", "ff-meta",
                                                                "ff-fuse")] if not p.exists()]
    if missing:
        print(json.dumps({"bench": "fs_usrbio", "skipped": f"not built: {', '.join(missing)}"}))
        return 0
    reason = fuse_unavailable_reason()
    if reason:
        print(json.dumps({"bench": "fs_usrbio", "skipped": f"FUSE unavailable: {reason}"}))
        return 0
    results = []
    # The ring alone (no cluster): doorbells/s and round trips over a BatchIo that moves no data.
    run = subprocess.run([str(bench), "--ring-overhead", "--seconds", str(min(args.seconds, 2.0))],
                         capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        print(run.stderr[-4000:], file=sys.stderr)
        raise RuntimeError(f"fs_usrbio_bench --ring-overhead failed with {run.returncode}")
    for line in run.stdout.splitlines():
        if line.startswith("{"):
            print(line, flush=True)
            results.append(json.loads(line))
    with LocalCluster(bin_dir, nodes=3, targets_per_node=2, heartbeat_timeout_s=10.0, direct_io=False) as cluster:
        try:
            cluster.start()
            meta = cluster.start_meta(kv="rocksdb")
            mount = cluster.start_fuse(meta="remote")
        except BaseException:
            print(cluster.logs(), file=sys.stderr)
            raise
        (mount / "bench").mkdir(exist_ok=True)
        size = args.file_mb << 20
        data = expected_bytes(size)
        with open(mount / "bench" / "usrbio.dat", "wb") as f:
            for start in range(0, size, 8 << 20):
                f.write(data[start:start + (8 << 20)].tobytes())
        del data
        blocks = {int(b) for b in args.blocks.split(",")}
        for block, per_doorbell in SHAPES:
            if block not in blocks:
                continue
            command = [str(bench), "--mgmtd", cluster.mgmtd_address, "--meta", meta, "--path", "/bench/usrbio.dat",
                       "--mount", str(mount), "--block", str(block), "--per-doorbell", str(per_doorbell),
                       "--seconds", str(args.seconds), *args.bench_args.split()]
            print(" ".join(command), file=sys.stderr, flush=True)
            run = subprocess.run(command, capture_output=True, text=True, timeout=600)
            if run.returncode != 0:
                print(run.stderr[-4000:], file=sys.stderr)
                raise RuntimeError(f"fs_usrbio_bench failed with {run.returncode}")
            lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
            by_case = {line["case"]: line for line in lines}
            # Each ring beside its baselines: the in-process ring vs FileClient, the ff-fuse ring vs pread(2).
            for ring, baselines in (("usrbio_inprocess", ("fileclient_read", "fileclient_read_batch")),
                                    ("usrbio_depth4_parallel", ("usrbio_depth4_serial",)),
                                    ("usrbio_fuse", ("fuse_pread", "fuse_pread_threads"))):
                for baseline in baselines:
                    if by_case.get(ring, {}).get("MB_per_s") and by_case.get(baseline, {}).get("MB_per_s"):
                        by_case[ring][f"ratio_vs_{baseline}"] = round(
                            by_case[ring]["MB_per_s"] / by_case[baseline]["MB_per_s"], 3)
            for line in lines:
                print(json.dumps(line), flush=True)
                results.append(line)
        cluster.unmount()
    load = os.getloadavg()
    document = {
        "benchmark": "fs usrbio: random block-aligned reads of one file, per_doorbell reads per batch; the ring "
                     "(in-process RingServer over FileClient, and served by ff-fuse when it serves .ff/usrbio) vs "
                     "FileClient::read per block, FileClient::read_batch per batch, pread(2) on the ff-fuse mount "
                     "(1 and 8 threads); usrbio_depth4_serial / _parallel: the in-process ring with io_depth 4 (each doorbell cut "
                     "into batches of 4) served one batch at a time / four at once. ratio_vs_<case> = the ring's MB/s / "
                     "that case's MB/s",
        "device": f"{platform.machine()} CPU ({os.cpu_count()} cores, shared with other builds; load average "
                  f"{load[0]:.1f}); local cluster: 3 ff-storage x 2 targets, replication 3, on the same machine",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "file_mb": args.file_mb,
        "seconds_per_case": args.seconds,
        "results": results,
    }
    out = pathlib.Path(args.out) if args.out else REPO / "bench" / "results" / f"fs_usrbio_{args.machine}.json"
    out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
