// KvCache over an in-process cluster: prefix hashes, put/get/batch/remove, replacement, LRU capacity
// eviction, TTL expiry, the background evictor, and re-indexing at open.
#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <set>
#include <thread>

#include "fs/testing/cluster_fixture.h"
#include "ff/fs/kvcache.h"

namespace ff::fs {
namespace {

using meta::errno_of;
using testing::InProcessCluster;

std::vector<std::byte> blob(size_t n, uint64_t seed) {
  std::vector<std::byte> data(n);
  std::mt19937_64 rng(seed);
  for (auto& b : data) b = static_cast<std::byte>(rng());
  return data;
}

TEST(KvCacheKeyTest, PrefixHashesChainBlocks) {
  std::vector<int32_t> a(64 * 3 + 10), b;
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<int32_t>(i * 7 + 1);
  auto keys = prefix_hashes(a, 64);
  ASSERT_EQ(keys.size(), 3u) << "only full blocks get keys";
  EXPECT_EQ(prefix_hashes(a, 64), keys) << "deterministic";
  b = a;
  b[64 + 5] += 1;  // block 1 differs: key 0 equal, keys 1 and 2 differ (they name the whole prefix)
  auto other = prefix_hashes(b, 64);
  EXPECT_EQ(other[0], keys[0]);
  EXPECT_NE(other[1], keys[1]);
  EXPECT_NE(other[2], keys[2]);
  // Same block contents after a different prefix give a different key.
  std::vector<int32_t> shifted(a.begin() + 64, a.begin() + 128);
  EXPECT_NE(prefix_hashes(shifted, 64)[0], keys[1]);
  EXPECT_EQ(prefix_hashes(shifted, 64, keys[0])[0], keys[1]) << "continuing from a parent key";
  EXPECT_NE(prefix_hashes(a, 64, {}, 1)[0], keys[0]) << "extra separates namespaces";
  EXPECT_NE(prefix_hashes(a, 32)[0], keys[0]);
  std::set<std::string> distinct;
  for (int32_t t = 0; t < 2000; ++t) {
    std::vector<int32_t> one{t};
    distinct.insert(prefix_hashes(one, 1)[0].hex());
  }
  EXPECT_EQ(distinct.size(), 2000u);
  auto parsed = KvCacheKey::from_hex(keys[2].hex());
  ASSERT_TRUE(parsed.is_ok());
  EXPECT_EQ(*parsed, keys[2]);
  EXPECT_FALSE(KvCacheKey::from_hex("xyz").is_ok());
  EXPECT_FALSE(KvCacheKey::from_hex(std::string(31, '0') + "g").is_ok());
}

class KvCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::InProcessClusterOptions options;
    options.chunk_size = 64 << 10;
    auto cluster = InProcessCluster::start(options);
    ASSERT_TRUE(cluster.is_ok()) << cluster.status();
    cluster_ = std::move(*cluster);
    auto client = cluster_->make_client();
    ASSERT_TRUE(client.is_ok());
    client_ = std::move(*client);
  }
  void TearDown() override {
    client_.reset();
    cluster_.reset();
  }
  std::unique_ptr<KvCache> open(KvCacheConfig config) {
    auto cache = KvCache::open(*client_, config);
    EXPECT_TRUE(cache.is_ok()) << cache.status();
    return cache.is_ok() ? std::move(*cache) : nullptr;
  }
  static KvCacheKey key(int i) { return KvCacheKey{static_cast<uint64_t>(i) << 56 | 77, static_cast<uint64_t>(i)}; }

  std::unique_ptr<InProcessCluster> cluster_;
  std::unique_ptr<FileClient> client_;
};

TEST_F(KvCacheTest, PutGetBatchRemove) {
  KvCacheConfig config;
  config.root = "/cache/model-a";
  auto cache = open(config);
  ASSERT_TRUE(cache);
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(cache->put(key(i), blob(1000 + i * 40000, i)).is_ok());
  ASSERT_TRUE(cache->put(key(6), {}).is_ok()) << "empty values are values";
  auto one = cache->get(key(3));
  ASSERT_TRUE(one.is_ok()) << one.status();
  EXPECT_EQ(*one, blob(1000 + 3 * 40000, 3));
  EXPECT_EQ(errno_of(cache->get(key(99)).status()), ENOENT);
  std::vector<KvCacheKey> keys{key(0), key(99), key(5), key(6), key(2)};
  auto many = cache->get_batch(keys);
  ASSERT_EQ(many.size(), 5u);
  ASSERT_TRUE(many[0].is_ok());
  EXPECT_EQ(*many[0], blob(1000, 0));
  EXPECT_EQ(errno_of(many[1].status()), ENOENT);
  ASSERT_TRUE(many[2].is_ok());
  EXPECT_EQ(*many[2], blob(1000 + 5 * 40000, 5));
  ASSERT_TRUE(many[3].is_ok());
  EXPECT_TRUE(many[3]->empty());
  ASSERT_TRUE(many[4].is_ok());
  // Replacement is atomic and visible.
  ASSERT_TRUE(cache->put(key(2), blob(17, 1234)).is_ok());
  EXPECT_EQ(*cache->get(key(2)), blob(17, 1234));
  auto removed = cache->remove(key(2));
  ASSERT_TRUE(removed.is_ok());
  EXPECT_TRUE(*removed);
  EXPECT_FALSE(*cache->remove(key(2)));
  EXPECT_EQ(errno_of(cache->get(key(2)).status()), ENOENT);
  auto stats = cache->stats();
  EXPECT_EQ(stats.puts, 8u);
  EXPECT_EQ(stats.hits, 6u);
  EXPECT_EQ(stats.misses, 3u);
  EXPECT_EQ(stats.entries, 6u);
  uint64_t expected_bytes = 0;
  for (int i : {0, 1, 3, 4, 5}) expected_bytes += 1000 + i * 40000;
  EXPECT_EQ(stats.bytes, expected_bytes);
  // Entries are files under root/<dd>/<hex>.
  auto file = cluster_->meta().resolve({}, "/cache/model-a/" + fmt::format("{:02x}", 3) + "/" + key(3).hex());
  ASSERT_TRUE(file.is_ok()) << file.status();
  EXPECT_EQ(file->length, 1000u + 3 * 40000);
}

TEST_F(KvCacheTest, CapacityEvictsLeastRecentlyUsedAndTtlExpires) {
  KvCacheConfig config;
  config.capacity_bytes = 5 * 10000;
  config.evict_to = 0.8;
  config.eviction_interval_ms = 60'000;  // passes run by evict_now below
  auto cache = open(config);
  ASSERT_TRUE(cache);
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(cache->put(key(i), blob(10000, i)).is_ok());
    if (i == 6) {
      ASSERT_TRUE(cache->get(key(0)).is_ok());  // key 0 becomes recent
    }
  }
  auto evicted = cache->evict_now();
  ASSERT_TRUE(evicted.is_ok()) << evicted.status();
  // 80000 bytes down to <= 40000: the 4 least recently used go (1, 2, 3, 4), key 0 stays.
  EXPECT_EQ(*evicted, 4u);
  auto stats = cache->stats();
  EXPECT_EQ(stats.evictions, 4u);
  EXPECT_EQ(stats.bytes, 40000u);
  for (int i : {1, 2, 3, 4}) EXPECT_EQ(errno_of(cache->get(key(i)).status()), ENOENT) << i;
  for (int i : {0, 5, 6, 7}) EXPECT_TRUE(cache->get(key(i)).is_ok()) << i;
  cache.reset();

  // TTL, with the background evictor.
  KvCacheConfig short_lived;
  short_lived.root = "/ttl";
  short_lived.ttl_ms = 300;
  short_lived.eviction_interval_ms = 50;
  auto ttl_cache = open(short_lived);
  ASSERT_TRUE(ttl_cache);
  ASSERT_TRUE(ttl_cache->put(key(1), blob(100, 1)).is_ok());
  EXPECT_TRUE(ttl_cache->get(key(1)).is_ok());
  uint64_t expirations = 0;
  for (int i = 0; i < 100 && expirations == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    expirations = ttl_cache->stats().expirations;
  }
  EXPECT_EQ(expirations, 1u);
  EXPECT_EQ(errno_of(ttl_cache->get(key(1)).status()), ENOENT);
  EXPECT_EQ(errno_of(cluster_->meta().resolve({}, "/ttl/01/" + key(1).hex()).status()), ENOENT) << "the file is gone";
}

TEST_F(KvCacheTest, ReopenIndexesExistingEntriesByPutOrder) {
  KvCacheConfig config;
  config.root = "/persist";
  config.fanout = 16;
  {
    auto cache = open(config);
    ASSERT_TRUE(cache);
    for (int i = 0; i < 5; ++i) {
      ASSERT_TRUE(cache->put(key(i), blob(1000, i)).is_ok());
      std::this_thread::sleep_for(std::chrono::milliseconds(5));  // distinct put times
    }
  }
  config.capacity_bytes = 3000;
  config.evict_to = 1.0;
  auto cache = open(config);
  ASSERT_TRUE(cache);
  auto stats = cache->stats();
  EXPECT_EQ(stats.entries, 5u);
  EXPECT_EQ(stats.bytes, 5000u);
  ASSERT_TRUE(cache->evict_now().is_ok());
  // After a restart, LRU order is put order: the two oldest go.
  EXPECT_EQ(errno_of(cache->get(key(0)).status()), ENOENT);
  EXPECT_EQ(errno_of(cache->get(key(1)).status()), ENOENT);
  for (int i : {2, 3, 4}) EXPECT_EQ(*cache->get(key(i)), blob(1000, i));
  EXPECT_FALSE(KvCache::open(*client_, {.root = "relative"}).is_ok());
  EXPECT_FALSE(KvCache::open(*client_, {.fanout = 0}).is_ok());
}

// A put that crashed before its rename leaves a temporary: the next open removes it once it is older
// than stale_temp_ms, and leaves a younger one (it may be a live instance's put in progress).
TEST_F(KvCacheTest, OpenRemovesStaleTemporariesOfCrashedPuts) {
  KvCacheConfig config;
  config.root = "/crashed";
  config.fanout = 1;
  {
    auto cache = open(config);
    ASSERT_TRUE(cache);
    ASSERT_TRUE(cache->put(key(1), blob(100, 1)).is_ok());
  }
  const meta::Caller root{0, 0, {}};
  auto dir = cluster_->meta().resolve(root, "/crashed/00");
  ASSERT_TRUE(dir.is_ok()) << dir.status();
  const std::string temp = key(2).hex() + ".tmp-7-0";
  ASSERT_TRUE(cluster_->meta().create(root, dir->id, temp, 0644).is_ok());
  config.stale_temp_ms = 60'000;  // the temporary is younger: kept
  {
    auto cache = open(config);
    ASSERT_TRUE(cache);
    EXPECT_EQ(cache->stats().temporaries_removed, 0u);
    EXPECT_TRUE(cluster_->meta().lookup(root, dir->id, temp).is_ok());
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  config.stale_temp_ms = 10;
  auto cache = open(config);
  ASSERT_TRUE(cache);
  EXPECT_EQ(cache->stats().temporaries_removed, 1u);
  EXPECT_EQ(errno_of(cluster_->meta().lookup(root, dir->id, temp).status()), ENOENT);
  EXPECT_EQ(cache->stats().entries, 1u);  // the real entry stays
  EXPECT_EQ(*cache->get(key(1)), blob(100, 1));
}

// An instance that stays open removes stale temporaries too (a put of another instance that crashed),
// on its background sweep; a temporary younger than stale_temp_ms stays. (No put runs in the sweeping
// instance: with a stale_temp_ms this short a slow put's own temporary could qualify.)
TEST_F(KvCacheTest, BackgroundSweepRemovesStaleTemporaries) {
  KvCacheConfig config;
  config.root = "/swept";
  config.fanout = 1;
  {
    auto writer = open(config);
    ASSERT_TRUE(writer);
    ASSERT_TRUE(writer->put(key(1), blob(100, 1)).is_ok());  // creates the subdirectory
  }
  const meta::Caller root{0, 0, {}};
  auto dir = cluster_->meta().resolve(root, "/swept/00");
  ASSERT_TRUE(dir.is_ok()) << dir.status();
  const std::string temp = key(2).hex() + ".tmp-9-0";
  ASSERT_TRUE(cluster_->meta().create(root, dir->id, temp, 0644).is_ok());
  const auto created = std::chrono::steady_clock::now();
  config.eviction_interval_ms = 20;
  config.temp_sweep_interval_ms = 50;
  config.stale_temp_ms = 1500;
  auto cache = open(config);
  ASSERT_TRUE(cache);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // swept at least once while young
  if (std::chrono::steady_clock::now() - created < std::chrono::milliseconds(1400)) {
    EXPECT_TRUE(cluster_->meta().lookup(root, dir->id, temp).is_ok());
    EXPECT_EQ(cache->stats().temporaries_removed, 0u);
  }
  for (int i = 0; i < 500 && cache->stats().temporaries_removed == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(cache->stats().temporaries_removed, 1u);
  EXPECT_EQ(errno_of(cluster_->meta().lookup(root, dir->id, temp).status()), ENOENT);
  EXPECT_EQ(*cache->get(key(1)), blob(100, 1));  // the real entry stays
  config.temp_sweep_interval_ms = -1;
  auto bad = KvCache::open(*client_, config);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("temp_sweep_interval_ms is -1"), std::string::npos) << bad.status();
}

}  // namespace
}  // namespace ff::fs
