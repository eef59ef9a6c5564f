// StorageFiles: meta::FileStorage over StorageClient. StorageClient lives on its executor, so each
// call posts its chunk operations there and waits (bounded by op_timeout_ms) for all of them.
#include <condition_variable>
#include <mutex>

#include "ff/common/assert.h"
#include "ff/common/log.h"
#include "ff/fs/meta_rpc.h"

namespace ff::fs::meta {

namespace {

// Results of `count` asynchronous operations started on the executor by start(i, done_i).
template <typename T>
struct Gather {
  std::mutex mutex;  // guards results, left
  std::condition_variable done;
  std::vector<std::optional<Result<T>>> results;
  size_t left = 0;
};

template <typename T>
std::vector<Result<T>> run_all(Executor& executor, size_t count, int64_t timeout_ms, const char* what,
                               std::function<void(size_t, StorageClient::Callback<T>)> start) {
  auto gather = std::make_shared<Gather<T>>();
  gather->results.resize(count);
  gather->left = count;
  executor.post([gather, count, start = std::move(start)] {
    for (size_t i = 0; i < count; ++i) {
      start(i, [gather, i](Result<T> result) {
        std::lock_guard lock(gather->mutex);
        gather->results[i] = std::move(result);
        if (--gather->left == 0) gather->done.notify_all();
      });
    }
  });
  std::unique_lock lock(gather->mutex);
  gather->done.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return gather->left == 0; });
  std::vector<Result<T>> out;
  out.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    if (gather->results[i]) {
      out.push_back(std::move(*gather->results[i]));
    } else {
      out.push_back(deadline_exceeded("storage {} (operation {} of {}) did not finish within {} ms", what, i + 1, count,
                                      timeout_ms));
    }
  }
  return out;
}

Status check_layout(const Inode& inode) {
  if (inode.layout.chains.empty() || inode.layout.chunk_size == 0) {
    return invalid_argument("inode {} has no layout (chains {}, chunk size {})", inode.id, inode.layout.chains.size(),
                            inode.layout.chunk_size);
  }
  return Status::ok();
}

// The layout's chains without repeats (a chain may appear twice when stripe > distinct chains).
std::vector<ChainId> distinct_chains(const Layout& layout) {
  std::vector<ChainId> chains = layout.chains;
  std::sort(chains.begin(), chains.end());
  chains.erase(std::unique(chains.begin(), chains.end()), chains.end());
  return chains;
}

}  // namespace

StorageFiles::StorageFiles(StorageClient& client, Executor& executor, StorageFilesOptions options)
    : client_(client), executor_(executor), options_(options) {
  FF_ASSERT(options_.op_timeout_ms > 0, "StorageFiles op_timeout_ms = {}", options_.op_timeout_ms);
}

StorageFiles::~StorageFiles() = default;

Result<uint64_t> StorageFiles::file_length(const Inode& inode) {
  FF_RETURN_IF_ERROR(check_layout(inode));
  std::vector<ChainId> chains = distinct_chains(inode.layout);
  StorageClient& client = client_;
  uint64_t id = inode.id;
  auto results =
      run_all<QueryLastChunkRsp>(executor_, chains.size(), options_.op_timeout_ms, "query_last_chunk",
                                 [&client, chains, id](size_t i, StorageClient::Callback<QueryLastChunkRsp> done) {
                                   client.query_last_chunk(chains[i], id, 0, UINT64_MAX, std::move(done));
                                 });
  uint64_t length = 0;
  for (size_t i = 0; i < results.size(); ++i) {
    if (!results[i].is_ok()) {
      return Status(results[i].status().code(), fmt::format("length of inode {}: chain {}: {}", inode.id, chains[i],
                                                            results[i].status().message()));
    }
    if (results[i]->found) {
      length = std::max(length, results[i]->last.index * inode.layout.chunk_size + results[i]->last_length);
    }
  }
  return length;
}

Status StorageFiles::truncate(const Inode& inode, uint64_t length) {
  FF_RETURN_IF_ERROR(check_layout(inode));
  const uint64_t chunk_size = inode.layout.chunk_size;
  // Chunks wholly past the end go: [first_removed, end) on every chain.
  const uint64_t first_removed = (length + chunk_size - 1) / chunk_size;
  std::vector<ChainId> chains = distinct_chains(inode.layout);
  StorageClient& client = client_;
  uint64_t id = inode.id;
  auto removed = run_all<RemoveChunksRsp>(
      executor_, chains.size(), options_.op_timeout_ms, "remove_range",
      [&client, chains, id, first_removed](size_t i, StorageClient::Callback<RemoveChunksRsp> done) {
        client.remove_range(chains[i], ChunkId{id, first_removed}, ChunkId{id, UINT64_MAX}, std::move(done));
      });
  for (size_t i = 0; i < removed.size(); ++i) {
    if (!removed[i].is_ok()) {
      return Status(removed[i].status().code(), fmt::format("truncate inode {} to {}: chain {}: {}", inode.id, length,
                                                            chains[i], removed[i].status().message()));
    }
  }
  const uint64_t keep = length % chunk_size;
  if (keep == 0) return Status::ok();
  // The chunk holding the new end keeps `keep` bytes. Storage has no per-chunk truncate: read the
  // prefix, remove the chunk, write the prefix back (see the NOTE in meta_rpc.h).
  const uint64_t index = length / chunk_size;
  const ChainId chain = inode.layout.chain_of(index);
  const ChunkId chunk{id, index};
  auto read = run_all<ReadRsp>(executor_, 1, options_.op_timeout_ms, "read",
                               [&client, chain, chunk, keep](size_t, StorageClient::Callback<ReadRsp> done) {
                                 client.read(chain, chunk, 0, keep, ReadMode::kStrict, std::move(done));
                               });
  if (!read[0].is_ok()) {
    if (fs_error_of(read[0].status()) == FsError::kChunkNotFound) return Status::ok();  // a hole: nothing to cut
    return Status(read[0].status().code(), fmt::format("truncate inode {} to {}: reading chunk {}: {}", inode.id,
                                                       length, chunk.to_string(), read[0].status().message()));
  }
  if (read[0]->meta.committed_length <= keep) return Status::ok();  // already short enough
  Bytes prefix = std::move(read[0]->data);
  prefix.resize(keep);  // a hole inside the chunk reads as zeros up to its length
  auto cut = run_all<RemoveChunksRsp>(
      executor_, 1, options_.op_timeout_ms, "remove_range",
      [&client, chain, chunk](size_t, StorageClient::Callback<RemoveChunksRsp> done) {
        client.remove_range(chain, chunk, ChunkId{chunk.inode, chunk.index + 1}, std::move(done));
      });
  if (!cut[0].is_ok()) {
    return Status(cut[0].status().code(), fmt::format("truncate inode {} to {}: removing chunk {}: {}", inode.id,
                                                      length, chunk.to_string(), cut[0].status().message()));
  }
  auto shared_prefix = std::make_shared<Bytes>(std::move(prefix));
  auto written =
      run_all<WriteRsp>(executor_, 1, options_.op_timeout_ms, "write",
                        [&client, chain, chunk, shared_prefix](size_t, StorageClient::Callback<WriteRsp> done) {
                          client.write(chain, chunk, 0, std::move(*shared_prefix), std::move(done));
                        });
  if (!written[0].is_ok()) {
    FF_LOG_ERROR("truncate inode {} to {}: chunk {} was removed but its first {} bytes could not be written back: {}",
                 inode.id, length, chunk.to_string(), keep, written[0].status());
    return Status(written[0].status().code(), fmt::format("truncate inode {} to {}: rewriting chunk {}: {}", inode.id,
                                                          length, chunk.to_string(), written[0].status().message()));
  }
  return Status::ok();
}

Status StorageFiles::remove_file(const Inode& inode) {
  FF_RETURN_IF_ERROR(check_layout(inode));
  std::vector<ChainId> chains = distinct_chains(inode.layout);
  StorageClient& client = client_;
  uint64_t id = inode.id;
  auto removed = run_all<RemoveChunksRsp>(
      executor_, chains.size(), options_.op_timeout_ms, "remove_range",
      [&client, chains, id](size_t i, StorageClient::Callback<RemoveChunksRsp> done) {
        client.remove_range(chains[i], ChunkId{id, 0}, ChunkId{id, UINT64_MAX}, std::move(done));
      });
  for (size_t i = 0; i < removed.size(); ++i) {
    if (!removed[i].is_ok()) {
      return Status(removed[i].status().code(),
                    fmt::format("remove inode {}: chain {}: {}", inode.id, chains[i], removed[i].status().message()));
    }
  }
  return Status::ok();
}

}  // namespace ff::fs::meta
