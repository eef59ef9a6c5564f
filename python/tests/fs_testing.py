"""What the fireflyer.fs test modules (test_fs_client, test_fs_kvcache, test_fs_usrbio) share: the skips
for a build without fs, and a started LocalCluster (ff-mgmtd + ff-storage processes) for a module.

    @pytest.fixture(scope="module")
    def cluster(build_dir):
        with fs_testing.local_cluster(build_dir) as c:
            yield c
"""

from __future__ import annotations

import contextlib
import pathlib
import sys
from typing import Iterator

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_fs_support import LocalCluster  # noqa: E402

from fireflyer import fs  # noqa: E402

CLUSTER_TOOLS = ("ff-mgmtd", "ff-storage", "ff-admin")


def require_fs() -> None:
    """Skips the test when the fireflyer._fs extension is not built."""
    if not fs.available():
        pytest.skip("fireflyer._fs is not built (fs needs its libraries: FF_BUILD_FS)")


def require_tools(build_dir: pathlib.Path, tools: tuple[str, ...] = CLUSTER_TOOLS) -> pathlib.Path:
    """The build's bin directory; skips the test when one of `tools` is not built there."""
    bin_dir = build_dir / "bin"
    for tool in tools:
        if not (bin_dir / tool).exists():
            pytest.skip(f"{tool} is not built in {bin_dir}")
    return bin_dir


@contextlib.contextmanager
def local_cluster(build_dir: pathlib.Path, nodes: int = 3, targets_per_node: int = 2) -> Iterator[LocalCluster]:
    """A started LocalCluster (chain table at replication 3, buffered I/O), stopped on exit; its logs
    are printed when it does not start. Skips where fs or the tools are not built."""
    require_fs()
    bin_dir = require_tools(build_dir)
    with LocalCluster(bin_dir, nodes=nodes, targets_per_node=targets_per_node, heartbeat_timeout_s=10.0,
                      direct_io=False) as cluster:
        try:
            cluster.start()
        except BaseException:
            print(cluster.logs())
            raise
        yield cluster
