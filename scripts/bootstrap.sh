#!/usr/bin/env bash
# Installs every Debian and PyPI package that the build, the demo and the tests need.
# Idempotent: when nothing is missing it only checks (about a second) and prints nothing.
# On a machine that reaches no registry (the GPU machine), it installs the Debian packages from
# .deps/debs when present (see scripts/device_deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

# Programs, as "command:package". Checked by command, so a cmake or ninja from PyPI also counts.
apt_programs=(
  "cmake:cmake" "ninja:ninja-build" "g++:g++" "make:make" "pkg-config:pkg-config" "git:git" "ccache:ccache"
  "protoc:protobuf-compiler" "grpc_cpp_plugin:protobuf-compiler-grpc" "etcd:etcd-server" "fio:fio"
  "fusermount3:fuse3"
)
# Libraries, checked as installed Debian packages.
apt_libraries=(
  libgtest-dev libgmock-dev
  libfmt-dev libspdlog-dev libcli11-dev nlohmann-json3-dev zlib1g-dev
  # fs: RPC, chunk I/O, chunk metadata, checksums, configs, FUSE.
  libgrpc++-dev libprotobuf-dev liburing-dev librocksdb-dev libisal-dev libtomlplusplus-dev libfuse3-dev
)
# Packages only the fs component needs: a machine that cannot install them (the GPU machine, offline)
# goes on with FF_ALLOW_MISSING=1, and CMake leaves fs out there.
fs_packages=(
  protobuf-compiler protobuf-compiler-grpc etcd-server fio fuse3
  libgrpc++-dev libprotobuf-dev liburing-dev librocksdb-dev libisal-dev libtomlplusplus-dev libfuse3-dev
)
# Optional programs: the build works without them (ccache only speeds rebuilds up).
optional_programs=(ccache)
# PyPI packages, as "import_name:requirement".
pip_packages=(
  "nanobind:nanobind>=2.0"
  "scikit_build_core:scikit-build-core>=0.10"
  "numpy:numpy"
  "pytest:pytest"
  "duckdb:duckdb"
  "pyarrow:pyarrow"
  "pandas:pandas"
  "cloudpickle:cloudpickle"
  "ray:ray"
  "cutlass_library:nvidia-cutlass"
)

python="${PYTHON:-python3}"
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi

find_missing_apt() {
  missing_apt=()
  for entry in "${apt_programs[@]}"; do
    command -v "${entry%%:*}" >/dev/null 2>&1 || missing_apt+=("${entry#*:}")
  done
  for package in "${apt_libraries[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing_apt+=("$package")
  done
}

only_optional_missing() {
  for package in "${missing_apt[@]}"; do
    local optional=0
    for program in "${optional_programs[@]}"; do [[ $package == "$program" ]] && optional=1; done
    if [[ ${FF_ALLOW_MISSING:-0} == 1 ]]; then
      for fs_package in "${fs_packages[@]}"; do [[ $package == "$fs_package" ]] && optional=1; done
    fi
    ((optional)) || return 1
  done
  return 0
}

find_missing_apt
if ((${#missing_apt[@]})); then
  echo "bootstrap: installing Debian packages: ${missing_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Update the package lists at most once per boot: an install on a fresh image needs them.
  stamp=/tmp/.fireflyer-apt-updated
  updated=1
  if [[ ! -f $stamp ]]; then
    if "${sudo_cmd[@]}" apt-get update -qq >/dev/null 2>&1; then touch "$stamp"; else updated=0; fi
  fi
  if ((updated)) && "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing_apt[@]}" >/dev/null 2>&1; then
    :
  elif [[ -d .deps/debs ]]; then
    echo "bootstrap: no package registry reachable; installing from .deps/debs"
    "${sudo_cmd[@]}" bash scripts/device_deps.sh install
  elif ((updated)); then
    # Re-run loudly so the failure is visible.
    "${sudo_cmd[@]}" apt-get install -y --no-install-recommends "${missing_apt[@]}"
  else
    echo "bootstrap: cannot reach a package registry and .deps/debs is absent; missing: ${missing_apt[*]}" >&2
    exit 1
  fi
  find_missing_apt
  if ((${#missing_apt[@]})) && ! only_optional_missing; then
    echo "bootstrap: still missing after install: ${missing_apt[*]}" >&2
    exit 1
  fi
fi

missing_pip=()
for entry in "${pip_packages[@]}"; do
  module="${entry%%:*}"
  if ! "$python" -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('$module') else 1)" 2>/dev/null; then
    missing_pip+=("${entry#*:}")
  fi
done
if ((${#missing_pip[@]})); then
  echo "bootstrap: installing Python packages: ${missing_pip[*]}"
  if ! "$python" -m pip install -q --disable-pip-version-check --root-user-action=ignore "${missing_pip[@]}"; then
    # On a machine that reaches no registry (the GPU machine) FF_ALLOW_MISSING=1 lets the build and the
    # tests that need none of these go on; tests that need one skip or fail loudly.
    if [[ ${FF_ALLOW_MISSING:-0} == 1 ]]; then
      echo "bootstrap: warning: could not install ${missing_pip[*]} (FF_ALLOW_MISSING=1, going on)" >&2
    else
      echo "bootstrap: could not install Python packages: ${missing_pip[*]}" >&2
      exit 1
    fi
  fi
fi
