// Host side of the CUDA backend: scale layouts (repacked into the kernel's layout when the caller's differs), the
// tile configuration (heuristic.h, or FF_GEMM_TILE_CONFIG), and the launch through launch.h.
#include "backend.h"

#include <cstdlib>
#include <string>
#include <string_view>

#include "heuristic.h"
#include "launch.h"

namespace ff::gemm::cuda {

namespace {

// True when every dimension of extent > 1 has the expected stride (a dimension of extent 0 or 1 never steps).
bool has_strides(const TensorView& view, std::initializer_list<int64_t> expected) {
  int d = 0;
  for (int64_t stride : expected) {
    if (view.size(d) > 1 && view.stride(d) != stride) return false;
    ++d;
  }
  return true;
}

bool aligned_16(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 16 == 0; }

Result<TileConfig> forced_or(TileConfig chosen) {
  const char* forced = std::getenv("FF_GEMM_TILE_CONFIG");
  if (forced == nullptr || *forced == '\0') return chosen;
  const std::optional<TileConfig> parsed = parse_tile_config(forced);
  if (!parsed) {
    std::string names;
    for (int i = 0; i < kNumTileConfigs; ++i) {
      names += std::string(i == 0 ? "" : ", ") + tile_config_name(static_cast<TileConfig>(i));
    }
    return invalid_argument("FF_GEMM_TILE_CONFIG={} names no kernel; expected one of {}", forced, names);
  }
  return *parsed;
}

// FF_GEMM_SCHEDULE=<raster>[:<swizzle>] (raster: default, m or n; swizzle: 1, 2, 4 or 8) overrides the tile
// scheduler's walk (experiments; bench_gemm.py times the variants; "default" is CUTLASS's own choice). Unset: the
// heuristic's `chosen` walk.
Result<Schedule> forced_schedule_or(Schedule chosen) {
  const char* forced = std::getenv("FF_GEMM_SCHEDULE");
  if (forced == nullptr || *forced == '\0') return chosen;
  Schedule schedule;
  const std::string_view text(forced);
  const size_t colon = text.find(':');
  const std::string_view raster = text.substr(0, colon);
  if (raster == "m") {
    schedule.raster = 1;
  } else if (raster == "n") {
    schedule.raster = 2;
  } else if (raster != "default") {
    return invalid_argument("FF_GEMM_SCHEDULE={}: raster '{}' is not one of default, m, n", forced, raster);
  }
  if (colon != std::string_view::npos) {
    const std::string_view swizzle = text.substr(colon + 1);
    if (swizzle == "1" || swizzle == "2" || swizzle == "4" || swizzle == "8") {
      schedule.swizzle = swizzle[0] - '0';
    } else {
      return invalid_argument("FF_GEMM_SCHEDULE={}: swizzle '{}' is not one of 1, 2, 4, 8", forced, swizzle);
    }
  }
  return schedule;
}

Status from_launch(std::string_view function, const std::string& error) {
  if (error.empty()) return Status::ok();
  return internal_error("{}: {}", function, error);
}

// Selects the tensors' device for the duration of a call, restoring the caller's afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int index) { error_ = switch_device(index, &previous_); }
  ~DeviceGuard() {
    int ignored = 0;
    if (error_.empty()) (void)switch_device(previous_, &ignored);
  }
  const std::string& error() const { return error_; }

 private:
  int previous_ = 0;
  std::string error_;
};

// Scratch scales in the kernel's layout, freed on the stream after the kernel that reads them.
struct ScratchScales {
  void* memory = nullptr;
  void* stream = nullptr;
  ~ScratchScales() { free_async(memory, stream); }
};

// Repacks A's scales into `scratch` (`floats` of them, freed on the stream after the kernel that reads them) as
// `repack` describes (source, shape and both layouts; the destination is set here) and returns the copy.
Result<const float*> repack_to_scratch(std::string_view function, RepackArgs repack, int64_t floats, void* stream,
                                       ScratchScales& scratch) {
  repack.stream = stream;
  scratch.stream = stream;
  FF_RETURN_IF_ERROR(from_launch(function, allocate_async(&scratch.memory, sizeof(float) * floats, stream)));
  repack.dst = static_cast<float*>(scratch.memory);
  FF_RETURN_IF_ERROR(from_launch(function, repack_scales(repack)));
  return static_cast<const float*>(repack.dst);
}

// Points *sa / *ld at A's scales in the M-major layout the dense and indexed kernels read (element (row, kb) at
// sa[row + kb * ld], ld a multiple of 4 floats, >= rows rounded up to 4): the caller's tensor when it already is
// so laid out (DeepGEMM's TMA-aligned column-major layout always is), else a repacked copy in `scratch`.
Status m_major_scales(std::string_view function, const TensorView& sa, int64_t rows, int64_t k_blocks, void* stream,
                      ScratchScales& scratch, const float** out, int64_t* ld_out) {
  const int64_t ld = k_blocks > 1 ? sa.stride(1) : (rows + 3) / 4 * 4;
  // The kernels read each column up to rows rounded up to 4 (sm90_fp8_gemm.cuh), so the direct path needs
  // ld >= that.
  if (has_strides(sa, {1}) && ld >= (rows + 3) / 4 * 4 && ld % 4 == 0 && aligned_16(sa.data)) {
    *out = static_cast<const float*>(sa.data);
    *ld_out = ld;
    return Status::ok();
  }
  RepackArgs repack;
  repack.src = static_cast<const float*>(sa.data);
  repack.rows = rows;
  repack.cols = k_blocks;
  repack.src_strides[1] = sa.stride(0);
  repack.src_strides[2] = sa.stride(1);
  *ld_out = (rows + 3) / 4 * 4;
  repack.dst_strides[1] = 1;
  repack.dst_strides[2] = *ld_out;
  FF_ASSIGN_OR_RETURN(*out, repack_to_scratch(function, repack, *ld_out * k_blocks, stream, scratch));
  return Status::ok();
}

// The masked-only kernels' layout of A's scales (G, rows, k_blocks): M-major per group, element (g, row, kb) at
// sa[g * group_stride + row + kb * ld], ld >= rows rounded up to 4, ld and group_stride multiples of 4 floats, 16-byte
// aligned. The caller's tensor when it already is so laid out (DeepGEMM's TMA-aligned column-major layout of a 3-D
// scale tensor is), else a repacked copy in `scratch`.
Status m_major_group_scales(std::string_view function, const TensorView& sa, int64_t groups, int64_t rows,
                            int64_t k_blocks, void* stream, ScratchScales& scratch, const float** out, int64_t* ld_out,
                            int64_t* group_stride_out) {
  const int64_t padded = (rows + 3) / 4 * 4;
  const int64_t ld = k_blocks > 1 ? sa.stride(2) : padded;
  const int64_t group_stride = groups > 1 ? sa.stride(0) : ld * k_blocks;
  if (sa.ndim == 3 && (rows <= 1 || sa.stride(1) == 1) && ld >= padded && ld % 4 == 0 && group_stride % 4 == 0 &&
      group_stride >= ld * k_blocks && aligned_16(sa.data)) {
    *out = static_cast<const float*>(sa.data);
    *ld_out = ld;
    *group_stride_out = group_stride;
    return Status::ok();
  }
  RepackArgs repack;
  repack.src = static_cast<const float*>(sa.data);
  repack.groups = groups;
  repack.rows = rows;
  repack.cols = k_blocks;
  repack.src_strides[0] = sa.stride(0);
  repack.src_strides[1] = sa.stride(1);
  repack.src_strides[2] = sa.stride(2);
  *ld_out = padded;
  *group_stride_out = padded * k_blocks;
  repack.dst_strides[0] = *group_stride_out;
  repack.dst_strides[1] = 1;
  repack.dst_strides[2] = padded;
  FF_ASSIGN_OR_RETURN(*out, repack_to_scratch(function, repack, groups * *group_stride_out, stream, scratch));
  return Status::ok();
}

}  // namespace

Status dense(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out, const internal::GemmShape& shape,
             const LaunchOptions& options) {
  if (shape.m == 0 || shape.n == 0) return Status::ok();
  DeviceGuard guard(out.device_index);
  FF_RETURN_IF_ERROR(from_launch("gemm_fp8_fp8_bf16_nt", guard.error()));
  const int64_t k_blocks = ceil_div(shape.k, kScaleBlock);
  DenseArgs args;
  args.a = a.data.data;
  args.b = b.data.data;
  args.sb = static_cast<const float*>(b.scales.data);
  args.out = out.data;
  args.m = static_cast<int>(shape.m);
  args.n = static_cast<int>(shape.n);
  args.k = static_cast<int>(shape.k);
  args.num_sms = get_num_sms();
  args.stream = options.stream;

  // The kernel reads sa M-major (DeepGEMM's TMA-aligned column-major layout); other layouts are repacked.
  ScratchScales scratch;
  FF_RETURN_IF_ERROR(m_major_scales("gemm_fp8_fp8_bf16_nt", a.scales, shape.m, k_blocks, options.stream, scratch,
                                    &args.sa, &args.sa_ld));
  FF_ASSIGN_OR_RETURN(const TileConfig config,
                      forced_or(choose_dense_config(shape.m, shape.n, shape.k, args.num_sms)));
  FF_ASSIGN_OR_RETURN(args.schedule,
                      forced_schedule_or(choose_schedule(config, false, shape.m, shape.n, shape.k, 1, args.num_sms)));
  if (is_indexed(config)) {
    return invalid_argument("FF_GEMM_TILE_CONFIG={}: the indexed kernels serve only the contiguous grouped GEMM",
                            tile_config_name(config));
  }
  if (is_masked_only(config)) {
    return invalid_argument("FF_GEMM_TILE_CONFIG={}: this kernel serves only the masked grouped GEMM",
                            tile_config_name(config));
  }
  return from_launch("gemm_fp8_fp8_bf16_nt", run_dense(config, args));
}

namespace {

// The ptr-array kernels read sa row-major: (m, kb) with strides (kb, 1), or (G, m, kb) with (m * kb, kb, 1); the
// indexed contiguous kernels read it M-major like the dense kernel, the masked-only ones M-major per group. Other
// layouts are repacked.
Status grouped(std::string_view function, GroupedArgs& args, const TensorView& sa, int64_t rows_per_group) {
  DeviceGuard guard(sa.device_index);
  FF_RETURN_IF_ERROR(from_launch(function, guard.error()));
  FF_ASSIGN_OR_RETURN(const TileConfig config, forced_or(choose_grouped_config(args.kind, rows_per_group, args.n,
                                                                               args.k, args.num_groups, args.num_sms)));
  FF_ASSIGN_OR_RETURN(args.schedule,
                      forced_schedule_or(choose_schedule(config, true, rows_per_group, args.n, args.k,
                                                         args.num_groups, args.num_sms)));
  if (is_indexed(config) && args.kind != GroupedKind::kContiguous) {
    return invalid_argument("FF_GEMM_TILE_CONFIG={}: the indexed kernels serve only the contiguous grouped GEMM",
                            tile_config_name(config));
  }
  if (is_dense_only(config)) {
    return invalid_argument("FF_GEMM_TILE_CONFIG={}: this kernel serves only the dense GEMM", tile_config_name(config));
  }
  if (is_masked_only(config) && args.kind != GroupedKind::kMasked) {
    return invalid_argument("FF_GEMM_TILE_CONFIG={}: this kernel serves only the masked grouped GEMM",
                            tile_config_name(config));
  }
  const int64_t k_blocks = ceil_div(args.k, kScaleBlock);
  ScratchScales scratch;
  if (is_masked_only(config)) {
    FF_RETURN_IF_ERROR(m_major_group_scales(function, sa, args.num_groups, args.m, k_blocks, args.stream, scratch,
                                            &args.sa, &args.sa_ld, &args.sa_group_stride));
    return from_launch(function, run_grouped(config, args));
  }
  if (is_indexed(config)) {
    FF_RETURN_IF_ERROR(m_major_scales(function, sa, args.m, k_blocks, args.stream, scratch, &args.sa, &args.sa_ld));
    return from_launch(function, run_grouped(config, args));
  }
  const bool is_3d = sa.ndim == 3;
  const bool row_major = is_3d ? has_strides(sa, {args.m * k_blocks, k_blocks, 1}) : has_strides(sa, {k_blocks, 1});
  if (row_major) {
    args.sa = static_cast<const float*>(sa.data);
  } else {
    RepackArgs repack;
    repack.src = static_cast<const float*>(sa.data);
    repack.groups = is_3d ? sa.size(0) : 1;
    repack.rows = args.m;
    repack.cols = k_blocks;
    repack.src_strides[0] = is_3d ? sa.stride(0) : 0;
    repack.src_strides[1] = sa.stride(is_3d ? 1 : 0);
    repack.src_strides[2] = sa.stride(is_3d ? 2 : 1);
    repack.dst_strides[0] = args.m * k_blocks;
    repack.dst_strides[1] = k_blocks;
    repack.dst_strides[2] = 1;
    FF_ASSIGN_OR_RETURN(args.sa,
                        repack_to_scratch(function, repack, repack.groups * args.m * k_blocks, args.stream, scratch));
  }
  return from_launch(function, run_grouped(config, args));
}

}  // namespace

namespace {

// The arguments both grouped GEMMs share; `indices` is m_indices (contiguous) or masked_m (masked).
GroupedArgs grouped_args(GroupedKind kind, const ScaledTensor& a, const ScaledTensor& b, const TensorView& out,
                         const TensorView& indices, const internal::GemmShape& shape, const LaunchOptions& options) {
  GroupedArgs args;
  args.kind = kind;
  args.a = a.data.data;
  args.b = b.data.data;
  args.sb = static_cast<const float*>(b.scales.data);
  args.out = out.data;
  args.indices = static_cast<const int32_t*>(indices.data);
  args.num_groups = static_cast<int>(shape.num_groups);
  args.m = static_cast<int>(shape.m);
  args.n = static_cast<int>(shape.n);
  args.k = static_cast<int>(shape.k);
  args.num_sms = get_num_sms();
  args.stream = options.stream;
  return args;
}

}  // namespace

Status contiguous(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out, const TensorView& m_indices,
                  const internal::GemmShape& shape, const LaunchOptions& options) {
  if (shape.m == 0 || shape.n == 0 || shape.num_groups == 0) return Status::ok();
  GroupedArgs args = grouped_args(GroupedKind::kContiguous, a, b, out, m_indices, shape, options);
  return grouped("m_grouped_gemm_fp8_fp8_bf16_nt_contiguous", args, a.scales, shape.m / shape.num_groups);
}

Status masked(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out, const TensorView& masked_m,
              int64_t expected_m, const internal::GemmShape& shape, const LaunchOptions& options) {
  if (shape.m == 0 || shape.n == 0 || shape.num_groups == 0) return Status::ok();
  GroupedArgs args = grouped_args(GroupedKind::kMasked, a, b, out, masked_m, shape, options);
  // expected_m = 0 carries no hint: plan for full groups.
  return grouped("m_grouped_gemm_fp8_fp8_bf16_nt_masked", args, a.scales,
                 expected_m > 0 ? std::min(expected_m, shape.m) : shape.m);
}

Status wgrad(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out, const internal::GemmShape& shape,
             const LaunchOptions& options) {
  if (shape.m == 0 || shape.n == 0 || shape.k == 0) return Status::ok();
  DeviceGuard guard(out.device_index);
  FF_RETURN_IF_ERROR(from_launch("wgrad_gemm_fp8_fp8_fp32_nt", guard.error()));
  const int64_t k_blocks = ceil_div(shape.k, kScaleBlock);
  WgradArgs args;
  args.a = a.data.data;
  args.b = b.data.data;
  args.out = static_cast<float*>(out.data);
  args.m = static_cast<int>(shape.m);
  args.n = static_cast<int>(shape.n);
  args.k = static_cast<int>(shape.k);
  args.num_sms = get_num_sms();
  args.stream = options.stream;
  // Both scale tensors are read M-/N-major (DeepGEMM's TMA-aligned transposed layout); others are repacked.
  ScratchScales scratch_a;
  ScratchScales scratch_b;
  FF_RETURN_IF_ERROR(m_major_scales("wgrad_gemm_fp8_fp8_fp32_nt", a.scales, shape.m, k_blocks, options.stream,
                                    scratch_a, &args.sa, &args.sa_ld));
  FF_RETURN_IF_ERROR(m_major_scales("wgrad_gemm_fp8_fp8_fp32_nt", b.scales, shape.n, k_blocks, options.stream,
                                    scratch_b, &args.sb, &args.sb_ld));
  return from_launch("wgrad_gemm_fp8_fp8_fp32_nt", run_wgrad(args));
}

}  // namespace ff::gemm::cuda
