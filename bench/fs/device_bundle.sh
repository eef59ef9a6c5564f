#!/usr/bin/env bash
# The fs benchmarks on a larger host that has no package registry (the GPU machine: 16 cores, its own disk).
#
#   bench/fs/device_bundle.sh pack [build-dir]   # here: .fsbundle/fs.tar.xz (ignored by git)
#     FF_BASELINE_STORAGE=PATH also packs that ff-storage as bin/ff-storage-baseline (an A/B of two builds:
#     bench_storage.py --baseline-storage /opt/ffb/bin/ff-storage-baseline)
#   bench/fs/device_bundle.sh unpack             # there (carry .fsbundle): unpacks into /opt/ffb
#
# pack copies the fs programs built here, fio and fusermount3, with every shared library they load (glibc
# and its loader included), and points each program at those copies (ELF interpreter and DT_RPATH under
# /opt/ffb/lib), so they run unchanged on a host whose own libraries differ or are missing. Nothing there
# but these programs sees the copied libraries (no LD_LIBRARY_PATH). Then, there:
#   python3 bench/fs/bench_storage.py --build-dir /opt/ffb ...  (and bench_client.py, bench_fuse.py)
set -euo pipefail
cd "$(dirname "$0")/../.."
bundle_dir=.fsbundle
prefix=/opt/ffb

case "${1:-}" in
  pack)
    build="${2:-build}"
    command -v patchelf >/dev/null || { echo "device_bundle: pack needs patchelf (apt-get install -y patchelf)" >&2; exit 1; }
    stage="$(mktemp -d)"
    trap 'rm -rf "$stage"' EXIT
    mkdir -p "$stage/bin" "$stage/bench-bin" "$stage/bench-tools" "$stage/lib"
    programs=()
    for tool in ff-mgmtd ff-storage ff-bench-storage ff-admin ff-meta ff-fuse; do
      [[ -x $build/bin/$tool ]] && cp "$build/bin/$tool" "$stage/bin/" && programs+=("$stage/bin/$tool")
    done
    if [[ -n ${FF_BASELINE_STORAGE:-} ]]; then
      cp "$FF_BASELINE_STORAGE" "$stage/bin/ff-storage-baseline" && programs+=("$stage/bin/ff-storage-baseline")
    fi
    for tool in fs_mdtest fs_meta_bench fs_grpc_api_bench; do
      [[ -x $build/bench-bin/$tool ]] && cp "$build/bench-bin/$tool" "$stage/bench-bin/" && programs+=("$stage/bench-bin/$tool")
    done
    [[ -x $build/bench-tools/fs_bench_client ]] && cp "$build/bench-tools/fs_bench_client" "$stage/bench-tools/" &&
      programs+=("$stage/bench-tools/fs_bench_client")
    for tool in fio fusermount3; do
      cp "$(command -v "$tool")" "$stage/bin/" && programs+=("$stage/bin/$tool")
    done
    for program in "${programs[@]}"; do
      ldd "$program" | awk '$3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}' | while read -r lib; do
        cp -nL "$lib" "$stage/lib/"
      done
    done
    strip --strip-debug "${programs[@]}" "$stage"/lib/*.so* 2>/dev/null || true
    loader="$(basename "$(ls "$stage"/lib/ld-linux-x86-64.so.*)")"
    for program in "${programs[@]}"; do
      patchelf --set-interpreter "$prefix/lib/$loader" --force-rpath --set-rpath "$prefix/lib" "$program"
    done
    # A library with a search path of its own (RUNPATH) hides the programs' DT_RPATH from its own
    # dependencies: point those at the copies too.
    for lib in "$stage"/lib/*.so*; do
      [[ $(basename "$lib") == "$loader" || -z $(patchelf --print-rpath "$lib" 2>/dev/null) ]] ||
        patchelf --force-rpath --set-rpath "$prefix/lib" "$lib"
    done
    mkdir -p "$bundle_dir"
    tar -C "$stage" -cJf "$bundle_dir/fs.tar.xz" .
    du -sh "$stage" "$bundle_dir/fs.tar.xz"
    ;;
  unpack)
    [[ -f $bundle_dir/fs.tar.xz ]] || { echo "device_bundle: no $bundle_dir/fs.tar.xz; run 'pack' here first" >&2; exit 1; }
    rm -rf "$prefix" && mkdir -p "$prefix"
    tar -C "$prefix" -xJf "$bundle_dir/fs.tar.xz"
    # fusermount3 unmounts the benchmarks' FUSE mounts; they call it by name.
    ln -sf "$prefix/bin/fusermount3" /usr/local/bin/fusermount3
    ln -sf "$prefix/bin/fio" /usr/local/bin/fio
    ;;
  *)
    echo "usage: bench/fs/device_bundle.sh pack [build-dir] | unpack" >&2
    exit 2
    ;;
esac
