// FileClientBatchIo: the RingServer's BatchIo over the native file client (built with ff::fs_client).
#include "ff/fs/usrbio.h"

namespace ff::fs::usrbio {

Result<FileHandle> FileClientBatchIo::open(const meta::Caller& caller, meta::InodeId inode, uint32_t flags) {
  return client_.open(caller, inode, flags);
}
Status FileClientBatchIo::close(FileHandle handle) { return client_.close(handle); }
std::vector<Result<size_t>> FileClientBatchIo::read_batch(std::span<const ReadOp> ops) {
  return client_.read_batch(ops);
}
std::vector<Result<size_t>> FileClientBatchIo::write_batch(std::span<const WriteOp> ops) {
  return client_.write_batch(ops);
}

}  // namespace ff::fs::usrbio
