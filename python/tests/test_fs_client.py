"""fireflyer.fs over a real local cluster (ff-mgmtd + 3 ff-storage processes, LocalCluster) with the
metadata service in-process on RocksDB: paths, files, bytes and buffers, errno mapping, threads, and
a second client process reopening the same metadata directory."""

from __future__ import annotations

import errno
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import fs_testing  # noqa: E402
from test_fs_support import LocalCluster  # noqa: E402

from fireflyer import fs  # noqa: E402

CHUNK = 256 << 10


@pytest.fixture(scope="module")
def cluster(build_dir: pathlib.Path):
    with fs_testing.local_cluster(build_dir) as c:
        yield c


@pytest.fixture()
def client(cluster: LocalCluster, tmp_path: pathlib.Path):
    with fs.Client(cluster.mgmtd_address, meta_db=str(tmp_path / "meta"), chunk_size=CHUNK, meta_db_sync=False) as c:
        yield c


def test_files_paths_and_buffers(client: fs.Client) -> None:
    client.mkdir("/data/sub", parents=True)
    assert client.listdir("/") == ["data"]
    payload = np.random.default_rng(1).integers(0, 256, 3 * CHUNK + 12345, dtype=np.uint8)
    with client.open("/data/a.bin", "w") as f:
        assert f.write(payload) == payload.size          # numpy in place
        assert f.write(b"tail") == 4                      # bytes
        assert f.write(bytearray(b"xyz")) == 3            # bytearray through memoryview
    st = client.stat("/data/a.bin")
    assert st.st_size == payload.size + 7 and st.type == "regular file" and st.chunk_size == CHUNK
    assert len(st.chains) == 2  # 3 nodes x 2 targets at replication 3: 2 chains, all striped over
    with client.open("/data/a.bin") as f:
        data = f.read()
        assert len(data) == payload.size + 7
        assert data[: payload.size] == payload.tobytes() and data[payload.size:] == b"tailxyz"
        out = np.zeros(CHUNK + 10, dtype=np.uint8)
        assert f.readinto_at(out, CHUNK - 5) == CHUNK + 10
        assert np.array_equal(out, payload[CHUNK - 5: 2 * CHUNK + 5])
        view = bytearray(100)
        assert f.readinto_at(view, payload.size) == 7 and bytes(view[:7]) == b"tailxyz"   # short at the end
        assert f.pread(10, payload.size + 100) == b""
        f.seek(-3, os.SEEK_END)
        assert f.read() == b"xyz"
    # Holes, append, truncate, rename, unlink.
    with client.open("/data/holes", "w+") as f:
        f.pwrite(b"end", 2 * CHUNK)
        assert f.pread(2 * CHUNK + 3, 0) == b"\0" * (2 * CHUNK) + b"end"
    with client.open("/data/holes", "a") as f:
        f.write(b"++")
    assert client.read_file("/data/holes")[-5:] == b"end++"
    client.truncate("/data/holes", 10)
    assert client.read_file("/data/holes") == b"\0" * 10
    client.rename("/data/holes", "/data/sub/moved")
    assert client.listdir("/data/sub") == ["moved"]
    client.unlink("/data/sub/moved")
    assert client.listdir("/data/sub") == []
    client.rmdir("/data/sub")
    assert client.open_handles() == 0


def test_errors_are_oserrors_with_errno(client: fs.Client) -> None:
    with pytest.raises(FileNotFoundError):
        client.open("/nope")
    with pytest.raises(FileNotFoundError):
        client.stat("/a/b")
    client.write_file("/f", b"1")
    with pytest.raises(FileExistsError):
        client.open("/f", "x")
    with pytest.raises(FileExistsError):
        client.mkdir("/f")
    client.mkdir("/d")
    with pytest.raises(IsADirectoryError):
        client.open("/d", "r+")
    with pytest.raises(OSError) as error:
        client.rmdir("/f")
    assert error.value.errno == errno.ENOTDIR
    with pytest.raises(OSError) as error:
        client.mkdir("/" + "n" * 300)
    assert error.value.errno == errno.ENAMETOOLONG
    with pytest.raises(ValueError):
        client.open("/f", "rw")
    f = client.open("/f")
    f.close()
    with pytest.raises(ValueError):
        f.read()


def test_permissions_by_uid(cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    # One RocksDB directory admits one process (and one Client) at a time: root prepares, then closes.
    db = str(tmp_path / "meta")
    with fs.Client(cluster.mgmtd_address, meta_db=db, meta_db_sync=False, uid=0, gid=0) as root:
        root.mkdir("/shared", 0o777)
        with root.open("/private", "w", perm=0o600) as f:
            f.write(b"secret")
    with fs.Client(cluster.mgmtd_address, meta_db=db, meta_db_sync=False, uid=1000, gid=1000) as alice:
        with pytest.raises(PermissionError):
            alice.open("/private")
        alice.write_file("/shared/mine", b"ok")
        assert alice.stat("/shared/mine").st_uid == 1000
        assert alice.read_file("/shared/mine") == b"ok"
        with pytest.raises(PermissionError):
            alice.unlink("/private")  # the root directory is 0755, owned by root


def test_threads_and_reopen_keep_data(cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    db = str(tmp_path / "meta")
    blobs = {i: np.random.default_rng(10 + i).integers(0, 256, CHUNK + 1000 * i, dtype=np.uint8) for i in range(6)}
    errors: list[BaseException] = []
    with fs.Client(cluster.mgmtd_address, meta_db=db, chunk_size=CHUNK) as client:
        def work(i: int) -> None:
            try:
                with client.open(f"/t{i}", "w") as f:
                    f.write(blobs[i])
                assert client.read_file(f"/t{i}") == blobs[i].tobytes()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
    # Another process opens the same metadata directory and reads everything back.
    script = (
        "import sys, hashlib; sys.path.insert(0, sys.argv[3]); from fireflyer import fs\n"
        "with fs.Client(sys.argv[1], meta_db=sys.argv[2]) as c:\n"
        "    print(' '.join(hashlib.sha256(c.read_file(f'/t{i}')).hexdigest() for i in range(6)))\n")
    out = subprocess.run([sys.executable, "-c", script, cluster.mgmtd_address, db,
                          str(pathlib.Path(fs.__file__).resolve().parents[1])],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    import hashlib

    assert out.stdout.split() == [hashlib.sha256(blobs[i].tobytes()).hexdigest() for i in range(6)]


def test_background_closes_reach_meta(cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    # async_closes: closes of files that were not written return at once and reach meta in batches; a file
    # unlinked while open for reading goes once its queued close is sent; written files close synchronously.
    with fs.Client(cluster.mgmtd_address, meta_db=str(tmp_path / "meta"), chunk_size=CHUNK,
                   async_closes=True) as client:
        for i in range(20):
            client.open(f"/empty{i}", "w").close()
        with client.open("/data", "w") as f:
            f.write(b"x" * 1000)
        assert client.stat("/data").st_size == 1000
        reader = client.open("/data")
        client.unlink("/data")
        assert reader.read() == b"x" * 1000
        reader.close()
        client.flush_closes(10.0)
        counts = client.close_counts()
        assert counts["queued"] == 21 and counts["failed"] == 0 and 1 <= counts["batches"] <= 21, counts
        assert sorted(client.listdir("/")) == sorted(f"empty{i}" for i in range(20))
    with fs.Client(cluster.mgmtd_address, meta_db=str(tmp_path / "meta"), chunk_size=CHUNK) as client:
        assert client.close_counts() == {"queued": 0, "batches": 0, "failed": 0}
        client.flush_closes(1.0)  # nothing to wait for without async_closes


def test_local_reads_come_from_the_storage_processes_files(cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    # The ff-storage processes run on this host: reads are served from their targets' files, checked
    # against the chunks' CRC32C, and give the bytes written; without local reads they come over gRPC.
    db = str(tmp_path / "meta")
    payload = np.random.default_rng(5).integers(0, 256, 5 * CHUNK + 777, dtype=np.uint8)
    with fs.Client(cluster.mgmtd_address, meta_db=db, chunk_size=CHUNK) as client:
        with client.open("/local.bin", "w") as f:
            f.write(payload)
        assert client.read_file("/local.bin") == payload.tobytes()
        counts = client.local_read_counts()
        # Five whole chunks from the files; the 777-byte tail is below local_read_min_bytes (RPC).
        assert counts["served"] >= 5 and counts["fallbacks"] == 0, counts
    with fs.Client(cluster.mgmtd_address, meta_db=db, chunk_size=CHUNK, local_reads=False) as client:
        assert client.read_file("/local.bin") == payload.tobytes()
        assert client.local_read_counts() == {"served": 0, "fallbacks": 0, "read_before_answer": 0, "read_ahead": 0,
                                               "read_aheads_started": 0, "read_aheads_dropped": 0}
    # The storage servers count what they answered locally: ff_storage_local_reads_total on their metrics
    # endpoints (updated with each stats line, every stats_interval_s).
    ports = [int(p) for log in sorted(cluster.dir.glob("storage*.log"))
             for p in re.findall(r"ff-storage node \d+: metrics at http://127\.0\.0\.1:(\d+)/metrics", log.read_text())]
    assert len(ports) == 3, cluster.logs()
    deadline = time.monotonic() + 3 * cluster.stats_interval_s + 10
    while True:
        total = 0
        for port in ports:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            total += sum(int(float(v)) for v in re.findall(r"^ff_storage_local_reads_total (\S+)$", text, re.M))
        if total >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert total >= 5, f"ff_storage_local_reads_total summed to {total}"


def test_client_arguments_are_checked(cluster: LocalCluster) -> None:
    with pytest.raises(ValueError):
        fs.Client(cluster.mgmtd_address)  # no meta
    with pytest.raises(ValueError):
        fs.Client(cluster.mgmtd_address, meta_memory=True, meta_db="/tmp/x")
    with tempfile.TemporaryDirectory() as d, pytest.raises(OSError):
        fs.Client("127.0.0.1:1", meta_db=d, timeout_s=0.5)  # no mgmtd there


def test_remote_meta_shared_by_two_clients(cluster: LocalCluster) -> None:
    from fireflyer import _fs

    if not _fs.HAVE_REMOTE_META:
        pytest.skip("this build has no RemoteMeta (ff::fs_meta_rpc)")
    if not (cluster.bin / "ff-meta").exists():
        pytest.skip(f"ff-meta is not built in {cluster.bin}")
    address = cluster.start_meta("meta-client-test")
    payload = np.random.default_rng(5).integers(0, 256, 5 << 20, dtype=np.uint8)  # > one 4 MiB chunk
    with fs.Client(cluster.mgmtd_address, meta=address, uid=0, gid=0) as a, \
            fs.Client(cluster.mgmtd_address, meta=[address], uid=0, gid=0) as b:
        a.mkdir("/remote", exist_ok=True)
        with a.open("/remote/x", "w") as f:
            f.write(payload)
        assert b.stat("/remote/x").st_size == payload.size   # exact after a's close
        assert b.read_file("/remote/x") == payload.tobytes()
        with b.open("/remote/x", "r+") as f:
            f.pwrite(b"B", 7)
        with a.open("/remote/x") as f:
            assert f.pread(3, 6) == payload[6:7].tobytes() + b"B" + payload[8:9].tobytes()
        b.unlink("/remote/x")
        with pytest.raises(FileNotFoundError):
            a.open("/remote/x")


@pytest.mark.skipif(not fs.available(), reason="fs extension not built")
def test_tune_malloc_for_io_buffers_respects_the_environment() -> None:
    """In a fresh interpreter (malloc settings are process-wide): applied without malloc settings in the
    environment, left alone (False) with them."""
    code = "from fireflyer import fs; print(fs.tune_malloc_for_io_buffers())"
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")}
    for extra, expected in (({}, "True"), ({"MALLOC_TRIM_THRESHOLD_": "131072"}, "False"),
                            ({"GLIBC_TUNABLES": "glibc.malloc.check=0"}, "False")):
        result = subprocess.run([sys.executable, "-c", code], env={**environment, **extra}, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == expected, (extra, result.stdout, result.stderr)


TRUNCATE_CHILD = """
import random, sys
from fireflyer import fs
mgmtd, db, chunk, keep = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(int(sys.argv[5]))
with fs.Client(mgmtd, meta_db=db, chunk_size=chunk) as c:
    print("ready", flush=True)
    while True:
        c.truncate("/t", rng.randint(keep + 1, 2 * chunk))  # cuts or extends the second chunk
        print("cut", flush=True)
"""


def test_a_truncating_process_killed_mid_cut_never_loses_kept_bytes(cluster: LocalCluster,
                                                                     tmp_path: pathlib.Path) -> None:
    """A process truncating a file over and over (each time cutting or extending its second chunk, always keeping the
    first 1.5 chunks) is SIGKILLed at random moments, 20 times; after each kill the kept bytes read back intact. A
    truncate that removed the chunk and then wrote its kept prefix back lost them when killed in between."""
    import random
    import select

    db = str(tmp_path / "meta")
    keep = CHUNK + CHUNK // 2
    payload = np.random.default_rng(11).integers(0, 256, 3 * CHUNK, dtype=np.uint8).tobytes()
    with fs.Client(cluster.mgmtd_address, meta_db=db, chunk_size=CHUNK) as c:
        c.write_file("/t", payload)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    rng = random.Random(3)
    cuts = 0
    for round_index in range(20):
        child = subprocess.Popen([sys.executable, "-c", TRUNCATE_CHILD, cluster.mgmtd_address, db, str(CHUNK),
                                  str(keep), str(round_index)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env)
        try:
            # Until it has cut at least twice, then a random moment later (a few cuts' time).
            seen, deadline = 0, time.monotonic() + 60
            while seen < 3 and time.monotonic() < deadline:
                ready, _, _ = select.select([child.stdout], [], [], 1.0)
                if ready:
                    line = child.stdout.readline()
                    assert line, f"the truncating process exited: {child.stderr.read()[-2000:]}"
                    seen += 1
            assert seen >= 3, "the truncating process did not get going within 60 s"
            time.sleep(rng.uniform(0.0, 0.05))
        finally:
            child.kill()
            rest, _ = child.communicate(timeout=30)
        cuts += seen - 1 + rest.count("cut")
        with fs.Client(cluster.mgmtd_address, meta_db=db, chunk_size=CHUNK) as c:
            data = c.read_file("/t")
        assert len(data) > keep, f"round {round_index}: the file is {len(data)} bytes"
        assert data[:keep] == payload[:keep], f"round {round_index}: kept bytes changed after {cuts} truncates"
    assert cuts >= 40
