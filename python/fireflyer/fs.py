"""fireflyer.fs: the native file client of the Fireflyer file system, and the KV cache on it.

A thin layer over the extension module ``fireflyer._fs`` (built where fs is built). See
docs/fs-client.md.

    from fireflyer import fs
    with fs.Client(mgmtd="127.0.0.1:9000", meta_db="/var/lib/ff/meta") as client:
        client.mkdir("/data")
        with client.open("/data/a.bin", "w") as f:
            f.write(b"hello")
        with client.open("/data/a.bin") as f:
            assert f.read() == b"hello"

Where metadata lives (pick one):
  * ``meta=["tcp://host:port", ...]``: ff-meta servers (RemoteMeta; ``tcp://`` for ff-meta on our TCP transport,
    a bare ``host:port`` for gRPC); any number of processes share them.
  * ``meta_db="/path"``: an in-process metadata service on a RocksDB directory, for single-process use
    (one process per directory: RocksDB locks it). Its chains come from mgmtd's chain table 1.
  * ``meta_memory=True``: in-process and in memory, gone at close (tests).

Errors are ``OSError`` with the errno (``FileNotFoundError``, ``FileExistsError``,
``PermissionError``, ``IsADirectoryError``, ...). Reads return ``bytes`` (filled in place) or fill a
writable buffer (``readinto``: numpy arrays, bytearray, memoryview); writes take any C-contiguous
buffer without copying it first. Calls release the GIL, so threads run I/O in parallel.

``fs.usrbio`` holds the shared-memory I/O rings (``Iov``, ``Ior``, ``RingServer``; docs/fs-usrbio.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

try:
    from fireflyer import _fs
except ImportError as error:  # pragma: no cover - exercised only where fs is not built
    _fs = None
    _IMPORT_ERROR = error
else:
    _IMPORT_ERROR = None

# Shared-memory I/O rings (docs/fs-usrbio.md): Iov, Ior, RingServer; None where fs is not built.
usrbio = getattr(_fs, "usrbio", None)

__all__ = ["available", "Client", "File", "StatResult", "KVCache", "prefix_hashes", "tune_malloc_for_io_buffers",
           "usrbio"]


def available() -> bool:
    """True when the fs extension (fireflyer._fs) is built for this Python."""
    return _fs is not None


def tune_malloc_for_io_buffers(trim_bytes: int = 64 << 20, mmap_bytes: int = 32 << 20) -> bool:
    """glibc malloc settings for a process that reads and writes MiB-sized blocks (the fs servers and
    ff-fuse set them themselves): keep up to `trim_bytes` of freed memory per heap and serve blocks below
    `mmap_bytes` from the heaps, so each new read buffer is not faulted in page by page again (on a
    2-core VM, 1 MiB reads at depth 8: ~190,000 page faults/s -> ~1,000, +30% throughput). Process-wide:
    call it once, early. False, changing nothing, when the environment sets malloc thresholds
    (MALLOC_TRIM_THRESHOLD_, MALLOC_MMAP_THRESHOLD_, GLIBC_TUNABLES) or glibc rejects a value."""
    return bool(_native().tune_malloc_for_io_buffers(trim_bytes, mmap_bytes))


def _native():
    if _fs is None:
        raise ImportError(
            f"fireflyer.fs needs the extension fireflyer._fs, which is not built here ({_IMPORT_ERROR}); "
            "build with fs enabled (FF_BUILD_FS, docs/building.md)")
    return _fs


@dataclass(frozen=True)
class StatResult:
    """What meta knows of an inode (st_size is exact after close/fsync of the last writer)."""

    st_ino: int
    st_mode: int
    st_uid: int
    st_gid: int
    st_nlink: int
    st_size: int
    st_atime_ns: int
    st_mtime_ns: int
    st_ctime_ns: int
    type: str
    chunk_size: int
    chains: tuple[int, ...]

    @staticmethod
    def _from(d: dict) -> "StatResult":
        return StatResult(d["ino"], d["mode"], d["uid"], d["gid"], d["nlink"], d["size"], d["atime_ns"], d["mtime_ns"],
                          d["ctime_ns"], d["type"], d["chunk_size"], tuple(d["chains"]))


_MODES = {
    # mode: (read, write, create, exclusive, truncate, append)
    "r": (True, False, False, False, False, False),
    "r+": (True, True, False, False, False, False),
    "w": (False, True, True, False, True, False),
    "w+": (True, True, True, False, True, False),
    "x": (False, True, True, True, False, False),
    "x+": (True, True, True, True, False, False),
    "a": (False, True, True, False, False, True),
    "a+": (True, True, True, False, False, True),
}


class Client:
    """A client of one cluster: paths and metadata through meta, data straight to storage."""

    def __init__(self, mgmtd: str, meta: str | Sequence[str] | None = None, *, meta_db: str | None = None,
                 meta_memory: bool = False, chunk_size: int = 1 << 20, stripe: int = 0,
                 max_parallel_chunks: int = 16, meta_db_sync: bool = True, timeout_s: float = 30.0,
                 uid: int | None = None, gid: int | None = None, local_reads: bool = True,
                 async_closes: bool = False):
        """mgmtd: "host:port" of the cluster manager, or "host:port,host:port" for a primary and its standbys
        (calls move to the next after one is unreachable). meta / meta_db / meta_memory: see the module doc.
        chunk_size and stripe (chains per file, 0: all) apply to files created by an in-process meta.
        uid/gid: who this client acts as for permission checks (default: this process's).
        local_reads: chunks on storage targets of this host are read from their files by this process,
        checked against their CRC32C (over the network when that fails; docs/fs.md, "Local reads").
        async_closes: closing a file that was not written returns at once; the client sends such closes to meta
        in batches in the background (docs/fs-client.md, "Background closes"). Closes after writes stay
        synchronous."""
        native = _native()
        addresses = [meta] if isinstance(meta, str) else list(meta or [])
        if sum(bool(x) for x in (addresses, meta_db, meta_memory)) != 1:
            raise ValueError("give exactly one of meta (ff-meta addresses), meta_db (RocksDB directory) or meta_memory=True")
        self._native = native.Client(mgmtd, addresses, meta_db or "", bool(meta_memory), int(chunk_size), int(stripe),
                                     int(max_parallel_chunks), bool(meta_db_sync), int(timeout_s * 1000),
                                     os.getuid() if uid is None else int(uid), os.getgid() if gid is None else int(gid),
                                     bool(local_reads), bool(async_closes))

    def close_counts(self) -> dict:
        """Background closes so far (async_closes): {"queued": closes queued, "batches": batch calls sent to meta,
        "failed": closes that failed for good (logged; meta reclaims those sessions with the client's lease)}."""
        return dict(self._native.close_counts())

    def flush_closes(self, timeout_s: float = 30.0) -> None:
        """Waits until no background close is queued or in flight; TimeoutError after timeout_s."""
        self._native.flush_closes(int(timeout_s * 1000))

    def local_read_counts(self) -> dict:
        """Local reads so far: {"served": reads served from a target's file on this host, "fallbacks": local
        answers read over the network after all (a CRC differed, the file was unusable), "read_before_answer":
        of "served", bytes read while the request was on its way, "read_ahead": of those, bytes read ahead by
        a sequential reader before the read was asked for}."""
        return dict(self._native.local_read_counts())

    # ---- lifetime
    def close(self) -> None:
        """Closes open files (best effort) and the connections. KVCache objects must be closed first."""
        self._native.close()

    @property
    def closed(self) -> bool:
        return self._native.closed

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- paths
    def stat(self, path: str, follow_symlinks: bool = True) -> StatResult:
        return StatResult._from(self._native.stat(path, follow_symlinks))

    def exists(self, path: str) -> bool:
        try:
            self._native.stat(path, True)
            return True
        except FileNotFoundError:
            return False

    def mkdir(self, path: str, mode: int = 0o755, parents: bool = False, exist_ok: bool = False) -> None:
        if parents:
            parts = [p for p in path.split("/") if p]
            for i in range(1, len(parts)):
                self.mkdir("/" + "/".join(parts[:i]), mode, exist_ok=True)
        try:
            self._native.mkdir(path, mode)
        except FileExistsError:
            if not (exist_ok or parents) or self.stat(path).type != "directory":
                raise

    def listdir(self, path: str = "/") -> list[str]:
        return [name for name, _, _ in self._native.listdir(path)]

    def scandir(self, path: str = "/") -> list[tuple[str, int, str]]:
        """(name, inode, type) of every entry, by name."""
        return list(self._native.listdir(path))

    def unlink(self, path: str) -> None:
        self._native.unlink(path)

    remove = unlink

    def rmdir(self, path: str) -> None:
        self._native.rmdir(path)

    def rename(self, src: str, dst: str, no_replace: bool = False) -> None:
        self._native.rename(src, dst, no_replace)

    def truncate(self, path: str, length: int) -> None:
        self._native.truncate(path, length)

    # ---- files
    def open(self, path: str, mode: str = "r", perm: int = 0o644) -> "File":
        """Opens a file: modes r, r+, w, w+, x, x+, a, a+ (binary only; a 'b' is accepted and ignored)."""
        key = mode.replace("b", "")
        if key not in _MODES:
            raise ValueError(f"mode {mode!r} is not one of {sorted(_MODES)} (binary only)")
        read, write, create, exclusive, truncate, append = _MODES[key]
        flags = (_fs.O_READ if read else 0) | (_fs.O_WRITE if write else 0) | (_fs.O_TRUNC if truncate else 0)
        handle = self._native.open(path, flags, create, exclusive, perm)
        return File(self, handle, path, read, write, append)

    def read_file(self, path: str) -> bytes:
        with self.open(path) as f:
            return f.read()

    def write_file(self, path: str, data: bytes | memoryview | Any) -> int:
        with self.open(path, "w") as f:
            return f.write(data)

    def open_handles(self) -> int:
        return self._native.open_handles()


class File:
    """An open file: positional (pread/pwrite, readinto_at) and stream (read/write/seek) I/O."""

    def __init__(self, client: Client, handle: int, path: str, readable: bool, writable: bool, append: bool):
        self._client = client
        self._native = client._native
        self._handle = handle
        self.name = path
        self._readable = readable
        self._writable = writable
        self._append = append
        self._position = 0
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise ValueError(f"I/O on closed file {self.name}")

    def readable(self) -> bool:
        return self._readable

    def writable(self) -> bool:
        return self._writable

    # ---- positional
    def pread(self, size: int, offset: int) -> bytes:
        self._check()
        return self._native.read(self._handle, offset, size)

    def readinto_at(self, buffer: Any, offset: int) -> int:
        """Fills a writable C-contiguous buffer (numpy array, bytearray, memoryview) from offset; returns
        the bytes read (short at the end of the file)."""
        self._check()
        if isinstance(buffer, bytearray):
            buffer = memoryview(buffer)
        if isinstance(buffer, memoryview):
            import numpy as np

            buffer = np.frombuffer(buffer, dtype=np.uint8)
        return self._native.readinto(self._handle, offset, buffer)

    def pwrite(self, data: Any, offset: int) -> int:
        self._check()
        if not isinstance(data, bytes):
            import numpy as np

            data = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
        return self._native.write(self._handle, offset, data)

    # ---- stream
    def read(self, size: int = -1) -> bytes:
        self._check()
        data = self._native.read(self._handle, self._position, size)
        self._position += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        n = self.readinto_at(buffer, self._position)
        self._position += n
        return n

    def write(self, data: Any) -> int:
        if self._append:
            self._position = self.stat().st_size
        n = self.pwrite(data, self._position)
        self._position += n
        return n

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._check()
        if whence == os.SEEK_SET:
            self._position = offset
        elif whence == os.SEEK_CUR:
            self._position += offset
        elif whence == os.SEEK_END:
            self._position = self.stat().st_size + offset
        else:
            raise ValueError(f"whence {whence} is not SEEK_SET, SEEK_CUR or SEEK_END")
        if self._position < 0:
            raise ValueError("negative seek position")
        return self._position

    def tell(self) -> int:
        return self._position

    def fsync(self) -> StatResult:
        """Makes the length exact in meta (data is durable once each write returns)."""
        self._check()
        return StatResult._from(self._native.fsync(self._handle))

    flush = fsync

    def stat(self) -> StatResult:
        self._check()
        return StatResult._from(self._native.fstat(self._handle))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._native.close_handle(self._handle)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "File":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def prefix_hashes(tokens: Iterable[int] | Any, block_size: int, parent: str | None = None, extra: int = 0) -> list[str]:
    """Keys (32 hex digits) of each full block of block_size tokens, chained over the prefix like vLLM's
    prefix-caching hashes: equal prefixes give equal keys. parent continues a chain; extra separates
    namespaces (model, adapter, dtype)."""
    import numpy as np

    array = np.ascontiguousarray(np.asarray(tokens, dtype=np.int32).reshape(-1))
    return _native().prefix_hashes(array, int(block_size), parent, int(extra))


class KVCache:
    """Byte blobs keyed by token-prefix hashes, stored as files under ``root`` (docs/fs-client.md).

    Keys are 32-hex-digit strings (from prefix_hashes) or 16 bytes. get returns None on a miss.
    capacity_bytes / ttl_s (0: none) drive a background evictor (LRU by access, put order after a
    restart)."""

    def __init__(self, client: Client, root: str = "/kvcache", *, capacity_bytes: int = 0, ttl_s: float = 0,
                 fanout: int = 256, evict_to: float = 0.9, eviction_interval_s: float = 1.0,
                 index_existing: bool = True):
        self._client = client
        self._native = _native().KVCache(client._native, root, int(fanout), int(capacity_bytes), float(evict_to),
                                         int(ttl_s * 1000), max(1, int(eviction_interval_s * 1000)),
                                         bool(index_existing))

    def put(self, key: str | bytes, value: Any) -> None:
        if not isinstance(value, bytes):
            import numpy as np

            value = np.frombuffer(memoryview(value).cast("B"), dtype=np.uint8)
        self._native.put(key, value)

    def get(self, key: str | bytes) -> bytes | None:
        return self._native.get(key)

    def get_batch(self, keys: Sequence[str | bytes]) -> list[bytes | None]:
        """Values of many keys (None for misses), read in one batched call."""
        return self._native.get_batch(list(keys))

    def delete(self, key: str | bytes) -> bool:
        """Removes an entry; False when there was none."""
        return self._native.remove(key)

    def evict(self) -> int:
        """Runs one eviction pass now; returns the entries removed."""
        return self._native.evict_now()

    def stats(self) -> dict:
        """hits, misses, puts, evictions (capacity), expirations (ttl), bytes, entries."""
        return self._native.stats()

    def close(self) -> None:
        self._native.close()

    def __enter__(self) -> "KVCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
