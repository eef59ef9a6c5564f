#!/usr/bin/env bash
# The fs benchmarks on the GPU machine's host (16 cores, its own disk), through the device tool:
#   bash bench/fs/device_session.sh STEPS...   (carry .fsbundle, made here by bench/fs/device_bundle.sh pack)
# with $OUT set; results and logs land in $OUT. Steps: probe (cores, disks, FUSE), storage (bench_storage.py),
# client (bench_client.py), fuse (bench_fuse.py), mdrpc (mdtest_rpc.py: metadata over gRPC, one ff-meta).
# FS_BENCH_ARGS adds arguments to every benchmark script; FS_MACHINE names the results files (default h200host).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/fs_out}
mkdir -p "$OUT"
machine=${FS_MACHINE:-h200host}
export PYTHONUNBUFFERED=1
bash bench/fs/device_bundle.sh unpack || exit 1

# The scratch directory: the largest disk-backed file system (not tmpfs/overlay), as fio and the chunk
# engine need O_DIRECT on a real disk.
scratch=""
best=0
for dir in /tmp /var/tmp /root "$PWD" /mnt /data; do
  [[ -d $dir ]] || continue
  read -r fstype avail < <(df -T --output=fstype,avail -B1 "$dir" | tail -1)
  case "$fstype" in tmpfs | overlay | ramfs | 9p | fuse*) continue ;; esac
  if ((avail > best)); then best=$avail scratch=$dir; fi
done
scratch=${scratch:-/tmp}/ff_bench_scratch
mkdir -p "$scratch"
export TMPDIR=$scratch

for step in "$@"; do
  echo "=== $step ($(date +%T))"
  case "$step" in
    probe)
      {
        echo "cores: $(nproc)"; uname -r; head -2 /etc/os-release
        grep -m1 "model name" /proc/cpuinfo; free -g | head -2
        df -hT / /tmp "$PWD" "$scratch"; lsblk -o NAME,SIZE,ROTA,TYPE,MOUNTPOINT 2>/dev/null
        ls -l /dev/fuse 2>&1; grep fuse /proc/filesystems
        echo "scratch: $scratch"
        /opt/ffb/bin/ff-storage --help 2>&1 | head -3; fio --version
      } 2>&1 | tee "$OUT/probe.log"
      ;;
    storage)
      timeout 560 python3 bench/fs/bench_storage.py --build-dir /opt/ffb --out "$OUT/fs_storage_$machine.json" \
        ${FS_BENCH_ARGS:-} 2>&1 | tee "$OUT/storage.log" | tail -40
      ;;
    client)
      # fio's huge-page baseline needs huge pages reserved (FS_HUGE_PAGES of 2 MiB, 1024 by default).
      if [[ ${FS_BENCH_ARGS:-} == *--fio-huge-pages* && -w /proc/sys/vm/nr_hugepages ]]; then
        echo "${FS_HUGE_PAGES:-1024}" >/proc/sys/vm/nr_hugepages
      fi
      timeout 560 python3 bench/fs/bench_client.py --build-dir /opt/ffb --machine "$machine" \
        --out "$OUT/fs_client_$machine.json" ${FS_BENCH_ARGS:-} 2>&1 | tee "$OUT/client.log" | tail -40
      ;;
    fuse)
      timeout 560 python3 bench/fs/bench_fuse.py --build-dir /opt/ffb --machine "$machine" \
        --out "$OUT/fs_fuse_$machine.json" ${FS_BENCH_ARGS:-} 2>&1 | tee "$OUT/fuse.log" | tail -40
      ;;
    mdrpc)
      timeout 300 python3 bench/fs/mdtest_rpc.py --build /opt/ffb --scratch "$scratch" \
        --out "$OUT/fs_mdtest_$machine.json" ${FS_BENCH_ARGS:-} 2>&1 | tee "$OUT/mdrpc.log" | tail -30
      ;;
    *)
      echo "unknown step $step" >&2
      exit 2
      ;;
  esac
done
