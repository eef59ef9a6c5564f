"""ff-fuse through a real mount: a local cluster (ff-mgmtd, 3 ff-storage x 2 targets at replication 3, ff-meta when
built, else metadata inside ff-fuse on RocksDB) with ff-fuse mounted, exercised with ordinary system calls.
Skips when fs is not built or FUSE is unavailable. FF_FUSE_BIG_MB sets the size of the large-file test (default
1024: the issue's 1 GiB)."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_fs_support import LocalCluster, fuse_unavailable_reason, is_mounted  # noqa: E402

MiB = 1 << 20


@pytest.fixture(scope="module")
def bin_dir(build_dir: pathlib.Path) -> pathlib.Path:
    path = build_dir / "bin"
    for tool in ("ff-mgmtd", "ff-storage", "ff-admin", "ff-fuse"):
        if not (path / tool).exists():
            pytest.skip(f"{tool} is not built in {path} (fs needs its libraries: FF_BUILD_FS)")
    reason = fuse_unavailable_reason()
    if reason:
        pytest.skip(f"FUSE is unavailable: {reason}")
    return path


@pytest.fixture(scope="module")
def cluster(bin_dir: pathlib.Path):
    with LocalCluster(bin_dir, nodes=3, targets_per_node=2, heartbeat_timeout_s=10, stats_interval_s=30) as c:
        try:
            c.start_all()
            yield c
        except BaseException:
            print(c.logs())
            raise


@pytest.fixture
def mnt(cluster: LocalCluster, request) -> pathlib.Path:
    """A fresh directory on the mount for each test."""
    path = cluster.mounts["fuse"] / request.node.name
    path.mkdir()
    return path


def pattern(seed: int, index: int, size: int = MiB) -> bytes:
    """Deterministic block `index` of stream `seed` (unique per block, cheap to make)."""
    head = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return (head * (size // len(head) + 1))[:size]


# ---------------------------------------------------------------------------------------------------- basics
def test_create_read_write_truncate(mnt: pathlib.Path) -> None:
    path = mnt / "a.bin"
    data = os.urandom(3 * MiB + 12345)
    path.write_bytes(data)
    assert path.stat().st_size == len(data)
    assert path.read_bytes() == data
    # Overwrite in the middle, across a 1 MiB boundary.
    with open(path, "r+b") as f:
        f.seek(MiB - 100)
        f.write(b"x" * 200)
    expected = data[:MiB - 100] + b"x" * 200 + data[MiB + 100:]
    assert path.read_bytes() == expected
    # Shrink, then grow: the grown part reads as zeros.
    os.truncate(path, 1000)
    assert path.stat().st_size == 1000
    assert path.read_bytes() == expected[:1000]
    os.truncate(path, 5000)
    assert path.read_bytes() == expected[:1000] + bytes(4000)
    # O_TRUNC on open.
    with open(path, "wb") as f:
        f.write(b"new")
    assert path.read_bytes() == b"new"
    # Exclusive create of an existing name.
    with pytest.raises(FileExistsError):
        os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    # Times and modes; fstat of an open file sees a chmod made after the open, and its own writes.
    os.utime(path, ns=(1_000_000_000, 2_000_000_000))
    fd = os.open(path, os.O_RDWR)
    os.chmod(path, 0o640)
    os.pwrite(fd, b"four", 3)
    st = os.fstat(fd)
    os.close(fd)
    assert (st.st_mode & 0o7777, st.st_size) == (0o640, 7)
    os.utime(path, ns=(1_000_000_000, 2_000_000_000))
    st = path.stat()
    assert (st.st_atime_ns, st.st_mtime_ns, st.st_mode & 0o7777) == (1_000_000_000, 2_000_000_000, 0o640)


def test_symlink_hardlink_and_errors(mnt: pathlib.Path) -> None:
    (mnt / "f").write_bytes(b"hello")
    os.symlink("f", mnt / "s")
    assert os.readlink(mnt / "s") == "f"
    assert (mnt / "s").read_bytes() == b"hello"
    os.link(mnt / "f", mnt / "h")
    assert (mnt / "f").stat().st_nlink == 2
    os.unlink(mnt / "f")
    assert (mnt / "h").read_bytes() == b"hello" and (mnt / "h").stat().st_nlink == 1
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / "f")
    (mnt / "d").mkdir()
    (mnt / "d" / "x").write_bytes(b"")
    with pytest.raises(OSError) as info:
        os.rmdir(mnt / "d")
    assert info.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as info:
        (mnt / ("n" * 256)).write_bytes(b"")
    assert info.value.errno == errno.ENAMETOOLONG
    with pytest.raises(NotADirectoryError):
        os.stat(mnt / "h" / "x")
    with pytest.raises(IsADirectoryError):
        os.unlink(mnt / "d")


def renameat2(old: pathlib.Path, new: pathlib.Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, str(old).encode(), at_fdcwd, str(new).encode(), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(new))


def test_rename(mnt: pathlib.Path) -> None:
    (mnt / "a").write_bytes(b"A")
    (mnt / "b").write_bytes(b"B")
    os.rename(mnt / "a", mnt / "c")
    assert not (mnt / "a").exists() and (mnt / "c").read_bytes() == b"A"
    # Over an existing file: replaced atomically.
    os.rename(mnt / "c", mnt / "b")
    assert (mnt / "b").read_bytes() == b"A" and not (mnt / "c").exists()
    # RENAME_NOREPLACE refuses an existing destination.
    (mnt / "z").write_bytes(b"Z")
    with pytest.raises(OSError) as info:
        renameat2(mnt / "z", mnt / "b", 1)
    assert info.value.errno == errno.EEXIST
    renameat2(mnt / "z", mnt / "y", 1)
    assert (mnt / "y").read_bytes() == b"Z"
    # Directories with contents, into another directory; never into their own subtree.
    (mnt / "d1" / "sub").mkdir(parents=True)
    (mnt / "d1" / "sub" / "f").write_bytes(b"deep")
    (mnt / "d2").mkdir()
    os.rename(mnt / "d1", mnt / "d2" / "moved")
    assert (mnt / "d2" / "moved" / "sub" / "f").read_bytes() == b"deep"
    assert not (mnt / "d1").exists()
    with pytest.raises(OSError) as info:
        os.rename(mnt / "d2", mnt / "d2" / "moved" / "inside")
    assert info.value.errno == errno.EINVAL
    # A directory over an empty directory replaces it; over a non-empty one fails.
    (mnt / "empty").mkdir()
    os.rename(mnt / "d2", mnt / "empty")
    assert (mnt / "empty" / "moved" / "sub" / "f").read_bytes() == b"deep"
    (mnt / "other").mkdir()
    with pytest.raises(OSError) as info:
        os.rename(mnt / "other", mnt / "empty")
    assert info.value.errno in (errno.ENOTEMPTY, errno.EEXIST)


RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4


def test_rename_exchange(mnt: pathlib.Path) -> None:
    (mnt / "a").write_bytes(b"A")
    (mnt / "b").write_bytes(b"B")
    renameat2(mnt / "a", mnt / "b", RENAME_EXCHANGE)
    assert (mnt / "a").read_bytes() == b"B" and (mnt / "b").read_bytes() == b"A"
    # A directory with contents and a file, across directories: link counts and ".." follow.
    (mnt / "d" / "sub").mkdir(parents=True)
    (mnt / "d" / "sub" / "f").write_bytes(b"deep")
    (mnt / "e").mkdir()
    (mnt / "e" / "file").write_bytes(b"F")
    nlink_d, nlink_e = (mnt / "d").stat().st_nlink, (mnt / "e").stat().st_nlink
    renameat2(mnt / "d" / "sub", mnt / "e" / "file", RENAME_EXCHANGE)
    assert (mnt / "e" / "file" / "f").read_bytes() == b"deep"
    assert (mnt / "d" / "sub").read_bytes() == b"F"
    assert (mnt / "d").stat().st_nlink == nlink_d - 1 and (mnt / "e").stat().st_nlink == nlink_e + 1
    assert os.stat(mnt / "e" / "file" / "..").st_ino == (mnt / "e").stat().st_ino
    # Two directories: each keeps its contents under the other's name.
    (mnt / "x").mkdir()
    (mnt / "x" / "in-x").write_bytes(b"x")
    renameat2(mnt / "x", mnt / "e" / "file", RENAME_EXCHANGE)
    assert (mnt / "x" / "f").read_bytes() == b"deep" and (mnt / "e" / "file" / "in-x").read_bytes() == b"x"
    # Refused: into its own subtree (EINVAL), a missing name (ENOENT), RENAME_WHITEOUT (EINVAL, or EPERM when the
    # kernel refuses it first: it needs CAP_MKNOD).
    for old, new, flags, expected in ((mnt / "x", mnt / "x" / "f", RENAME_EXCHANGE, (errno.EINVAL,)),
                                      (mnt / "missing", mnt / "a", RENAME_EXCHANGE, (errno.ENOENT,)),
                                      (mnt / "a", mnt / "w", RENAME_WHITEOUT, (errno.EINVAL, errno.EPERM))):
        with pytest.raises(OSError) as info:
            renameat2(old, new, flags)
        assert info.value.errno in expected, (old, new, flags, info.value)
    # Permissions as for rename: another user may not swap root's entries.
    os.chmod(mnt, 0o755)
    assert _as_user(65534, 65534, lambda: renameat2(mnt / "a", mnt / "b", RENAME_EXCHANGE)) == errno.EACCES
    assert (mnt / "a").read_bytes() == b"B"


def test_extended_attributes(mnt: pathlib.Path) -> None:
    path = mnt / "f"
    path.write_bytes(b"data")
    os.setxattr(path, "user.color", b"blue", os.XATTR_CREATE)
    with pytest.raises(OSError) as info:
        os.setxattr(path, "user.color", b"red", os.XATTR_CREATE)
    assert info.value.errno == errno.EEXIST
    with pytest.raises(OSError) as info:
        os.setxattr(path, "user.absent", b"x", os.XATTR_REPLACE)
    assert info.value.errno == errno.ENODATA
    os.setxattr(path, "user.color", b"red", os.XATTR_REPLACE)
    os.setxattr(path, "user.bin", bytes(range(256)))
    assert os.getxattr(path, "user.color") == b"red"
    assert os.getxattr(path, "user.bin") == bytes(range(256))
    assert sorted(os.listxattr(path)) == ["user.bin", "user.color"]
    with pytest.raises(OSError) as info:
        os.getxattr(path, "user.absent")
    assert info.value.errno == errno.ENODATA
    # 64 KiB values (Python asks with a growing buffer: the size rules are exercised), E2BIG beyond, long names ERANGE.
    big = os.urandom(64 * 1024)
    os.setxattr(path, "user.big", big)
    assert os.getxattr(path, "user.big") == big
    with pytest.raises(OSError) as info:
        os.setxattr(path, "user.big", big + b"x")
    assert info.value.errno == errno.E2BIG
    with pytest.raises(OSError) as info:
        os.setxattr(path, "user." + "n" * 251, b"v")
    assert info.value.errno == errno.ERANGE
    # Namespaces: system.* unsupported; trusted.* for root only (here we are root), hidden from others.
    with pytest.raises(OSError) as info:
        os.setxattr(path, "system.other", b"v")
    assert info.value.errno in (errno.EOPNOTSUPP, errno.ENOTSUP)
    os.setxattr(path, "trusted.t", b"t")
    assert os.getxattr(path, "trusted.t") == b"t"
    os.chmod(path, 0o644)
    assert _as_user(65534, 65534, lambda: os.setxattr(path, "user.nobody", b"v")) == errno.EACCES
    assert _as_user(65534, 65534, lambda: os.setxattr(path, "trusted.x", b"v")) == errno.EPERM
    assert _as_user(65534, 65534, lambda: os.getxattr(path, "user.color")) is None
    assert _as_user(65534, 65534, lambda: os.getxattr(path, "trusted.t")) == errno.ENODATA
    # They stay with the file through rename and link, and leave with removexattr.
    os.rename(path, mnt / "g")
    os.link(mnt / "g", mnt / "h")
    assert os.getxattr(mnt / "h", "user.color") == b"red"
    os.removexattr(mnt / "h", "user.color")
    with pytest.raises(OSError) as info:
        os.removexattr(mnt / "g", "user.color")
    assert info.value.errno == errno.ENODATA
    assert "user.color" not in os.listxattr(mnt / "g")
    # Directories carry them too.
    os.setxattr(mnt, "user.dir", b"d")
    assert os.getxattr(mnt, "user.dir") == b"d"


def test_posix_fallocate_and_directory_times(mnt: pathlib.Path) -> None:
    path = mnt / "f"
    with open(path, "wb") as f:
        f.write(b"abc")
        f.flush()
        os.posix_fallocate(f.fileno(), 0, 3 * MiB + 5)
        assert os.fstat(f.fileno()).st_size == 3 * MiB + 5
        os.posix_fallocate(f.fileno(), 10, 100)  # inside: nothing changes
        assert os.fstat(f.fileno()).st_size == 3 * MiB + 5
    data = path.read_bytes()
    assert len(data) == 3 * MiB + 5 and data[:3] == b"abc" and data[3:].count(0) == len(data) - 3
    with open(path, "r+b") as f:
        with pytest.raises(OSError) as info:
            _fallocate(f.fileno(), 0x02 | 0x01, 0, 10)  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        assert info.value.errno == errno.EOPNOTSUPP
    # A directory's mtime follows changes of its entries (ls -lt, make).
    times = []
    for change in (lambda: (mnt / "new").write_bytes(b""), lambda: os.rename(mnt / "new", mnt / "renamed"),
                   lambda: os.unlink(mnt / "renamed"), lambda: (mnt / "sub").mkdir(), lambda: (mnt / "sub").rmdir()):
        times.append(os.stat(mnt).st_mtime_ns)
        time.sleep(0.002)
        change()
    times.append(os.stat(mnt).st_mtime_ns)
    assert all(later > earlier for earlier, later in zip(times, times[1:])), times


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.fallocate(fd, mode, ctypes.c_long(offset), ctypes.c_long(length)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


# ---------------------------------------------------------------------------------------------------- listing
class _Dir:
    """opendir/readdir/telldir/seekdir through libc (Python has no telldir)."""

    class Dirent(ctypes.Structure):
        _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64), ("d_reclen", ctypes.c_ushort),
                    ("d_type", ctypes.c_ubyte), ("d_name", ctypes.c_char * 256)]

    def __init__(self, path: pathlib.Path):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.opendir.restype = ctypes.c_void_p
        self.libc.readdir64.restype = ctypes.POINTER(self.Dirent)
        self.libc.readdir64.argtypes = [ctypes.c_void_p]
        self.libc.telldir.restype = ctypes.c_long
        self.libc.telldir.argtypes = [ctypes.c_void_p]
        self.libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
        self.libc.closedir.argtypes = [ctypes.c_void_p]
        self.handle = self.libc.opendir(str(path).encode())
        assert self.handle, os.strerror(ctypes.get_errno())

    def read(self, n: int | None = None) -> list[str]:
        names = []
        while n is None or len(names) < n:
            entry = self.libc.readdir64(self.handle)
            if not entry:
                break
            name = entry.contents.d_name.decode()
            if name not in (".", ".."):
                names.append(name)
        return names

    def tell(self) -> int:
        return self.libc.telldir(self.handle)

    def seek(self, position: int) -> None:
        self.libc.seekdir(self.handle, position)

    def close(self) -> None:
        self.libc.closedir(self.handle)


def test_readdir_many_entries_and_offsets(mnt: pathlib.Path) -> None:
    count = 600
    names = [f"entry-{i:05d}-{'x' * (i % 40)}" for i in range(count)]
    for name in names:
        os.mknod(mnt / name, 0o644)
    assert sorted(os.listdir(mnt)) == sorted(names)
    # Offsets: remember a position part-way, read on, seek back; the same names follow.
    d = _Dir(mnt)
    first = d.read(250)
    position = d.tell()
    rest = d.read()
    d.seek(position)
    again = d.read()
    d.close()
    assert again == rest
    assert sorted(first + rest) == sorted(names)
    # Removing entries during a listing: every entry that stays is listed exactly once.
    d = _Dir(mnt)
    seen = d.read(100)
    removed = {n for n in names[::3] if n not in seen}
    for name in removed:
        os.unlink(mnt / name)
    seen += d.read()
    d.close()
    assert len(seen) == len(set(seen)), "an entry was listed twice"
    assert set(names) - removed <= set(seen)
    # ls -l style listing (scandir + stat) sees the attributes.
    with os.scandir(mnt) as it:
        sizes = {e.name: e.stat().st_size for e in it}
    assert len(sizes) == count - len(removed) and set(sizes.values()) == {0}


# ---------------------------------------------------------------------------------------------------- permissions
def _as_user(uid: int, gid: int, action) -> int | None:
    """Runs action() in a forked child with uid/gid; returns the errno it raised, or None."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            action()
        except OSError as e:
            code = e.errno
        except BaseException:
            code = 255
        os.write(write_end, code.to_bytes(2, "little"))
        os._exit(0)
    os.close(write_end)
    result = os.read(read_end, 2)
    os.close(read_end)
    os.waitpid(pid, 0)
    code = int.from_bytes(result, "little")
    return None if code == 0 else code


def test_permissions_as_another_user(mnt: pathlib.Path) -> None:
    nobody = 65534
    os.chmod(mnt, 0o755)
    secret = mnt / "secret"
    secret.write_bytes(b"s")
    os.chmod(secret, 0o600)
    public = mnt / "public"
    public.write_bytes(b"p")
    os.chmod(public, 0o644)
    shared = mnt / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    assert _as_user(nobody, nobody, lambda: secret.read_bytes()) == errno.EACCES
    assert _as_user(nobody, nobody, lambda: public.read_bytes()) is None
    assert _as_user(nobody, nobody, lambda: public.write_bytes(b"no")) == errno.EACCES
    assert _as_user(nobody, nobody, lambda: (mnt / "new").write_bytes(b"x")) == errno.EACCES
    assert _as_user(nobody, nobody, lambda: os.chmod(public, 0o777)) == errno.EPERM
    assert _as_user(nobody, nobody, lambda: (shared / "mine").write_bytes(b"ok")) is None
    st = (shared / "mine").stat()
    assert (st.st_uid, st.st_gid) == (nobody, nobody)
    assert (shared / "mine").read_bytes() == b"ok"
    # Group access through the file's group.
    os.chown(secret, 0, 1234)
    os.chmod(secret, 0o640)
    assert _as_user(nobody, 1234, lambda: secret.read_bytes()) is None
    assert _as_user(nobody, nobody, lambda: secret.read_bytes()) == errno.EACCES


# ---------------------------------------------------------------------------------------------------- data
def test_large_file_streamed_checksum(mnt: pathlib.Path) -> None:
    """FF_FUSE_BIG_MB (default 1024) MiB written in 1 MiB blocks, then read back; sha256 compared, memory small."""
    size_mb = int(os.environ.get("FF_FUSE_BIG_MB", "1024"))
    path = mnt / "big.bin"
    written = hashlib.sha256()
    started = time.monotonic()
    with open(path, "wb", buffering=0) as f:
        for i in range(size_mb):
            block = pattern(7, i)
            written.update(block)
            assert f.write(block) == MiB
    write_s = time.monotonic() - started
    assert path.stat().st_size == size_mb * MiB
    read = hashlib.sha256()
    started = time.monotonic()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(MiB):
            read.update(chunk)
    read_s = time.monotonic() - started
    print(f"{size_mb} MiB through the mount: write {size_mb / write_s:.1f} MiB/s, read {size_mb / read_s:.1f} MiB/s")
    assert read.hexdigest() == written.hexdigest()
    os.unlink(path)


def test_concurrent_writers_and_readers_during_writes(mnt: pathlib.Path) -> None:
    writers, blocks = 4, 8
    errors: list[str] = []
    growing = mnt / "growing.bin"
    growing.write_bytes(b"")
    done = threading.Event()

    def writer(w: int) -> None:
        try:
            with open(mnt / f"w{w}.bin", "wb", buffering=0) as f:
                for i in range(blocks):
                    f.write(pattern(100 + w, i, 256 << 10))
        except BaseException as e:  # noqa: BLE001
            errors.append(f"writer {w}: {e!r}")

    def appender() -> None:
        try:
            with open(growing, "ab", buffering=0) as f:
                for i in range(24):
                    f.write(pattern(200, i, 64 << 10))
        except BaseException as e:  # noqa: BLE001
            errors.append(f"appender: {e!r}")
        finally:
            done.set()

    def reader() -> None:
        # Whatever a reader sees of the growing file is a prefix of what the appender writes.
        checks = 0
        try:
            while not done.is_set() or checks == 0:
                data = growing.read_bytes()
                whole = len(data) // (64 << 10)
                for i in range(whole):
                    if data[i * (64 << 10):(i + 1) * (64 << 10)] != pattern(200, i, 64 << 10):
                        errors.append(f"reader saw wrong bytes in block {i} of {len(data)}")
                        return
                checks += 1
        except BaseException as e:  # noqa: BLE001
            errors.append(f"reader: {e!r}")

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    threads += [threading.Thread(target=appender), threading.Thread(target=reader), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a thread hung"
    assert not errors, errors
    for w in range(writers):
        assert (mnt / f"w{w}.bin").read_bytes() == b"".join(pattern(100 + w, i, 256 << 10) for i in range(blocks))
    assert growing.read_bytes() == b"".join(pattern(200, i, 64 << 10) for i in range(24))


def test_unlinked_open_file_stays_readable(mnt: pathlib.Path) -> None:
    path = mnt / "ghost"
    data = os.urandom(MiB + 7)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    try:
        os.unlink(path)
        assert not path.exists()
        assert os.pread(fd, len(data) + 10, 0) == data
        os.pwrite(fd, b"more", len(data))
        assert os.pread(fd, 100, len(data) - 3) == data[-3:] + b"more"
        assert os.fstat(fd).st_size == len(data) + 4
    finally:
        os.close(fd)
    assert not path.exists()


# ---------------------------------------------------------------------------------------------------- lifecycle
def test_flow_job_on_the_mount(mnt: pathlib.Path) -> None:
    """A fireflyer.flow (smallpond) job with its inputs, its task outputs (each renamed into place) and its
    result on the mount: the same answer as pandas, and the same job run again reuses every task it finds
    there."""
    pa = pytest.importorskip("pyarrow")
    pd = pytest.importorskip("pandas")
    pytest.importorskip("duckdb")
    import numpy as np
    import pyarrow.parquet as pq

    from fireflyer import flow

    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"id": np.arange(3000), "user": rng.integers(0, 40, 3000), "amount": rng.integers(1, 100, 3000)})
    (mnt / "in").mkdir()
    inputs = []
    for part in range(2):
        path = mnt / "in" / f"part-{part}.parquet"
        pq.write_table(pa.Table.from_pandas(frame.iloc[part::2], preserve_index=False), path)
        inputs.append(str(path))

    def job(session) -> tuple[dict, list[str]]:
        grouped = session.partial_sql("select user, sum(amount) s from {0} group by user",
                                      session.read_parquet(inputs).repartition(3, hash_by="user"))
        files = grouped.write_parquet(str(mnt / "out"))
        table = pq.read_table(files).to_pandas()
        return dict(zip(table["user"].tolist(), table["s"].tolist())), files

    first = flow.init(data_root=str(mnt / "root"), num_executors=2, progress=False)
    try:
        sums, files = job(first)
        assert first.tasks_reused == 0 and first.tasks_run > 0
    finally:
        first.shutdown()
    assert sums == frame.groupby("user")["amount"].sum().to_dict()
    assert len(files) == 3 and all(pathlib.Path(f).parent == mnt / "out" for f in files)
    assert not [f for f in os.listdir(mnt / "out") if ".tmp." in f]

    second = flow.init(data_root=str(mnt / "root"), num_executors=2, progress=False)
    try:
        again, _ = job(second)
        assert second.tasks_run == 0 and second.tasks_reused == first.tasks_run
    finally:
        second.shutdown()
    assert again == sums


def test_statfs_reports_the_storage_space(cluster: LocalCluster) -> None:
    """df on the mount: the chain table's space, each (host, file system) of its targets once, over the
    replication (3). The storage servers keep their targets on the scratch directory's disk, so the mount
    shows that disk's size / 3 (before: a fixed 1 TiB)."""
    if "meta1" not in cluster.processes:
        pytest.skip("ff-meta is not built (the metadata lives in ff-fuse, without storage space)")
    disk = os.statvfs(cluster.dir)
    expected_total = disk.f_blocks * disk.f_frsize // 3
    deadline = time.monotonic() + 30  # targets report every heartbeat; ff-meta reads it at start and every 10 s
    # ff-admin shows what each target reported: the same file system, that disk.
    while True:
        targets = cluster.routing()["targets"]
        if all("capacity_bytes" in t for t in targets) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(targets) == 6 and all(t.get("capacity_bytes") == disk.f_blocks * disk.f_frsize for t in targets), targets
    assert len({t["filesystem"] for t in targets}) == 1, targets
    # Free bytes move with the disk's use (writes and chunk removals of earlier tests, the report up to
    # routing_refresh_s old): a few percent of slack, and polled like the total.
    while True:
        st = os.statvfs(cluster.mounts["fuse"])
        total, block, free = st.f_blocks * st.f_frsize, st.f_frsize, st.f_bavail * st.f_frsize
        expected_free = os.statvfs(cluster.dir).f_bavail * disk.f_frsize // 3
        total_ok = abs(total - expected_total) <= 2 * block
        free_ok = abs(free - expected_free) <= 2 * block + expected_total // 20
        if (total_ok and free_ok) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert total_ok, f"mount total {total}, disk / 3 = {expected_total}"
    assert free_ok, f"mount free {free}, disk free / 3 = {expected_free}"


def test_sigterm_unmounts_cleanly(cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    """A second ff-fuse (metadata and data in its memory): SIGTERM ends it with status 0 and no mount left."""
    mount = cluster.start_fuse(tmp_path / "m2", name="fuse-sigterm", meta="memory", data="memory")
    (mount / "x").write_bytes(b"data")
    assert (mount / "x").read_bytes() == b"data"
    process = cluster.processes["fuse-sigterm"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0, cluster.logs()
    assert not os.path.ismount(mount)
    assert not (mount / "x").exists()
    cluster.mounts.pop("fuse-sigterm", None)


def test_sigkilled_daemon_leaves_a_dead_mount_that_unmount_clears(cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    mount = cluster.start_fuse(tmp_path / "m3", name="fuse-killed", meta="memory", data="memory")
    cluster.kill("fuse-killed", signal.SIGKILL)
    assert is_mounted(mount)
    with pytest.raises(OSError) as info:
        os.listdir(mount)
    assert info.value.errno == errno.ENOTCONN
    # A new daemon refuses the dead mount with a message that says what to do.
    again = subprocess.run([str(cluster.bin / "ff-fuse"), "--mount", str(mount), "--embedded-meta", ":memory:",
                            "--memory-data"], capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "fusermount3 -u -z" in again.stdout + again.stderr
    cluster.unmount("fuse-killed")
    assert not is_mounted(mount)
    mount = cluster.start_fuse(mount, name="fuse-killed", meta="memory", data="memory")
    (mount / "x").write_bytes(b"back")
    cluster.unmount("fuse-killed")


def test_meta_killed_and_restarted_loses_nothing_acknowledged(cluster: LocalCluster, mnt: pathlib.Path) -> None:
    if "meta1" not in cluster.processes:
        pytest.skip("ff-meta is not built: metadata lives inside ff-fuse")
    acknowledged: list[tuple[str, bytes]] = []
    errors: list[str] = []
    stop = threading.Event()

    def workload() -> None:
        i = 0
        while not stop.is_set() and i < 5000:
            name = f"f{i:04d}"
            data = pattern(300, i, 4096 + i)
            try:
                with open(mnt / name, "wb") as f:
                    f.write(data)
                os.rename(mnt / name, mnt / f"done-{name}")
                acknowledged.append((f"done-{name}", data))
            except OSError as e:
                errors.append(f"{name}: {e!r}")
            i += 1

    thread = threading.Thread(target=workload)
    thread.start()
    time.sleep(1.5)
    assert thread.is_alive(), "the workload must still run when ff-meta is killed"
    before_kill = len(acknowledged)
    cluster.kill("meta1", signal.SIGKILL)
    time.sleep(1.0)
    cluster.start_meta("meta1")
    restarted = len(acknowledged)
    # The workload resumes once the client reaches the new server (RemoteMeta retries with backoff).
    deadline = time.monotonic() + 20
    while len(acknowledged) < restarted + 10 and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.1)
    stop.set()
    thread.join(timeout=90)
    assert not thread.is_alive()
    print(f"acknowledged: {before_kill} before the kill, {restarted} at the restart, {len(acknowledged)} in all")
    assert before_kill > 5 and len(acknowledged) >= restarted + 10, (before_kill, restarted, len(acknowledged), errors)
    for name, data in acknowledged:
        assert (mnt / name).read_bytes() == data, name
    # Operations during the outage waited for the restarted server instead of failing.
    assert not errors, errors[:5]


def test_usrbio_ring_registered_through_the_mount(cluster: LocalCluster, mnt: pathlib.Path) -> None:
    """A USRBIO ring of this process registered in <mount>/.ff/usrbio/ is served by ff-fuse: 8 reads of 1 MiB with
    one doorbell land in the shared buffer; a bad registration gets its errno; unregistering removes the link."""
    try:
        from fireflyer._fs import usrbio
    except ImportError as e:
        pytest.skip(f"fireflyer._fs (usrbio bindings) is not built: {e}")
    mount = cluster.mounts["fuse"]
    assert os.listdir(mount / ".ff") == ["usrbio"]
    data = os.urandom(8 * MiB)
    (mnt / "ring.bin").write_bytes(data)
    name = f"ff-fuse-test-{os.getpid()}"
    iov = usrbio.Iov(name, 16 * MiB)
    ior = usrbio.Ior(name, iov, entries=64)
    fd = os.open(mnt / "ring.bin", os.O_RDONLY)
    try:
        ior.register_with_mount(str(mount))
        assert name in os.listdir(mount / ".ff" / "usrbio")
        assert os.readlink(mount / ".ff" / "usrbio" / name) == f"/dev/shm/ff-ior-{name}"
        file = usrbio.register_fd(fd, str(mount))
        for i in range(8):
            ior.prep_read(file, i * MiB, MiB, i * MiB, i)
        assert ior.submit() == 8
        done = ior.wait(8, timeout_ms=20_000)
        assert sorted(done) == [(MiB, i) for i in range(8)]
        assert bytes(iov.array()[:8 * MiB]) == data
        ior.unregister_from_mount()
        assert name not in os.listdir(mount / ".ff" / "usrbio")
        with pytest.raises(FileNotFoundError):
            os.symlink("/dev/shm/ff-ior-nothere", mount / ".ff" / "usrbio" / "nothere")
        with pytest.raises(PermissionError):
            (mount / ".ff" / "file").write_bytes(b"")
    finally:
        os.close(fd)
        iov.close()


@pytest.mark.parametrize("kv", ["rocksdb", "etcd"])
def test_deploy_local_cluster_start_status_stop(bin_dir: pathlib.Path, tmp_path: pathlib.Path, repo_root: pathlib.Path,
                                                kv: str) -> None:
    """deploy/local-cluster: start (etcd too with --kv etcd) returns with the mount serving, status exits 0, a file
    written survives stop + start on the same directory, stop leaves nothing running or mounted."""
    import json
    import shutil

    if kv == "etcd" and (shutil.which("etcd") is None or not (bin_dir / "ff-meta").exists()):
        pytest.skip("--kv etcd needs etcd and ff-meta")
    script = repo_root / "deploy" / "local-cluster"
    directory = tmp_path / "cluster"
    common = ["--dir", str(directory), "--build-dir", str(bin_dir.parent)]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), *args, *common], capture_output=True, text=True, timeout=120)

    try:
        started = run("start", "--kv", kv)
        # The error comes first in start's stderr (the servers' log tails are printed below on failure).
        assert started.returncode == 0, started.stderr[:2500]
        state = json.loads((directory / "cluster.json").read_text())
        assert ("etcd" in state["processes"]) == (kv == "etcd")
        status = run("status")
        assert status.returncode == 0, status.stdout
        mount = pathlib.Path(state["mount"])
        (mount / "kept").write_bytes(b"across restarts")
        assert run("stop").returncode == 0
        assert not is_mounted(mount)
        assert run("status").returncode == 3
        restarted = run("start", "--kv", kv)
        assert restarted.returncode == 0, restarted.stderr[:2500]
        state = json.loads((directory / "cluster.json").read_text())
        assert (mount / "kept").read_bytes() == b"across restarts"
    except BaseException:
        for log in sorted(directory.glob("*.log")):  # shown with the failure
            print(f"== {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
        raise
    finally:
        stopped = run("stop")
    assert stopped.returncode == 0
    assert not is_mounted(mount)
    for name, p in state["processes"].items():
        try:
            cmdline = pathlib.Path(f"/proc/{p['pid']}/cmdline").read_bytes()
        except OSError:
            continue  # gone
        assert p["binary"].encode() not in cmdline, f"{name} (pid {p['pid']}) still runs after stop"
