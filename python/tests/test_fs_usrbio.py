"""fireflyer._fs.usrbio: shared-memory I/O rings from Python (docs/fs-usrbio.md).

Without a server: the Iov's numpy view is shared memory, ring limits and timeouts raise the right
exceptions. With a server: an in-process RingServer over a fireflyer.fs Client on a real local cluster
(ff-mgmtd + 3 ff-storage), and, where ff-fuse is built, FUSE works here and ff-fuse serves the
.ff/usrbio directory, a ring registered with the mount and served by the ff-fuse daemon."""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import fs_testing  # noqa: E402
from test_fs_support import LocalCluster, fuse_unavailable_reason  # noqa: E402

from fireflyer import fs  # noqa: E402

CHUNK = 256 << 10


def usrbio():
    fs_testing.require_fs()
    from fireflyer import _fs

    if not hasattr(_fs, "usrbio"):
        pytest.skip("this build of fireflyer._fs has no usrbio submodule")
    return _fs.usrbio


def test_fireflyer_fs_exports_usrbio() -> None:
    """fireflyer.fs.usrbio is the extension's ring module (Iov, Ior, RingServer)."""
    rings = usrbio()
    assert fs.usrbio is rings
    assert "usrbio" in fs.__all__
    for name in ("Iov", "Ior", "RingServer"):
        assert hasattr(fs.usrbio, name), name


_counter = [0]


def unique(what: str) -> str:
    _counter[0] += 1
    return f"py{os.getpid()}-{what}-{_counter[0]}"


def test_iov_is_shared_memory_with_a_numpy_view() -> None:
    u = usrbio()
    name = unique("iov")
    iov = u.Iov(name, 1 << 20)
    try:
        assert iov.path == f"/dev/shm/ff-iov-{name}"
        view = iov.array()
        assert view.dtype == np.uint8 and view.shape == (1 << 20,)
        view[:5] = np.frombuffer(b"hello", dtype=np.uint8)
        other = u.Iov.open(name)  # a second mapping of the same pages
        assert bytes(other.array()[:5]) == b"hello"
        other.close()
        with pytest.raises(FileExistsError):
            u.Iov(name, 4096)
    finally:
        iov.close()
    assert not os.path.exists(f"/dev/shm/ff-iov-{name}")
    with pytest.raises(ValueError, match="bad/name"):
        u.Iov("bad/name", 4096)


def test_ring_limits_and_timeouts_without_server() -> None:
    u = usrbio()
    name = unique("ring")
    iov = u.Iov(name, 1 << 16)
    ior = u.Ior(name, iov, entries=4)
    try:
        with pytest.raises(ValueError):
            u.Ior(unique("x"), iov, entries=3)
        with pytest.raises(ValueError, match="io_depth=8"):
            u.Ior(unique("x"), iov, entries=4, io_depth=8)
        with pytest.raises(ValueError, match="io_timeout_ms=-1"):
            u.Ior(unique("x"), iov, entries=4, io_depth=2, io_timeout_ms=-1)
        u.Ior(unique("x"), iov, entries=4, io_depth=-4, io_timeout_ms=10).close()
        with pytest.raises(ValueError, match="outside"):
            ior.prep_read(5, 0, 100, (1 << 16) - 10)
        for i in range(4):
            ior.prep_read(5, 0, 16, 0, i)
        with pytest.raises(BlockingIOError):
            ior.prep_read(5, 0, 16, 0, 9)
        assert ior.submit() == 4
        with pytest.raises(TimeoutError, match="never beat"):
            ior.wait(1, timeout_ms=100)
        assert ior.wait(0, timeout_ms=0) == []
        assert ior.server_status()["state"].startswith("none")
    finally:
        ior.close()
        iov.close()


@pytest.fixture(scope="module")
def cluster(build_dir: pathlib.Path):
    usrbio()
    with fs_testing.local_cluster(build_dir) as c:
        yield c


def test_in_process_ring_server_over_the_cluster(cluster: LocalCluster) -> None:
    u = usrbio()
    rng = np.random.default_rng(7)
    data = rng.integers(0, 256, size=3 * CHUNK + 1234, dtype=np.uint8)
    with fs.Client(cluster.mgmtd_address, meta_memory=True, chunk_size=CHUNK) as client:
        with client.open("/data.bin", "w") as f:
            f.write(data)
        ino = client.stat("/data.bin").st_ino
        name = unique("served")
        block = 100_000  # unaligned: reads cross chunk boundaries
        count = (len(data) + block - 1) // block
        iov = u.Iov(name, count * block + block)
        ior = u.Ior(name, iov, entries=64)
        server = u.RingServer(client._native, name)
        try:
            for i in range(count):
                ior.prep_read(ino, i * block, block, i * block, i)
            assert ior.submit() == count  # one doorbell
            done = []
            while len(done) < count:
                done += ior.wait(1, timeout_ms=30_000)
            results = dict((user, res) for res, user in done)
            assert results[count - 1] == len(data) - (count - 1) * block  # short read at the end
            assert all(results[i] == block for i in range(count - 1))
            assert np.array_equal(iov.array()[: len(data)], data)
            stats = server.stats()
            assert stats["max_batch_entries"] == count and stats["bytes_read"] == len(data)

            # A write from the Iov, then an unknown file: per-entry results, the ring goes on.
            client.open("/out.bin", "w").close()
            out_ino = client.stat("/out.bin").st_ino
            iov.array()[:1000] = 42
            ior.prep_write(out_ino, 10, 1000, 0, 1)
            ior.prep_read(987654321, 0, 10, 0, 2)
            ior.prep_close(out_ino, 3)
            ior.submit()
            got = {}
            while len(got) < 3:
                got.update((user, res) for res, user in ior.wait(1, timeout_ms=30_000))
            assert got[1] == 1000 and got[2] == -9 and got[3] == 0  # -EBADF for the unknown inode
            with client.open("/out.bin") as f:
                back = f.read()
            assert back[:10] == bytes(10) and back[10:] == bytes([42]) * 1000
        finally:
            server.stop()
            assert ior.server_status()["state"] == "detached"
            ior.close()
            iov.close()


@contextlib.contextmanager
def ring_serving_mount(cluster: LocalCluster, build_dir: pathlib.Path, tmp_path: pathlib.Path):
    """An ff-fuse mount (embedded meta) that serves .ff/usrbio, unmounted afterwards; skips the test where FUSE,
    ff-fuse or its usrbio registry is missing."""
    u = usrbio()
    reason = fuse_unavailable_reason()
    if reason:
        pytest.skip(f"FUSE is not usable here: {reason}")
    if not (build_dir / "bin" / "ff-fuse").exists():
        pytest.skip("ff-fuse is not built")
    mount = cluster.start_fuse(tmp_path / "mnt", meta="embedded")
    try:
        if not os.path.isdir(os.path.join(mount, u.VIRTUAL_DIR)):
            pytest.skip(f"this ff-fuse does not serve {u.VIRTUAL_DIR} (usrbio registry not wired in)")
        yield mount
    finally:
        cluster.unmount()


def test_ring_served_by_ff_fuse(cluster: LocalCluster, build_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    u = usrbio()
    with ring_serving_mount(cluster, build_dir, tmp_path) as mount:
        payload = np.arange(5 * CHUNK, dtype=np.uint32).view(np.uint8)
        with open(os.path.join(mount, "f.bin"), "wb") as f:
            f.write(payload.tobytes())
        name = unique("fuse")
        iov = u.Iov(name, len(payload))
        ior = u.Ior(name, iov, entries=256)
        try:
            ior.register_with_mount(str(mount))
            assert name in os.listdir(os.path.join(mount, u.VIRTUAL_DIR))
            fd = os.open(os.path.join(mount, "f.bin"), os.O_RDONLY)
            try:
                file_id = u.register_fd(fd, str(mount))
                block = 1 << 20
                n = len(payload) // block
                for i in range(n):
                    ior.prep_read(file_id, i * block, block, i * block, i)
                ior.submit()
                done = []
                while len(done) < n:
                    done += ior.wait(1, timeout_ms=30_000)
                assert sorted(res for res, _ in done) == [block] * n
                assert np.array_equal(iov.array(), payload)
            finally:
                os.close(fd)
            ior.unregister_from_mount()
            assert name not in os.listdir(os.path.join(mount, u.VIRTUAL_DIR))
        finally:
            ior.close()
            iov.close()


def test_ring_writes_reach_readers_of_the_mount(cluster: LocalCluster, build_dir: pathlib.Path,
                                               tmp_path: pathlib.Path) -> None:
    # A file open through the mount keeps pages in the kernel's cache; a write through a ring served by the
    # same ff-fuse must not leave that cache stale (ff-fuse invalidates the written range).
    u = usrbio()
    with ring_serving_mount(cluster, build_dir, tmp_path) as mount:
        path = os.path.join(mount, "coherent.bin")
        old = bytes([1]) * (1 << 16)
        with open(path, "wb") as f:
            f.write(old)
        name = unique("coh")
        iov = u.Iov(name, 1 << 16)
        ior = u.Ior(name, iov, entries=8)
        fd = os.open(path, os.O_RDWR)
        try:
            ior.register_with_mount(str(mount))
            assert os.pread(fd, 1 << 16, 0) == old  # now in the kernel's page cache
            iov.array()[:] = 7
            file_id = u.register_fd(fd, str(mount))
            ior.prep_write(file_id, 4096, 8192, 4096, 1)
            ior.submit()
            [(result, user_data)] = ior.wait(1, timeout_ms=30_000)
            assert (result, user_data) == (8192, 1)
            expected = old[:4096] + bytes([7]) * 8192 + old[12288:]
            deadline = time.monotonic() + 10
            seen = os.pread(fd, 1 << 16, 0)
            while seen != expected and time.monotonic() < deadline:  # the invalidation is asynchronous
                time.sleep(0.05)
                seen = os.pread(fd, 1 << 16, 0)
            assert seen == expected, "the open file still shows the bytes from before the ring's write"
            ior.unregister_from_mount()
        finally:
            os.close(fd)
            ior.close()
            iov.close()


CLOSE_WITH_SERVERS_RUNNING = r"""
import sys
import numpy as np
from fireflyer import fs
from fireflyer._fs import usrbio as u

mgmtd, prefix, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = np.arange(1 << 20, dtype=np.uint8)
for r in range(rounds):
    client = fs.Client(mgmtd, meta_memory=True, chunk_size=64 << 10)
    with client.open("/f.bin", "w") as f:
        f.write(data)
    ino = client.stat("/f.bin").st_ino
    name = f"{prefix}-{r}"
    iov = u.Iov(name, len(data))
    ior = u.Ior(name, iov, entries=64)
    servers = [u.RingServer(client._native, name)]
    for i in range(16):
        ior.prep_read(ino, i << 16, 1 << 16, i << 16, i)
    ior.submit()
    client.close()  # with the server running and (likely) inside its batch: it is stopped first
    assert not servers[0].running, "closing the client must stop its ring servers"
    assert ior.server_status()["state"] == "detached", ior.server_status()
    done = []
    try:
        while len(done) < 16:
            done += ior.wait(1, timeout_ms=5000)
    except BrokenPipeError:
        pass  # the server stopped before taking (some of) the entries
    assert all(res == 1 << 16 for res, _ in done), done
    servers[0].stop()  # a second stop is harmless
    ior.close()
    iov.close()
print("ok")
"""


def test_closing_the_client_stops_its_ring_servers(cluster: LocalCluster) -> None:
    # Before the fix, closing a Client whose RingServer still ran destroyed the FileClient under the
    # server's thread. A child process, so that a crash fails this test instead of killing pytest.
    usrbio()
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(fs.__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-c", CLOSE_WITH_SERVERS_RUNNING, cluster.mgmtd_address, unique("close"),
                           "4"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode, proc.stdout, proc.stderr[-3000:])
