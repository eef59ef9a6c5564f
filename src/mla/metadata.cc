// get_mla_metadata: the split-KV tile schedule (FlashMLA's semantics; see mla.h and docs/mla.md).
#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "cuda/decode_params.h"
#include "cuda/metadata_walk.h"
#include "ff/common/assert.h"
#include "ff/mla/mla.h"
#include "validate.h"

namespace ff::mla {

TileSchedulerPart MlaMetadata::part(int32_t index) const {
  FF_ASSERT(index >= 0 && index < num_sm_parts, "part {} of {}", index, num_sm_parts);
  const int32_t* row = tile_scheduler_metadata.data() + static_cast<size_t>(index) * kTileSchedulerMetadataSize;
  return {row[0], row[1], row[2], row[3], row[4]};
}

int32_t num_sm_parts_for(int64_t num_q_tokens_per_head_k, int64_t num_heads_k, int64_t num_sms) {
  FF_ASSERT(num_q_tokens_per_head_k >= 1 && num_heads_k >= 1 && num_sms >= 1);
  const int64_t m_blocks = (num_q_tokens_per_head_k + kBlockSizeM - 1) / kBlockSizeM;
  return static_cast<int32_t>(std::max<int64_t>(num_sms / num_heads_k / m_blocks, 1));
}

namespace {

// The counts both forms of get_mla_metadata check, named in the error.
Status check_counts(int64_t batch_size, int64_t num_q_tokens_per_head_k, int64_t num_heads_k, int64_t num_sms) {
  if (batch_size == 0) return invalid_argument("cache_seqlens is empty; the batch needs at least one sequence");
  if (batch_size > INT32_MAX / 2) return invalid_argument("batch size {} is too large", batch_size);
  if (num_q_tokens_per_head_k < 1) {
    return invalid_argument("num_q_tokens_per_head_k (s_q * h_q / h_kv) is {}; expected >= 1", num_q_tokens_per_head_k);
  }
  if (num_heads_k < 1) return invalid_argument("num_heads_k is {}; expected >= 1", num_heads_k);
  if (num_sms < 1) return invalid_argument("num_sms is {}; expected >= 1", num_sms);
  return Status::ok();
}

// A view's dtype, rank, shape and device, named in the error.
Status check_view(const TensorView& view, const char* name, std::initializer_list<int64_t> shape, Device device) {
  if (view.data == nullptr && view.numel() != 0) return invalid_argument("{} has no data", name);
  if (view.dtype != DType::kInt32)
    return invalid_argument("{} has dtype {}; expected int32", name, dtype_name(view.dtype));
  const std::vector<int64_t> expected(shape);
  bool same = view.ndim == static_cast<int>(expected.size());
  for (int dim = 0; same && dim < view.ndim; ++dim) same = view.shape[dim] == expected[static_cast<size_t>(dim)];
  if (!same) {
    std::string wanted = "(";
    for (size_t dim = 0; dim < expected.size(); ++dim) wanted += (dim > 0 ? ", " : "") + std::to_string(expected[dim]);
    wanted += expected.size() == 1 ? ",)" : ")";
    return invalid_argument("{} has shape {}; expected {}", name, view.shape_string(), wanted);
  }
  if (view.device != device) {
    return invalid_argument("{} is on the {}; this backend needs it on the {}", name,
                            view.device == Device::kCuda ? "GPU" : "CPU", device == Device::kCuda ? "GPU" : "CPU");
  }
  return Status::ok();
}

}  // namespace

Result<MlaMetadata> get_mla_metadata(std::span<const int32_t> cache_seqlens, int64_t num_q_tokens_per_head_k,
                                     int64_t num_heads_k, int64_t num_sms) {
  const auto batch_size = static_cast<int64_t>(cache_seqlens.size());
  FF_RETURN_IF_ERROR(check_counts(batch_size, num_q_tokens_per_head_k, num_heads_k, num_sms));
  std::vector<int32_t> num_blocks(batch_size);
  for (int64_t i = 0; i < batch_size; ++i) {
    if (cache_seqlens[i] < 0)
      return invalid_argument("cache_seqlens[{}] is {}; lengths must be >= 0", i, cache_seqlens[i]);
    num_blocks[i] = (cache_seqlens[i] + kPageBlockSize - 1) / kPageBlockSize;
  }

  MlaMetadata metadata;
  metadata.num_sm_parts = num_sm_parts_for(num_q_tokens_per_head_k, num_heads_k, num_sms);
  const int32_t parts = metadata.num_sm_parts;
  metadata.tile_scheduler_metadata.assign(static_cast<size_t>(parts) * kTileSchedulerMetadataSize, 0);
  metadata.num_splits.assign(batch_size + 1, 0);
  const cuda::WalkEnd end = cuda::walk_schedule(
      batch_size, parts, [&](int64_t i) { return num_blocks[i]; }, [&](int64_t i) { return cache_seqlens[i]; },
      [&](int32_t part, int64_t begin_batch, int64_t begin_token, int64_t end_batch, int64_t end_token,
          int64_t begin_split) {
        int32_t* row = metadata.tile_scheduler_metadata.data() + static_cast<size_t>(part) * kTileSchedulerMetadataSize;
        row[0] = static_cast<int32_t>(begin_batch);
        row[1] = static_cast<int32_t>(begin_token);
        row[2] = static_cast<int32_t>(end_batch);
        row[3] = static_cast<int32_t>(end_token);
        row[4] = static_cast<int32_t>(begin_split);
      },
      [&](int64_t i, int64_t pieces) { metadata.num_splits[i] = static_cast<int32_t>(pieces); });
  // parts * payload >= total + parts * overhead: the budget always covers every sequence.
  FF_ASSERT(end.batch == batch_size && end.block == 0 && end.split == 0, "schedule left sequence {} block {}",
            end.batch, end.block);
  FF_ASSERT_LE(end.pieces, batch_size + parts, "more splits than the accumulators the kernel sizes");
  return metadata;
}

static_assert(cuda::kMetadataPageBlockSize == kPageBlockSize &&
                  cuda::kMetadataFixedOverheadBlocks == kFixedOverheadNumBlocks &&
                  cuda::kMetadataRowSize == kTileSchedulerMetadataSize,
              "the metadata kernel's constants must be the schedule's");

Status get_mla_metadata(const MlaMetadataArgs& args, Backend backend) {
  const Device device = backend == Backend::kCuda ? Device::kCuda : Device::kCpu;
  if (args.cache_seqlens.ndim != 1) {
    return invalid_argument("cache_seqlens has shape {}; expected (b,)", args.cache_seqlens.shape_string());
  }
  const int64_t batch_size = args.cache_seqlens.shape[0];
  FF_RETURN_IF_ERROR(check_view(args.cache_seqlens, "cache_seqlens", {batch_size}, device));
  FF_RETURN_IF_ERROR(check_counts(batch_size, args.num_q_tokens_per_head_k, args.num_heads_k, args.num_sms));
  const int32_t parts = num_sm_parts_for(args.num_q_tokens_per_head_k, args.num_heads_k, args.num_sms);
  FF_RETURN_IF_ERROR(
      check_view(args.tile_scheduler_metadata, "tile_scheduler_metadata", {parts, kTileSchedulerMetadataSize}, device));
  FF_RETURN_IF_ERROR(check_view(args.num_splits, "num_splits", {batch_size + 1}, device));
  if (backend == Backend::kCuda) {
    for (const auto& [view, name] : {std::pair{&args.tile_scheduler_metadata, "tile_scheduler_metadata"},
                                     std::pair{&args.num_splits, "num_splits"}}) {
      if (view->device_index != args.cache_seqlens.device_index) {
        return invalid_argument("{} is on GPU {}, but cache_seqlens is on GPU {}", name, view->device_index,
                                args.cache_seqlens.device_index);
      }
    }
    return internal::get_mla_metadata_cuda(args, parts);
  }

  std::vector<int32_t> lengths(static_cast<size_t>(batch_size));
  const auto* seqlens = args.cache_seqlens.data_as<const int32_t>();
  for (int64_t i = 0; i < batch_size; ++i) lengths[static_cast<size_t>(i)] = seqlens[i * args.cache_seqlens.strides[0]];
  FF_ASSIGN_OR_RETURN(const MlaMetadata metadata,
                      get_mla_metadata(lengths, args.num_q_tokens_per_head_k, args.num_heads_k, args.num_sms));
  FF_ASSERT_EQ(metadata.num_sm_parts, parts);
  auto* rows = args.tile_scheduler_metadata.data_as<int32_t>();
  for (int32_t part = 0; part < parts; ++part) {
    for (int c = 0; c < kTileSchedulerMetadataSize; ++c) {
      rows[part * args.tile_scheduler_metadata.strides[0] + c * args.tile_scheduler_metadata.strides[1]] =
          metadata.tile_scheduler_metadata[static_cast<size_t>(part) * kTileSchedulerMetadataSize + c];
    }
  }
  auto* splits = args.num_splits.data_as<int32_t>();
  for (int64_t i = 0; i <= batch_size; ++i)
    splits[i * args.num_splits.strides[0]] = metadata.num_splits[static_cast<size_t>(i)];
  return Status::ok();
}

}  // namespace ff::mla
