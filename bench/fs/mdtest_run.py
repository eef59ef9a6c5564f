#!/usr/bin/env python3
"""Runs fs_mdtest over a few configurations and writes bench/results/fs_meta_cpu.json.

Usage: python3 bench/fs/mdtest_run.py [--bin build/bench-bin/fs_mdtest] [--scratch /tmp]
Each configuration prints its JSON lines as it finishes; the document collects them with the device.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

CONFIGS = [
    # (kv, sync, threads, files per thread, shared dir)
    ("rocksdb", 1, 4, 500, False),
    ("rocksdb", 1, 16, 300, False),
    ("rocksdb", 1, 64, 300, False),
    ("rocksdb", 1, 64, 300, True),
    ("rocksdb", 0, 8, 2000, False),
    ("memory", 0, 8, 2000, False),
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default="build/bench-bin/fs_mdtest")
    parser.add_argument("--scratch", default="/tmp")
    parser.add_argument("--out", default="bench/results/fs_meta_cpu.json")
    args = parser.parse_args()
    results = []
    for index, (kv, sync, threads, files, shared) in enumerate(CONFIGS):
        command = [args.bin, "--kv", kv, "--sync", str(sync), "--threads", str(threads), "--files", str(files),
                   "--scratch", args.scratch] + (["--shared-dir"] if shared else [])
        print(f"[{index + 1}/{len(CONFIGS)}] {' '.join(command)}", file=sys.stderr, flush=True)
        output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=600).stdout
        for line in output.splitlines():
            if line.startswith("{"):
                print(line, flush=True)
                results.append(json.loads(line))
    document = {
        "benchmark": "fs meta: mdtest-like phases on the meta library (one MetaService, N threads) over "
                     "RocksDB (sync = WAL fsync per commit, group commit) or memory, vs the same ops on the local "
                     "file system (no fsync) in the same scratch directory",
        "device": f"{platform.machine()} CPU ({os.cpu_count()} cores, shared); scratch {args.scratch}",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "results": results,
    }
    with open(args.out, "w") as out:
        json.dump(document, out, indent=1)
        out.write("\n")


if __name__ == "__main__":
    main()
