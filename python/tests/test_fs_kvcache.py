"""fireflyer.fs.KVCache over a real local cluster (ff-mgmtd + 3 ff-storage, in-process meta): prefix
keys, put/get/get_batch/delete, numpy values, LRU capacity eviction, TTL expiry by the background
evictor, stats."""

from __future__ import annotations

import pathlib
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import fs_testing  # noqa: E402

from fireflyer import fs  # noqa: E402


@pytest.fixture(scope="module")
def client(build_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory):
    with fs_testing.local_cluster(build_dir, targets_per_node=1) as cluster:
        meta_db = tmp_path_factory.mktemp("kvmeta") / "meta"
        with fs.Client(cluster.mgmtd_address, meta_db=str(meta_db), chunk_size=256 << 10, meta_db_sync=False) as c:
            yield c


def test_prefix_hashes() -> None:
    fs_testing.require_fs()
    tokens = np.arange(1000, dtype=np.int32)
    keys = fs.prefix_hashes(tokens, 256)
    assert len(keys) == 3 and all(len(k) == 32 for k in keys)
    assert fs.prefix_hashes(list(range(1000)), 256) == keys           # lists too
    changed = tokens.copy()
    changed[300] = -1
    other = fs.prefix_hashes(changed, 256)
    assert other[0] == keys[0] and other[1] != keys[1] and other[2] != keys[2]
    assert fs.prefix_hashes(tokens[256:512], 256, parent=keys[0]) == [keys[1]]
    assert fs.prefix_hashes(tokens, 256, extra=7)[0] != keys[0]
    with pytest.raises(ValueError):
        fs.prefix_hashes(tokens, 0)


def test_put_get_batch_delete(client: fs.Client) -> None:
    tokens = np.arange(64 * 5, dtype=np.int32)
    keys = fs.prefix_hashes(tokens, 64)
    blocks = [np.random.default_rng(i).standard_normal((2, 64, 16)).astype(np.float16) for i in range(5)]
    with fs.KVCache(client, "/kv/model-a") as cache:
        for key, block in zip(keys, blocks):
            cache.put(key, block)                     # numpy, no copy before the write
        cache.put(bytes(16), b"raw")                  # 16-byte keys and bytes values too
        got = cache.get_batch(keys + ["f" * 32])
        assert got[-1] is None
        for value, block in zip(got, blocks):
            assert np.array_equal(np.frombuffer(value, dtype=np.float16).reshape(block.shape), block)
        assert cache.get(bytes(16)) == b"raw"
        assert cache.delete(keys[0]) and not cache.delete(keys[0])
        assert cache.get(keys[0]) is None
        stats = cache.stats()
        assert stats["puts"] == 6 and stats["hits"] == 6 and stats["misses"] == 2
        assert stats["entries"] == 5 and stats["bytes"] == 4 * blocks[0].nbytes + 3
        assert client.listdir("/kv/model-a")  # fan-out subdirectories
        with pytest.raises(ValueError):
            cache.get("not-hex")
        with pytest.raises(ValueError):
            client.close()  # a KVCache is still open over it


def test_capacity_and_ttl_eviction(client: fs.Client) -> None:
    value = b"x" * 10_000
    with fs.KVCache(client, "/kv/lru", capacity_bytes=50_000, evict_to=0.8, eviction_interval_s=3600) as cache:
        keys = [f"{i:032x}" for i in range(8)]
        for i, key in enumerate(keys):
            cache.put(key, value)
            if i == 6:
                assert cache.get(keys[0]) == value    # key 0 becomes recently used
        assert cache.evict() == 4
        assert [cache.get(k) is not None for k in keys] == [True, False, False, False, False, True, True, True]
        assert cache.stats()["evictions"] == 4 and cache.stats()["bytes"] == 40_000
    with fs.KVCache(client, "/kv/ttl", ttl_s=0.3, eviction_interval_s=0.05) as cache:
        cache.put("a" * 32, b"short-lived")
        assert cache.get("a" * 32) == b"short-lived"
        deadline = time.monotonic() + 10
        while cache.stats()["expirations"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cache.stats()["expirations"] == 1
        assert cache.get("a" * 32) is None
