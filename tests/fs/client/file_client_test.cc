// FileClient over an in-process cluster (cluster_fixture.h): striping, chunk boundaries, holes, short
// reads, overwrite, truncate, threads, batches, errno cases, unlinked open files, exact lengths, and a
// storage node crashing mid-write.
#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>

#include "fs/testing/cluster_fixture.h"

namespace ff::fs {
namespace {

using meta::errno_of;
using testing::InProcessCluster;
using testing::InProcessClusterOptions;

constexpr uint32_t kChunk = 64 << 10;
const meta::Caller kRoot{};

std::vector<std::byte> random_bytes(size_t n, uint64_t seed) {
  std::vector<std::byte> data(n);
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < n; i += 8) {
    uint64_t word = rng();
    std::memcpy(data.data() + i, &word, std::min<size_t>(8, n - i));
  }
  return data;
}

class FileClientTest : public ::testing::Test {
 protected:
  void SetUp() override { start({}); }

  void start(InProcessClusterOptions options) {
    options.chunk_size = kChunk;
    options.client.report_interval_ms = 50;
    auto cluster = InProcessCluster::start(options);
    ASSERT_TRUE(cluster.is_ok()) << cluster.status();
    cluster_ = std::move(*cluster);
    auto client = cluster_->make_client();
    ASSERT_TRUE(client.is_ok()) << client.status();
    client_ = std::move(*client);
  }

  void TearDown() override {
    client_.reset();
    cluster_.reset();
  }

  FileHandle create(const std::string& name, uint32_t flags = meta::kOpenRead | meta::kOpenWrite) {
    auto fh = client_->create(kRoot, meta::kRootInode, name, 0644, flags);
    EXPECT_TRUE(fh.is_ok()) << fh.status();
    return fh.is_ok() ? *fh : 0;
  }

  void write_all(FileHandle fh, uint64_t offset, const std::vector<std::byte>& data) {
    auto written = client_->write(fh, offset, data);
    ASSERT_TRUE(written.is_ok()) << written.status();
    ASSERT_EQ(*written, data.size());
  }

  std::vector<std::byte> read_range(FileHandle fh, uint64_t offset, size_t length) {
    std::vector<std::byte> out(length, std::byte{0x5a});
    auto got = client_->read(fh, offset, out);
    EXPECT_TRUE(got.is_ok()) << got.status();
    out.resize(got.is_ok() ? *got : 0);
    return out;
  }

  std::unique_ptr<InProcessCluster> cluster_;
  std::unique_ptr<FileClient> client_;
};

TEST_F(FileClientTest, WriteReadAcrossChunksAndStripes) {
  FileHandle fh = create("a");
  auto data = random_bytes(5 * kChunk + kChunk / 2, 1);
  write_all(fh, 0, data);
  EXPECT_EQ(read_range(fh, 0, data.size()), data);
  // Reads spanning chunk boundaries at odd places.
  for (uint64_t offset : {kChunk - 1ull, 2ull * kChunk - 7, 3ull * kChunk + 11}) {
    auto part = read_range(fh, offset, kChunk + 13);
    ASSERT_EQ(part.size(), kChunk + 13u);
    EXPECT_TRUE(std::equal(part.begin(), part.end(), data.begin() + static_cast<ptrdiff_t>(offset)));
  }
  // Chunk i lives on layout.chain_of(i), on every target of that chain, and on no other chain.
  auto inode = client_->stat(fh);
  ASSERT_TRUE(inode.is_ok());
  ASSERT_EQ(inode->layout.chains.size(), cluster_->chains().size());
  ASSERT_GE(inode->layout.chains.size(), 2u) << "the fixture should stripe over several chains";
  auto routing = cluster_->routing();
  ASSERT_TRUE(routing.is_ok());
  for (uint64_t index = 0; index < 6; ++index) {
    ChainId expected = inode->layout.chain_of(index);
    for (const auto& [chain_id, chain] : routing->chains) {
      for (const ChainTarget& target : chain.targets) {
        // A target that fell behind under load (lease lapse) is recovering, not serving: skip it.
        if (target.state != PublicTargetState::kServing) continue;
        auto meta = cluster_->store(target.target)->stat(ChunkId{inode->id, index});
        EXPECT_EQ(meta.is_ok(), chain_id == expected) << "chunk " << index << " on chain " << chain_id;
      }
    }
  }
  ASSERT_TRUE(client_->close(fh).is_ok());
}

TEST_F(FileClientTest, UnalignedWritesMatchAModel) {
  FileHandle fh = create("model");
  std::vector<std::byte> model;
  std::mt19937_64 rng(7);
  for (int step = 0; step < 40; ++step) {
    uint64_t offset = rng() % (4 * kChunk);
    size_t length = 1 + rng() % (kChunk + kChunk / 3);
    auto data = random_bytes(length, 100 + step);
    write_all(fh, offset, data);
    if (model.size() < offset + length) model.resize(offset + length, std::byte{0});
    std::copy(data.begin(), data.end(), model.begin() + static_cast<ptrdiff_t>(offset));
  }
  EXPECT_EQ(read_range(fh, 0, model.size() + 100), model);
  for (int probe = 0; probe < 30; ++probe) {
    uint64_t offset = rng() % model.size();
    size_t length = 1 + rng() % (2 * kChunk);
    auto got = read_range(fh, offset, length);
    size_t expected = std::min<size_t>(length, model.size() - offset);
    ASSERT_EQ(got.size(), expected);
    EXPECT_TRUE(std::equal(got.begin(), got.end(), model.begin() + static_cast<ptrdiff_t>(offset)));
  }
}

TEST_F(FileClientTest, HolesReadAsZerosAndReadsStopAtTheEnd) {
  FileHandle fh = create("holes");
  auto tail = random_bytes(1000, 3);
  const uint64_t at = 3 * kChunk + 100;
  write_all(fh, at, tail);
  auto all = read_range(fh, 0, at + 5000);
  ASSERT_EQ(all.size(), at + 1000);  // short read: the file ends at at + 1000
  for (uint64_t i = 0; i < at; ++i) ASSERT_EQ(all[i], std::byte{0}) << "byte " << i << " of the hole";
  EXPECT_TRUE(std::equal(tail.begin(), tail.end(), all.begin() + static_cast<ptrdiff_t>(at)));
  EXPECT_EQ(read_range(fh, at + 1000, 10).size(), 0u);
  EXPECT_EQ(read_range(fh, at + 1'000'000, 10).size(), 0u);
  // A hole inside a chunk (written only after a gap) also reads as zeros.
  write_all(fh, 5 * kChunk + 500, random_bytes(10, 4));
  auto inner = read_range(fh, 5 * kChunk, 500);
  ASSERT_EQ(inner.size(), 500u);
  for (auto b : inner) ASSERT_EQ(b, std::byte{0});
  ASSERT_TRUE(client_->close(fh).is_ok());
  auto inode = cluster_->meta().lookup(kRoot, meta::kRootInode, "holes");
  ASSERT_TRUE(inode.is_ok());
  EXPECT_EQ(inode->length, 5 * kChunk + 510u) << "close makes the length exact (from storage)";
}

// read_pieces returns what read() does, as pieces left in gRPC's received slices (and zero pieces for
// holes), in file order, across chunk boundaries, holes, short chunks and the end of the file.
TEST_F(FileClientTest, ReadPiecesMatchRead) {
  FileHandle fh = create("pieces");
  auto head = random_bytes(2 * kChunk + 333, 11);
  write_all(fh, 0, head);
  auto tail = random_bytes(kChunk / 2, 12);
  const uint64_t tail_at = 4 * kChunk + 1000;  // [2 * kChunk + 333, tail_at): a hole, part of it a whole chunk
  write_all(fh, tail_at, tail);
  const uint64_t end = tail_at + tail.size();
  auto concat = [&](uint64_t offset, size_t length) {
    auto pieces = client_->read_pieces(fh, offset, length);
    EXPECT_TRUE(pieces.is_ok()) << pieces.status();
    std::vector<std::byte> out;
    if (!pieces.is_ok()) return out;
    for (const SharedBytes& piece : *pieces) {
      EXPECT_TRUE(piece.is_set());
      EXPECT_GT(piece.size(), 0u) << "no empty pieces";
      out.insert(out.end(), piece.bytes.begin(), piece.bytes.end());
    }
    return out;
  };
  std::mt19937_64 rng(13);
  std::vector<std::pair<uint64_t, size_t>> cases = {
      {0, end + 100}, {0, kChunk}, {kChunk - 5, 10}, {2 * kChunk, kChunk}, {3 * kChunk, 2 * kChunk},
      {end - 1, 5},   {end, 10},   {end + 1000, 10}, {100, 0}};
  for (int i = 0; i < 20; ++i) cases.emplace_back(rng() % (end + 10), 1 + rng() % (3 * kChunk));
  for (auto [offset, length] : cases) {
    EXPECT_EQ(concat(offset, length), read_range(fh, offset, length)) << "offset " << offset << " length " << length;
  }
  // The pieces outlive the read and keep their bytes (owners held by each piece).
  auto pieces = client_->read_pieces(fh, 0, kChunk);
  ASSERT_TRUE(pieces.is_ok());
  std::vector<std::byte> kept;
  for (const SharedBytes& piece : *pieces) kept.insert(kept.end(), piece.bytes.begin(), piece.bytes.end());
  EXPECT_TRUE(std::equal(kept.begin(), kept.end(), head.begin()));
  // Errors as read(): a closed handle, a handle not open for reading.
  FileHandle write_only = create("pieces-wo", meta::kOpenWrite);
  EXPECT_EQ(errno_of(client_->read_pieces(write_only, 0, 10).status()), EBADF);
  ASSERT_TRUE(client_->close(write_only).is_ok());
  ASSERT_TRUE(client_->close(fh).is_ok());
  EXPECT_EQ(errno_of(client_->read_pieces(fh, 0, 10).status()), EBADF);
}

TEST_F(FileClientTest, OverwriteAndTruncate) {
  FileHandle fh = create("t");
  auto data = random_bytes(3 * kChunk, 5);
  write_all(fh, 0, data);
  auto patch = random_bytes(kChunk, 6);
  write_all(fh, kChunk / 2, patch);
  std::copy(patch.begin(), patch.end(), data.begin() + kChunk / 2);
  EXPECT_EQ(read_range(fh, 0, data.size()), data);

  // Truncate through the client (setattr): the open handle sees the new end at once.
  meta::SetAttr cut;
  cut.length = kChunk + kChunk / 4;
  auto inode = client_->stat(fh);
  ASSERT_TRUE(inode.is_ok());
  auto truncated = client_->setattr(kRoot, inode->id, cut);
  ASSERT_TRUE(truncated.is_ok()) << truncated.status();
  EXPECT_EQ(truncated->length, *cut.length);
  auto after = read_range(fh, 0, data.size());
  ASSERT_EQ(after.size(), *cut.length);
  EXPECT_TRUE(std::equal(after.begin(), after.end(), data.begin()));
  // Growing truncate: zeros past the old end, and the length survives close (storage agrees).
  meta::SetAttr grow;
  grow.length = 2 * kChunk + 10;
  ASSERT_TRUE(client_->setattr(kRoot, inode->id, grow).is_ok());
  auto grown = read_range(fh, 0, 3 * kChunk);
  ASSERT_EQ(grown.size(), *grow.length);
  for (uint64_t i = *cut.length; i < grown.size(); ++i) ASSERT_EQ(grown[i], std::byte{0}) << i;
  ASSERT_TRUE(client_->close(fh).is_ok());
  auto stored = cluster_->meta().getattr(inode->id);
  ASSERT_TRUE(stored.is_ok());
  EXPECT_EQ(stored->length, *grow.length);

  // Truncate straight through meta, then a fresh open sees it; O_TRUNC empties the file.
  meta::SetAttr cut_again;
  cut_again.length = 100;
  ASSERT_TRUE(cluster_->meta().setattr(kRoot, inode->id, cut_again).is_ok());
  auto reopened = client_->open(kRoot, inode->id, meta::kOpenRead);
  ASSERT_TRUE(reopened.is_ok());
  auto head = read_range(*reopened, 0, 1000);
  ASSERT_EQ(head.size(), 100u);
  EXPECT_TRUE(std::equal(head.begin(), head.end(), data.begin()));
  ASSERT_TRUE(client_->close(*reopened).is_ok());
  auto emptied = client_->open(kRoot, inode->id, meta::kOpenRead | meta::kOpenWrite | meta::kOpenTruncate);
  ASSERT_TRUE(emptied.is_ok()) << emptied.status();
  EXPECT_EQ(read_range(*emptied, 0, 1000).size(), 0u);
  ASSERT_TRUE(client_->close(*emptied).is_ok());
}

TEST_F(FileClientTest, ManyThreadsOnOneHandleAndOnDifferentFiles) {
  FileHandle shared = create("shared");
  constexpr int kThreads = 6;
  constexpr uint64_t kSlice = kChunk + 4093;  // slices straddle chunks
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto data = random_bytes(kSlice, 1000 + t);
      for (uint64_t piece = 0; piece < kSlice; piece += 10007) {
        size_t n = std::min<uint64_t>(10007, kSlice - piece);
        auto w = client_->write(shared, t * kSlice + piece, std::span(data).subspan(piece, n));
        if (!w.is_ok() || *w != n) ++failures;
      }
      std::vector<std::byte> back(kSlice);
      auto r = client_->read(shared, t * kSlice, back);
      if (!r.is_ok() || *r != kSlice || back != data) ++failures;
      // And a file of its own.
      auto own =
          client_->create(kRoot, meta::kRootInode, "own" + std::to_string(t), 0644, meta::kOpenRead | meta::kOpenWrite);
      if (!own.is_ok()) {
        ++failures;
        return;
      }
      auto mine = random_bytes(2 * kChunk + t, 2000 + t);
      auto w = client_->write(*own, 0, mine);
      std::vector<std::byte> check(mine.size());
      auto r2 = client_->read(*own, 0, check);
      if (!w.is_ok() || !r2.is_ok() || *r2 != mine.size() || check != mine) ++failures;
      if (!client_->close(*own).is_ok()) ++failures;
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(read_range(shared, t * kSlice, kSlice), random_bytes(kSlice, 1000 + t)) << "slice " << t;
    auto inode = cluster_->meta().lookup(kRoot, meta::kRootInode, "own" + std::to_string(t));
    ASSERT_TRUE(inode.is_ok());
    EXPECT_EQ(inode->length, 2 * kChunk + t);
  }
  ASSERT_TRUE(client_->close(shared).is_ok());
  EXPECT_EQ(client_->open_handles(), 0u);
}

TEST_F(FileClientTest, BatchOpsReportPerOpResults) {
  std::vector<FileHandle> files;
  std::vector<std::vector<std::byte>> contents;
  for (int i = 0; i < 4; ++i) {
    files.push_back(create("batch" + std::to_string(i)));
    contents.push_back(random_bytes(kChunk / 2 + i * kChunk, 300 + i));
  }
  std::vector<FileClient::WriteOp> writes;
  for (int i = 0; i < 4; ++i) writes.push_back({files[i], 0, contents[i]});
  writes.push_back({999'999, 0, contents[0]});  // not a handle
  auto written = client_->write_batch(writes);
  ASSERT_EQ(written.size(), 5u);
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(written[i].is_ok()) << written[i].status();
    EXPECT_EQ(*written[i], contents[i].size());
  }
  EXPECT_EQ(errno_of(written[4].status()), EBADF);

  std::vector<std::vector<std::byte>> outs(5, std::vector<std::byte>(4 * kChunk));
  std::vector<FileClient::ReadOp> reads;
  for (int i = 0; i < 4; ++i) reads.push_back({files[i], 0, outs[i]});
  reads.push_back({files[0], 0, outs[4]});
  reads[4].handle = 424242;
  auto got = client_->read_batch(reads);
  ASSERT_EQ(got.size(), 5u);
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(got[i].is_ok()) << got[i].status();
    ASSERT_EQ(*got[i], contents[i].size());
    EXPECT_TRUE(std::equal(contents[i].begin(), contents[i].end(), outs[i].begin()));
  }
  EXPECT_EQ(errno_of(got[4].status()), EBADF);
  for (FileHandle fh : files) ASSERT_TRUE(client_->close(fh).is_ok());
}

// A batch of small sequential writes into one chunk (the USRBIO ring's and the KV cache's path): the storage client
// sends them one at a time per chunk and joins the ones waiting (ClientConfig::coalesce_write_max_bytes), so the
// chunk gets far fewer versions than the batch has writes, and the bytes are the batch's, in order.
TEST_F(FileClientTest, ABatchOfSmallSequentialWritesIsCoalesced) {
  FileHandle file = create("small-writes");
  constexpr size_t kWrites = 32, kBlock = 2048;  // 64 KiB: one chunk
  const auto contents = random_bytes(kWrites * kBlock, 91);
  std::vector<FileClient::WriteOp> writes;
  for (size_t i = 0; i < kWrites; ++i) {
    writes.push_back({file, i * kBlock, std::span(contents).subspan(i * kBlock, kBlock)});
  }
  auto written = client_->write_batch(writes);
  ASSERT_EQ(written.size(), kWrites);
  for (size_t i = 0; i < kWrites; ++i) ASSERT_TRUE(written[i].is_ok()) << "write " << i << ": " << written[i].status();
  EXPECT_EQ(read_range(file, 0, contents.size()), contents);
  // Each write sent makes one version of the chunk: the first went alone, the rest in a few joined writes.
  auto inode = client_->stat(file);
  ASSERT_TRUE(inode.is_ok());
  auto routing = cluster_->routing();
  ASSERT_TRUE(routing.is_ok());
  const ChainInfo* chain = routing->chain(inode->layout.chain_of(0));
  ASSERT_NE(chain, nullptr);
  uint32_t version = 0;
  for (const ChainTarget& target : chain->targets) {
    auto meta = cluster_->store(target.target)->stat(ChunkId{inode->id, 0});
    if (meta.is_ok()) version = std::max(version, meta->committed_version);
  }
  EXPECT_GE(version, 2u);
  EXPECT_LT(version, kWrites / 2) << "chunk 0 has version " << version << " after " << kWrites
                                  << " writes in one batch";
  ASSERT_TRUE(client_->close(file).is_ok());
}

// Small chunk reads are not held to max_parallel_chunks (here 1) but to max_parallel_small_reads: a batch of 4 KiB
// reads has many in flight at once, which the storage client coalesces (FileClientConfig::max_parallel_small_reads).
TEST_F(FileClientTest, ABatchOfSmallReadsKeepsManyInFlight) {
  FileHandle file = create("small-reads");
  const auto contents = random_bytes(24 * kChunk, 77);
  write_all(file, 0, contents);
  // The length is exact in meta once synced (another client's open reads it from there).
  ASSERT_TRUE(client_->fsync(file).is_ok());
  FileClientConfig config;
  config.max_parallel_chunks = 1;
  config.local_reads = false;
  auto reader_or = cluster_->make_client(config);
  ASSERT_TRUE(reader_or.is_ok()) << reader_or.status();
  std::unique_ptr<FileClient> reader = std::move(*reader_or);
  auto inode = client_->stat(file);
  ASSERT_TRUE(inode.is_ok()) << inode.status();
  auto handle = reader->open(kRoot, inode->id, meta::kOpenRead);
  ASSERT_TRUE(handle.is_ok()) << handle.status();
  // 96 reads of 4 KiB, four in each chunk, in an order that visits every chunk before the next round.
  std::vector<std::vector<std::byte>> outs(96, std::vector<std::byte>(4096));
  std::vector<FileClient::ReadOp> reads;
  std::vector<uint64_t> offsets;
  for (uint64_t i = 0; i < 96; ++i) {
    offsets.push_back((i % 24) * kChunk + (i / 24) * 8192);
    reads.push_back({*handle, offsets.back(), outs[i]});
  }
  auto got = reader->read_batch(reads);
  ASSERT_EQ(got.size(), 96u);
  for (size_t i = 0; i < 96; ++i) {
    ASSERT_TRUE(got[i].is_ok()) << "read " << i << ": " << got[i].status();
    ASSERT_EQ(*got[i], 4096u);
    EXPECT_TRUE(std::equal(outs[i].begin(), outs[i].end(), contents.begin() + offsets[i])) << "read " << i;
  }
  EXPECT_GT(reader->coalesced_read_counts().batched_reads, 0u) << "no two small reads were ever in flight together";
  EXPECT_LT(reader->coalesced_read_counts().rpcs, 96u);
  ASSERT_TRUE(reader->close(*handle).is_ok());
  ASSERT_TRUE(client_->close(file).is_ok());
}

TEST_F(FileClientTest, ErrnoCases) {
  std::vector<std::byte> buffer(100);
  EXPECT_EQ(errno_of(client_->read(12345, 0, buffer).status()), EBADF);
  EXPECT_EQ(errno_of(client_->write(12345, 0, buffer).status()), EBADF);
  EXPECT_EQ(errno_of(client_->fsync(12345).status()), EBADF);
  EXPECT_EQ(errno_of(client_->close(12345)), EBADF);
  FileHandle ro = create("ro", meta::kOpenRead);
  EXPECT_EQ(errno_of(client_->write(ro, 0, buffer).status()), EBADF) << "write on a read-only handle";
  ASSERT_TRUE(client_->close(ro).is_ok());
  EXPECT_EQ(errno_of(client_->close(ro)), EBADF) << "double close";
  FileHandle wo = create("wo", meta::kOpenWrite);
  EXPECT_EQ(errno_of(client_->read(wo, 0, buffer).status()), EBADF) << "read on a write-only handle";
  ASSERT_TRUE(client_->close(wo).is_ok());
  EXPECT_EQ(errno_of(client_->create(kRoot, meta::kRootInode, "wo", 0644, meta::kOpenWrite).status()), EEXIST);

  // Permissions come from meta's open: uid 1000's private file is closed to uid 2000.
  meta::Caller alice{1000, 1000, {}}, bob{2000, 2000, {}};
  auto dir = cluster_->meta().mkdir(kRoot, meta::kRootInode, "home", 0777);
  ASSERT_TRUE(dir.is_ok());
  auto secret = client_->create(alice, dir->id, "secret", 0600, meta::kOpenWrite);
  ASSERT_TRUE(secret.is_ok()) << secret.status();
  ASSERT_TRUE(client_->close(*secret).is_ok());
  auto inode = cluster_->meta().lookup(alice, dir->id, "secret");
  ASSERT_TRUE(inode.is_ok());
  EXPECT_EQ(errno_of(client_->open(bob, inode->id, meta::kOpenRead).status()), EACCES);
  EXPECT_EQ(errno_of(client_->open(bob, inode->id, meta::kOpenWrite).status()), EACCES);
  EXPECT_TRUE(client_->open(alice, inode->id, meta::kOpenRead).is_ok());
  EXPECT_EQ(errno_of(client_->open(kRoot, dir->id, meta::kOpenRead | meta::kOpenWrite).status()), EISDIR);
  EXPECT_EQ(errno_of(client_->open(kRoot, dir->id, meta::kOpenRead).status()), EISDIR);
  EXPECT_EQ(errno_of(client_->open(kRoot, 987654321, meta::kOpenRead).status()), ENOENT);

  // POSIX: the creating open may write a file whose new mode denies writing; a later open may not.
  auto read_only = client_->create(alice, dir->id, "read-only", 0444, meta::kOpenWrite);
  ASSERT_TRUE(read_only.is_ok()) << read_only.status();
  auto written = client_->write(*read_only, 0, buffer);
  ASSERT_TRUE(written.is_ok()) << written.status();
  ASSERT_TRUE(client_->close(*read_only).is_ok());
  auto made = cluster_->meta().lookup(alice, dir->id, "read-only");
  ASSERT_TRUE(made.is_ok());
  EXPECT_EQ(made->length, buffer.size());
  EXPECT_EQ(errno_of(client_->open(alice, made->id, meta::kOpenWrite).status()), EACCES);
}

TEST_F(FileClientTest, UnlinkedOpenFileStaysReadableUntilClosed) {
  FileHandle fh = create("doomed");
  auto data = random_bytes(2 * kChunk + 77, 9);
  write_all(fh, 0, data);
  auto inode = client_->stat(fh);
  ASSERT_TRUE(inode.is_ok());
  ASSERT_TRUE(cluster_->meta().unlink(kRoot, meta::kRootInode, "doomed").is_ok());
  EXPECT_EQ(errno_of(cluster_->meta().lookup(kRoot, meta::kRootInode, "doomed").status()), ENOENT);
  EXPECT_EQ(read_range(fh, 0, data.size() + 10), data) << "an unlinked open file stays readable";
  ASSERT_TRUE(client_->close(fh).is_ok());
  // The last close deletes it; the embedded meta's garbage collector then removes its chunks.
  EXPECT_EQ(errno_of(cluster_->meta().getattr(inode->id).status()), ENOENT);
  auto routing = cluster_->routing();
  ASSERT_TRUE(routing.is_ok());
  TargetId some_target = routing->chains.at(inode->layout.chain_of(0)).targets.at(0).target;
  bool gone = false;
  for (int i = 0; i < 100 && !gone; ++i) {
    gone = !cluster_->store(some_target)->stat(ChunkId{inode->id, 0}).is_ok();
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(gone) << "chunks of a deleted file are removed";
}

// FileClientConfig::async_closes: closes of handles that wrote nothing return at once and reach meta in batches;
// closes of handles that wrote stay synchronous (the length is exact when close returns).
TEST_F(FileClientTest, BackgroundClosesReachMetaAndKeepUnlinkedFilesUntilSent) {
  FileClientConfig config;
  config.async_closes = true;
  auto client_or = cluster_->make_client(config);
  ASSERT_TRUE(client_or.is_ok()) << client_or.status();
  std::unique_ptr<FileClient> client = std::move(*client_or);
  // Many creates closed without writing: all their sessions end once the queue is flushed.
  std::vector<meta::InodeId> created;
  for (int i = 0; i < 50; ++i) {
    auto fh = client->create(kRoot, meta::kRootInode, fmt::format("quiet{}", i), 0644, meta::kOpenWrite);
    ASSERT_TRUE(fh.is_ok()) << fh.status();
    created.push_back(client->stat(*fh)->id);
    ASSERT_TRUE(client->close(*fh).is_ok());
  }
  ASSERT_TRUE(client->flush_closes(10'000).is_ok());
  for (meta::InodeId id : created) EXPECT_EQ(*cluster_->meta().session_count(id), 0u) << "inode " << id;
  const FileClient::CloseCounts counts = client->close_counts();
  EXPECT_EQ(counts.queued, 50u);
  EXPECT_GE(counts.batches, 1u);
  EXPECT_LE(counts.batches, 50u);
  EXPECT_EQ(counts.failed, 0u);

  // A handle that wrote closes synchronously: the exact length is in meta when close returns.
  auto data = random_bytes(kChunk + 5, 3);
  auto writer = client->create(kRoot, meta::kRootInode, "written", 0644, meta::kOpenWrite);
  ASSERT_TRUE(writer.is_ok());
  const meta::InodeId written = client->stat(*writer)->id;
  ASSERT_TRUE(client->write(*writer, 0, data).is_ok());
  ASSERT_TRUE(client->close(*writer).is_ok());
  EXPECT_EQ(cluster_->meta().getattr(written)->length, data.size());
  EXPECT_EQ(*cluster_->meta().session_count(written), 0u);
  EXPECT_EQ(client->close_counts().queued, 50u) << "a close after writes is not queued";

  // An unlinked file read through a handle: its inode lives until the queued close is sent, then goes.
  auto reader = client->open(kRoot, written, meta::kOpenRead);
  ASSERT_TRUE(reader.is_ok());
  ASSERT_TRUE(cluster_->meta().unlink(kRoot, meta::kRootInode, "written").is_ok());
  ASSERT_TRUE(client->close(*reader).is_ok());
  ASSERT_TRUE(client->flush_closes(10'000).is_ok());
  EXPECT_EQ(errno_of(cluster_->meta().getattr(written).status()), ENOENT);

  // Closes still queued when the client goes are sent by its destructor.
  auto last = client->create(kRoot, meta::kRootInode, "last", 0644, meta::kOpenWrite);
  ASSERT_TRUE(last.is_ok());
  const meta::InodeId last_id = client->stat(*last)->id;
  ASSERT_TRUE(client->close(*last).is_ok());
  client.reset();
  EXPECT_EQ(*cluster_->meta().session_count(last_id), 0u);
  auto report = cluster_->meta().fsck();
  ASSERT_TRUE(report.is_ok());
  EXPECT_TRUE(report->problems.empty());
}

TEST_F(FileClientTest, LengthsReportedWhileWritingAndExactOnFsyncAndClose) {
  FileClientConfig quiet;
  quiet.report_interval_ms = 60'000;  // no reports: only fsync/close tell meta
  auto writer_or = cluster_->make_client(quiet);
  ASSERT_TRUE(writer_or.is_ok());
  auto& writer = *writer_or;
  auto fh = writer->create(kRoot, meta::kRootInode, "len", 0644, meta::kOpenWrite | meta::kOpenRead);
  ASSERT_TRUE(fh.is_ok());
  auto data = random_bytes(kChunk + 5, 11);
  ASSERT_TRUE(writer->write(*fh, 0, data).is_ok());
  auto inode = writer->stat(*fh);
  ASSERT_TRUE(inode.is_ok());
  EXPECT_EQ(inode->length, data.size()) << "the writer knows its own writes";
  EXPECT_EQ(cluster_->meta().getattr(inode->id)->length, 0u) << "no report yet";
  auto synced = writer->fsync(*fh);
  ASSERT_TRUE(synced.is_ok()) << synced.status();
  EXPECT_EQ(synced->length, data.size());
  ASSERT_TRUE(writer->write(*fh, data.size(), data).is_ok());
  ASSERT_TRUE(writer->close(*fh).is_ok());
  EXPECT_EQ(cluster_->meta().getattr(inode->id)->length, 2 * data.size()) << "close makes the length exact";

  // The test's default client reports every 50 ms: another client sees growth without fsync.
  FileHandle grow = create("grow");
  ASSERT_TRUE(client_->write(grow, 0, data).is_ok());
  auto reader_or = cluster_->make_client();
  ASSERT_TRUE(reader_or.is_ok());
  auto grow_inode = client_->stat(grow);
  ASSERT_TRUE(grow_inode.is_ok());
  size_t seen = 0;
  for (int i = 0; i < 100 && seen < data.size(); ++i) {
    auto rfh = (*reader_or)->open(kRoot, grow_inode->id, meta::kOpenRead);
    ASSERT_TRUE(rfh.is_ok());
    std::vector<std::byte> out(2 * data.size());
    auto got = (*reader_or)->read(*rfh, 0, out);
    ASSERT_TRUE(got.is_ok());
    seen = *got;
    ASSERT_TRUE((*reader_or)->close(*rfh).is_ok());
    if (seen < data.size()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(seen, data.size()) << "the length report reaches other clients";
  ASSERT_TRUE(client_->close(grow).is_ok());
}

// A storage node crashes and comes back while a writer writes: every acknowledged write reads back,
// through the client and from every replica once the chains serve again.
TEST_F(FileClientTest, StorageNodeRestartMidWriteKeepsAcknowledgedData) {
  FileHandle fh = create("crash");
  auto inode = client_->stat(fh);
  ASSERT_TRUE(inode.is_ok());
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> acknowledged{0};
  std::atomic<int> failed{0};
  constexpr uint64_t kPiece = kChunk / 2 + 1000;  // writes straddle chunks
  // Bounded, but far beyond what the writer reaches before it is stopped: with a smaller bound (400) a fast run
  // finished every piece before the restart, and no write was left to resume after it.
  constexpr uint64_t kMaxPieces = 20'000;
  std::thread writer([&] {
    for (uint64_t i = 0; !stop && i < kMaxPieces; ++i) {
      auto data = random_bytes(kPiece, 5000 + i);
      auto w = client_->write(fh, i * kPiece, data);
      if (!w.is_ok()) {
        ++failed;
        break;
      }
      acknowledged = i + 1;
    }
  });
  // Every wait below is bounded: a writer that stalls or fails shows up as a failure, not a hang.
  const auto wait_for_acks = [&](uint64_t target) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (acknowledged < target && failed == 0 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return acknowledged >= target;
  };
  const bool started = wait_for_acks(10);
  if (!started) {
    stop = true;
    writer.join();
    FAIL() << "the writer acknowledged " << acknowledged.load() << " of 10 pieces within 60 s (" << failed.load()
           << " failed)";
  }
  ASSERT_TRUE(cluster_->restart_storage(2, 300).is_ok());
  uint64_t at_restart = acknowledged;
  ASSERT_LT(at_restart + 10, kMaxPieces) << "the writer ran out of pieces before the restart";
  auto recovery = cluster_->wait_serving(30'000);
  // Keep writing a little after recovery, then stop.
  const bool resumed = wait_for_acks(at_restart + 10);
  stop = true;
  writer.join();
  EXPECT_TRUE(resumed || failed > 0) << "no 10 more pieces within 60 s after the restart (" << acknowledged.load()
                                     << " acknowledged, " << at_restart << " at the restart)";
  ASSERT_TRUE(recovery.is_ok()) << recovery;
  EXPECT_EQ(failed.load(), 0) << "writes retry across the chain change";
  uint64_t pieces = acknowledged;
  ASSERT_GT(pieces, at_restart);
  for (uint64_t i = 0; i < pieces; ++i) {
    ASSERT_EQ(read_range(fh, i * kPiece, kPiece), random_bytes(kPiece, 5000 + i)) << "piece " << i;
  }
  ASSERT_TRUE(client_->close(fh).is_ok());
  EXPECT_EQ(cluster_->meta().getattr(inode->id)->length, pieces * kPiece);
  // Every replica of every chunk holds the same bytes once every chain serves again. (Under load a
  // heartbeat can miss after the first recovery and send a target through sync once more; a syncing
  // target's committed versions lag until its sync ends, so the comparison waits for that.)
  auto settled = cluster_->wait_serving(30'000);
  ASSERT_TRUE(settled.is_ok()) << settled;
  auto routing = cluster_->routing();
  ASSERT_TRUE(routing.is_ok());
  uint64_t chunks = (pieces * kPiece + kChunk - 1) / kChunk;
  // On a mismatch every replica's versions are named (the bytes alone do not tell which one is stale).
  const auto describe = [&](const ChainInfo& chain, uint64_t index) {
    std::string out = fmt::format("chain {} version {}:", chain.id, chain.version);
    for (const auto& target : chain.targets) {
      auto meta = cluster_->store(target.target)->stat(ChunkId{inode->id, index});
      auto bytes = cluster_->store(target.target)->committed_bytes(ChunkId{inode->id, index});
      if (!meta.is_ok()) {
        out += fmt::format(" [target {}: {}]", target.target, meta.status().to_string());
        continue;
      }
      out += fmt::format(" [target {} state {}: committed v{} len {} crc {:08x}, pending v{} len {}, chain v{}, bytes {}]",
                         target.target, static_cast<int>(target.state), meta->committed_version,
                         meta->committed_length, meta->committed_crc32c, meta->pending_version, meta->pending_length,
                         meta->chain_version, bytes.size());
    }
    return out;
  };
  for (uint64_t index = 0; index < chunks; ++index) {
    const ChainInfo& chain = routing->chains.at(inode->layout.chain_of(index));
    std::vector<std::byte> first;
    for (size_t t = 0; t < chain.targets.size(); ++t) {
      auto bytes = cluster_->store(chain.targets[t].target)->committed_bytes(ChunkId{inode->id, index});
      if (t == 0) first = bytes;
      if (bytes != first) {
        ADD_FAILURE() << "chunk " << index << " differs on target " << chain.targets[t].target << " ("
                      << pieces << " pieces, " << at_restart << " at the restart): " << describe(chain, index);
        std::this_thread::sleep_for(std::chrono::seconds(3));
        ADD_FAILURE() << "3 s later: " << describe(chain, index);
      }
    }
  }
}

}  // namespace
}  // namespace ff::fs

namespace ff::fs {
namespace {

// A live client keeps its sessions by renewing its lease; a silent one (crashed) loses them when the
// lease runs out, and meta reclaims them.
TEST(FileClientLeaseTest, RenewedSessionsSurviveAndSilentOnesAreReclaimed) {
  testing::InProcessClusterOptions options;
  options.client_lease_ms = 600;
  options.client.lease_renew_interval_ms = 100;
  auto cluster = testing::InProcessCluster::start(options);
  ASSERT_TRUE(cluster.is_ok()) << cluster.status();
  auto live = (*cluster)->make_client();
  FileClientConfig silent_config = options.client;
  silent_config.lease_renew_interval_ms = 600'000;
  auto silent = (*cluster)->make_client(silent_config);
  ASSERT_TRUE(live.is_ok() && silent.is_ok());
  auto kept = (*live)->create(kRoot, meta::kRootInode, "kept", 0644, meta::kOpenWrite);
  auto lost = (*silent)->create(kRoot, meta::kRootInode, "lost", 0644, meta::kOpenWrite);
  ASSERT_TRUE(kept.is_ok() && lost.is_ok());
  auto lost_inode = (*silent)->stat(*lost);
  ASSERT_TRUE(lost_inode.is_ok());
  // Unlinked while open: only the session keeps the inode alive.
  ASSERT_TRUE((*cluster)->meta().unlink(kRoot, meta::kRootInode, "lost").is_ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(2000));  // > 3 leases; reclaim runs every 200 ms
  EXPECT_TRUE((*live)->close(*kept).is_ok()) << "the renewed session is still there";
  EXPECT_EQ(errno_of((*silent)->close(*lost)), EBADF) << "the silent client's session was reclaimed";
  EXPECT_EQ(errno_of((*cluster)->meta().getattr(lost_inode->id).status()), ENOENT)
      << "the unlinked file only its session kept alive is gone";
}

}  // namespace
}  // namespace ff::fs
