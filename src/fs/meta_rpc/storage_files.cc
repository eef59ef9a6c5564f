// StorageFiles: meta::FileStorage over StorageClient (include/ff/fs/storage_files.h). StorageClient
// lives on its executor, so each step posts its chunk operations there and waits (bounded by
// op_timeout_ms) for all of them.
#include "ff/fs/storage_files.h"

#include <algorithm>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "ff/common/assert.h"
#include "ff/common/log.h"

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

Status StorageFiles::remove_from(const Inode& inode, uint64_t first, std::string_view what) {
  std::vector<ChainId> chains = distinct_chains(inode.layout);
  StorageClient& client = client_;
  uint64_t id = inode.id;
  auto removed = run_all<RemoveChunksRsp>(
      executor_, chains.size(), options_.op_timeout_ms, "remove_range",
      [&client, chains, id, first](size_t i, StorageClient::Callback<RemoveChunksRsp> done) {
        client.remove_range(chains[i], ChunkId{id, first}, ChunkId{id, UINT64_MAX}, std::move(done));
      });
  for (size_t i = 0; i < removed.size(); ++i) {
    if (!removed[i].is_ok()) {
      return Status(removed[i].status().code(), fmt::format("{}: removing chunks from index {} on chain {}: {}", what,
                                                            first, chains[i], removed[i].status().message()));
    }
  }
  return Status::ok();
}

Status StorageFiles::truncate(const Inode& inode, uint64_t length) {
  FF_RETURN_IF_ERROR(check_layout(inode));
  const std::string what = fmt::format("truncate inode {} to {}", inode.id, length);
  const uint64_t chunk_size = inode.layout.chunk_size;
  // Chunks wholly past the new end go.
  const uint64_t keep_chunks = length / chunk_size + (length % chunk_size != 0 ? 1 : 0);
  FF_RETURN_IF_ERROR(remove_from(inode, keep_chunks, what));
  if (length == 0) return Status::ok();
  // The chunk holding the new end must end exactly there (last_bytes in 1..chunk_size): one replicated truncate of that
  // chunk (StorageClient::truncate) cuts it, or extends it with zeros (growing, or a hole at the new end), atomically.
  const uint64_t index = keep_chunks - 1;
  const uint64_t last_bytes = length - index * chunk_size;
  const ChainId chain = inode.layout.chain_of(index);
  const ChunkId chunk{inode.id, index};
  StorageClient& client = client_;
  const uint32_t channel = options_.write_channel;
  auto cut =
      run_all<WriteRsp>(executor_, 1, options_.op_timeout_ms, "truncate",
                        [&client, chain, chunk, last_bytes, channel](size_t, StorageClient::Callback<WriteRsp> done) {
                          client.truncate(chain, chunk, last_bytes, std::move(done), channel);
                        });
  if (!cut[0].is_ok()) {
    return Status(cut[0].status().code(), fmt::format("{}: cutting chunk {} on chain {} to {} bytes: {}", what,
                                                      chunk.to_string(), chain, last_bytes, cut[0].status().message()));
  }
  return Status::ok();
}

Status StorageFiles::remove_file(const Inode& inode) {
  if (inode.layout.chains.empty()) return Status::ok();  // never had data
  return remove_from(inode, 0, fmt::format("remove inode {}", inode.id));
}

}  // namespace ff::fs::meta
