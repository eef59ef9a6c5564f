// meta::FileStorage over the storage layer's StorageClient: the one implementation used by ff-meta (through
// meta_rpc.h) and by the native FileClient (FileClient::file_storage(), hence EmbeddedFs and ff-fuse's
// embedded metadata). Library ff::fs_storage_files (src/fs/meta_rpc/storage_files.cc).
//
//   StorageFiles files(storage_client, executor, {.op_timeout_ms = 30'000});
//   auto meta = MetaService::open(engine, config, &files);
//
//   - file_length: query_last_chunk on every distinct chain of the layout (in parallel), the largest
//     `index * chunk_size + length` wins (0 when no chunk exists);
//   - truncate(length): removes the chunks wholly past the new end (remove_range on every chain), then
//     makes the chunk holding the new end exactly as long as the file's end in it with one replicated
//     truncate of that chunk (StorageClient::truncate, WriteReq::truncate): its bytes past the end go, or
//     it is extended with zeros (growing, or a hole at the new end), as one new version on every
//     replica, so no moment exists without its kept bytes (until 2026-12-01 the kept prefix was read,
//     the chunk removed and the prefix written back: a crash in between lost it). Storage's length then
//     agrees with meta's, which a write session's close/fsync sets from file_length() (without the
//     extension a grown file would shrink back on the next close);
//   - remove_file: remove_range over the whole inode on every chain (nothing for a file without
//     chains: it never had data).
// Errors keep the StorageClient's code (meta::errno_of: deadline -> ETIMEDOUT, else EIO) and name the
// inode, the chain or chunk, and the step. Every wait is bounded by op_timeout_ms per step.
//
// Thread-safety: any number of threads. `client` and `executor` must outlive it; the client's methods
// are only called on `executor`.
#pragma once

#include <cstdint>
#include <string_view>

#include "ff/common/result.h"
#include "ff/fs/client.h"
#include "ff/fs/meta.h"
#include "ff/fs/transport.h"

namespace ff::fs::meta {

struct StorageFilesOptions {
  int64_t op_timeout_ms = 60'000;  // one step of a FileStorage call (all its parallel chunk operations)
  uint32_t write_channel = 0;      // StorageClient write channel for truncate's chunk cuts
};

class StorageFiles final : public FileStorage {
 public:
  StorageFiles(StorageClient& client, Executor& executor, StorageFilesOptions options = {});
  ~StorageFiles() override;
  Result<uint64_t> file_length(const Inode& inode) override;
  Status truncate(const Inode& inode, uint64_t length) override;
  Status remove_file(const Inode& inode) override;

 private:
  // Removes chunks [first, end of file) of the inode on every distinct chain of its layout.
  Status remove_from(const Inode& inode, uint64_t first, std::string_view what);

  StorageClient& client_;
  Executor& executor_;
  StorageFilesOptions options_;
};

}  // namespace ff::fs::meta
