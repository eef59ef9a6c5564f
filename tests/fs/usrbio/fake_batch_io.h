// A BatchIo over in-memory files, for the usrbio tests: the same operations and errno conventions as
// FileClient (meta-style errors), plus counters of what the RingServer asked for.
#pragma once

#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "ff/fs/usrbio.h"

namespace ff::fs::usrbio::testing {

class FakeBatchIo final : public BatchIo {
 public:
  struct File {
    std::vector<std::byte> data;
    uint32_t owner_uid = 0;
    uint32_t mode = 0644;
  };

  void add_file(meta::InodeId inode, std::vector<std::byte> data, uint32_t owner_uid = 0, uint32_t mode = 0644) {
    std::lock_guard lock(mutex_);
    files_[inode] = File{std::move(data), owner_uid, mode};
  }
  std::vector<std::byte> file(meta::InodeId inode) {
    std::lock_guard lock(mutex_);
    return files_.at(inode).data;
  }
  void set_batch_delay_ms(int64_t delay_ms) { delay_ms_ = delay_ms; }
  // Runs at the start of every read_batch / write_batch (after the server's own checks of the batch).
  void set_before_io(std::function<void()> hook) { before_io_ = std::move(hook); }

  Result<FileHandle> open(const meta::Caller& caller, meta::InodeId inode, uint32_t flags) override {
    std::lock_guard lock(mutex_);
    ++opens_;
    auto found = files_.find(inode);
    if (found == files_.end()) return meta::meta_error(ENOENT, fmt::format("inode {} does not exist", inode));
    const File& file = found->second;
    const uint32_t want = ((flags & meta::kOpenRead) ? 4u : 0u) | ((flags & meta::kOpenWrite) ? 2u : 0u);
    const uint32_t have = caller.uid == 0 ? 7u : caller.uid == file.owner_uid ? (file.mode >> 6) & 7u : file.mode & 7u;
    if ((want & have) != want)
      return meta::meta_error(EACCES, fmt::format("uid {} may not open inode {}", caller.uid, inode));
    const FileHandle handle = next_handle_++;
    handles_[handle] = inode;
    return handle;
  }
  Status close(FileHandle handle) override {
    std::lock_guard lock(mutex_);
    if (handles_.erase(handle) == 0) return meta::meta_error(EBADF, fmt::format("handle {} is not open", handle));
    ++closes_;
    return Status::ok();
  }
  std::vector<Result<size_t>> read_batch(std::span<const ReadOp> ops) override {
    if (before_io_) before_io_();
    if (delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms_));
    std::lock_guard lock(mutex_);
    batch_sizes_.push_back(ops.size());
    std::vector<Result<size_t>> results;
    for (const ReadOp& op : ops) {
      auto handle = handles_.find(op.handle);
      if (handle == handles_.end()) {
        results.push_back(meta::meta_error(EBADF, "bad handle"));
        continue;
      }
      const auto& data = files_.at(handle->second).data;
      const size_t begin = std::min<size_t>(op.offset, data.size());
      const size_t count = std::min(op.out.size(), data.size() - begin);
      if (count > 0) std::memcpy(op.out.data(), data.data() + begin, count);
      results.push_back(count);
    }
    return results;
  }
  std::vector<Result<size_t>> write_batch(std::span<const WriteOp> ops) override {
    if (before_io_) before_io_();
    if (delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms_));
    std::lock_guard lock(mutex_);
    batch_sizes_.push_back(ops.size());
    std::vector<Result<size_t>> results;
    for (const WriteOp& op : ops) {
      auto handle = handles_.find(op.handle);
      if (handle == handles_.end()) {
        results.push_back(meta::meta_error(EBADF, "bad handle"));
        continue;
      }
      auto& data = files_.at(handle->second).data;
      if (data.size() < op.offset + op.data.size()) data.resize(op.offset + op.data.size());
      std::memcpy(data.data() + op.offset, op.data.data(), op.data.size());
      results.push_back(op.data.size());
    }
    return results;
  }

  std::vector<size_t> batch_sizes() {
    std::lock_guard lock(mutex_);
    return batch_sizes_;
  }
  size_t open_handles() {
    std::lock_guard lock(mutex_);
    return handles_.size();
  }
  size_t opens() {
    std::lock_guard lock(mutex_);
    return opens_;
  }

 private:
  std::mutex mutex_;
  std::map<meta::InodeId, File> files_;
  std::map<FileHandle, meta::InodeId> handles_;
  FileHandle next_handle_ = 1;
  std::vector<size_t> batch_sizes_;
  size_t opens_ = 0;
  size_t closes_ = 0;
  std::atomic<int64_t> delay_ms_{0};
  std::function<void()> before_io_;  // set before the server starts
};

// Bytes whose value depends on (seed, position): any misplaced byte shows.
inline std::vector<std::byte> pattern(size_t size, uint32_t seed) {
  std::vector<std::byte> bytes(size);
  for (size_t i = 0; i < size; ++i) bytes[i] = static_cast<std::byte>((i * 131 + seed * 7 + (i >> 8)) & 0xff);
  return bytes;
}

}  // namespace ff::fs::usrbio::testing
