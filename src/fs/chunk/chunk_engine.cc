// Placeholder while the engine is written (see docs/fs-chunk-engine.md): every call is unimplemented.
#include "ff/fs/chunk_engine.h"

namespace ff::fs {

std::string_view chunk_fault_point_name(ChunkFaultPoint point) {
  switch (point) {
    case ChunkFaultPoint::kAfterDataWrite: return "after_data_write";
    case ChunkFaultPoint::kAfterPendingBatch: return "after_pending_batch";
    case ChunkFaultPoint::kBeforeCommitBatch: return "before_commit_batch";
    case ChunkFaultPoint::kAfterCommitBatch: return "after_commit_batch";
    case ChunkFaultPoint::kBeforeDataRead: return "before_data_read";
  }
  return "unknown";
}

struct ChunkEngine::Impl {
  ChunkEngineOptions options;
};

ChunkEngine::ChunkEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ChunkEngine::~ChunkEngine() = default;

Result<std::unique_ptr<ChunkEngine>> ChunkEngine::open(const ChunkEngineOptions& options) {
  (void)options;
  return unimplemented("ChunkEngine is not written yet");
}
uint64_t ChunkEngine::max_chunk_bytes() const { return impl_->options.max_block_bytes; }
Result<ChunkMeta> ChunkEngine::stat(const ChunkId&) { return unimplemented("stat"); }
Result<ChunkRead> ChunkEngine::read(const ChunkId&, uint64_t, uint64_t, ReadMode) { return unimplemented("read"); }
Status ChunkEngine::put_pending(const ChunkUpdate&) { return unimplemented("put_pending"); }
Status ChunkEngine::commit(const ChunkId&, uint32_t) { return unimplemented("commit"); }
Status ChunkEngine::put_full_replacement(const ChunkId&, uint32_t, uint32_t, std::span<const std::byte>) {
  return unimplemented("put_full_replacement");
}
Status ChunkEngine::abort_pending(const ChunkId&, uint32_t) { return unimplemented("abort_pending"); }
Result<uint64_t> ChunkEngine::remove_range(const ChunkId&, const ChunkId&) { return unimplemented("remove_range"); }
Result<std::vector<ChunkMeta>> ChunkEngine::list(const ChunkId&, const ChunkId&, uint64_t) {
  return unimplemented("list");
}
Status ChunkEngine::sync() { return unimplemented("sync"); }
Result<ChunkEngine::ReadInto> ChunkEngine::read_into(const ChunkId&, uint64_t, std::span<std::byte>, ReadMode) {
  return unimplemented("read_into");
}
ChunkEngineStats ChunkEngine::stats() const { return {}; }
const ChunkEngineOptions& ChunkEngine::options() const { return impl_->options; }
const std::string& ChunkEngine::directory() const { return impl_->options.directory; }

}  // namespace ff::fs
