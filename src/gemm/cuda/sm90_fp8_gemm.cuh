// CUTLASS 4.2 type definitions of the sm_90a FP8 GEMMs with DeepGEMM's fine-grained scaling, and their host
// launchers. Included by one .cu file per tile configuration (sm90_fp8_dense_*.cu, sm90_fp8_grouped_*.cu) so that
// the configurations compile in parallel and each translation unit holds few instantiations.
//
// The mainloop is CUTLASS's KernelTmaWarpSpecialized{Cooperative,Pingpong}FP8Blockwise collective: a TMA producer
// warp loads A/B tiles into a multi-stage shared-memory pipeline on mbarriers, a scale producer warp loads the
// scales, WGMMA consumer warpgroups accumulate one 128-wide K block in fp32 on the tensor cores and then add it,
// multiplied by sa[row, kb] * sb[n/128, kb], into a second fp32 accumulator in registers (two-level
// accumulation). The epilogue converts to bf16 and stores by TMA. Persistent grid of at most num_sms CTAs.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/detail/blockwise_scale_layout.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "launch.h"

namespace ff::gemm::cuda {

namespace detail {

using ElementA = cutlass::float_e4m3_t;
using ElementB = cutlass::float_e4m3_t;
using ElementD = cutlass::bfloat16_t;
using LayoutA = cutlass::layout::RowMajor;     // (m, k), k contiguous
using LayoutB = cutlass::layout::ColumnMajor;  // (k, n) column-major == our (n, k) row-major
using LayoutD = cutlass::layout::RowMajor;     // (m, n), n contiguous
inline constexpr int kAlignmentAB = 16;        // elements: 16 bytes for TMA
inline constexpr int kAlignmentD = 8;

// Scale granularity: 1x128 for A, 128x128 for B. A's scales are M-major for the dense kernel (DeepGEMM's
// TMA-aligned column-major layout, loaded by TMA) and K-major (row-major) for the grouped kernels: CUTLASS's
// ptr-array collective derives each group's scale layout from that group's problem shape, so an M-major layout
// would need a leading dimension equal to each group's m (masked_m[g] or the segment length), which no caller
// has. B's scales are K-major (row-major) everywhere.
using DenseScaleConfig =
    cutlass::detail::Sm90BlockwiseScaleConfig<1, 128, 128, cute::GMMA::Major::MN, cute::GMMA::Major::K>;
using GroupedScaleConfig =
    cutlass::detail::Sm90BlockwiseScaleConfig<1, 128, 128, cute::GMMA::Major::K, cute::GMMA::Major::K>;

inline std::string cutlass_error(const char* what, cutlass::Status status) {
  return std::string(what) + ": " + cutlass::cutlassGetStatusString(status);
}

}  // namespace detail

// Dense GEMM type for one tile configuration.
template <class TileShape, class ClusterShape, class MainloopSchedule, class EpilogueSchedule>
struct DenseGemm {
  using ScaleConfig = detail::DenseScaleConfig;
  using LayoutSFA = decltype(ScaleConfig::deduce_layoutSFA());
  using LayoutSFB = decltype(ScaleConfig::deduce_layoutSFB());

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, detail::LayoutD, detail::kAlignmentD,
      detail::ElementD, detail::LayoutD, detail::kAlignmentD, EpilogueSchedule>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, detail::ElementA, cute::tuple<detail::LayoutA, LayoutSFA>,
      detail::kAlignmentAB, detail::ElementB, cute::tuple<detail::LayoutB, LayoutSFB>, detail::kAlignmentAB, float,
      TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      MainloopSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, CollectiveMainloop,
                                                      CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static std::string run(const DenseArgs& args) {
    using StrideA = typename Kernel::StrideA;
    using StrideB = typename Kernel::StrideB;
    using StrideD = typename Kernel::StrideD;
    const int m = args.m, n = args.n, k = args.k;
    StrideA stride_a = cute::make_stride(int64_t(k), cute::Int<1>{}, int64_t(0));
    StrideB stride_b = cute::make_stride(int64_t(k), cute::Int<1>{}, int64_t(0));
    StrideD stride_d = cute::make_stride(int64_t(n), cute::Int<1>{}, int64_t(0));
    // (m, kb) M-major with leading dimension sa_ld (>= m): ((1, m), (128, kb), l) : ((0, 1), (0, sa_ld), ...).
    const int32_t k_blocks = (k + 127) / 128;
    const auto sa_ld = static_cast<int32_t>(args.sa_ld);
    // NOTE: the M extent is m rounded up to 4 (<= sa_ld): the kernel loads the scales by TMA, which needs the
    // contiguous extent in whole 16-byte units (can_implement rejects m % 4 != 0 otherwise). The padding rows
    // lie inside the TMA-aligned layout's columns and only feed output rows >= m, which are never stored.
    const int32_t m_padded = (m + 3) / 4 * 4;
    LayoutSFA layout_sfa = cute::make_layout(
        cute::make_shape(cute::make_shape(cute::Int<1>{}, m_padded), cute::make_shape(cute::Int<128>{}, k_blocks),
                         1),
        cute::make_stride(cute::make_stride(cute::Int<0>{}, cute::Int<1>{}), cute::make_stride(cute::Int<0>{}, sa_ld),
                          sa_ld * k_blocks));
    LayoutSFB layout_sfb = ScaleConfig::tile_atom_to_shape_SFB(cute::make_shape(m, n, k, 1));

    cutlass::KernelHardwareInfo hw_info;
    hw_info.device_id = 0;
    cudaGetDevice(&hw_info.device_id);
    hw_info.sm_count = args.num_sms;

    typename Gemm::Arguments arguments{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {m, n, k, 1},
        {static_cast<const detail::ElementA*>(args.a), stride_a, static_cast<const detail::ElementB*>(args.b),
         stride_b, args.sa, layout_sfa, args.sb, layout_sfb},
        {{}, nullptr, stride_d, static_cast<detail::ElementD*>(args.out), stride_d},
        hw_info};
    arguments.epilogue.thread.alpha = 1.0f;
    arguments.epilogue.thread.beta = 0.0f;

    Gemm gemm;
    cutlass::Status status = gemm.can_implement(arguments);
    if (status != cutlass::Status::kSuccess) return detail::cutlass_error("can_implement", status);
    const size_t workspace_bytes = Gemm::get_workspace_size(arguments);
    void* workspace = nullptr;
    if (workspace_bytes > 0) {
      std::string error = allocate_async(&workspace, workspace_bytes, args.stream);
      if (!error.empty()) return error;
    }
    const auto stream = static_cast<cudaStream_t>(args.stream);
    status = gemm.initialize(arguments, workspace, stream);
    if (status == cutlass::Status::kSuccess) status = gemm.run(stream);
    if (workspace != nullptr) free_async(workspace, args.stream);
    if (status != cutlass::Status::kSuccess) return detail::cutlass_error("launch", status);
    const cudaError_t launched = cudaGetLastError();
    if (launched != cudaSuccess) return std::string("launch: ") + cudaGetErrorString(launched);
    return {};
  }
};


namespace detail {

// The per-problem arrays the ptr-array kernel reads, carved out of one stream-ordered allocation.
template <class ProblemShape, class StrideA, class StrideB, class StrideD, class LayoutSFA, class LayoutSFB>
struct GroupedProblems {
  ProblemShape* shapes;
  const ElementA** a;
  const ElementB** b;
  const float** sa;
  const float** sb;
  ElementD** d;
  StrideA* stride_a;
  StrideB* stride_b;
  StrideD* stride_d;
  LayoutSFA* layout_sfa;
  LayoutSFB* layout_sfb;
  int32_t* block_group;  // contiguous only: the group of each 128-row block, -1 for padding
};

inline constexpr int kSetupThreads = 1024;
inline constexpr int kRowBlock = 128;  // get_m_alignment_for_contiguous_layout()

template <class Problems>
__device__ void write_problem(const Problems& p, int index, int rows, int group, int64_t first_row,
                              const GroupedArgs& args) {
  const int n = args.n, k = args.k;
  const int k_blocks = (k + 127) / 128, n_blocks = (n + 127) / 128;
  p.shapes[index] = cute::make_shape(rows, n, k);
  p.a[index] = static_cast<const ElementA*>(args.a) + first_row * k;
  p.sa[index] = args.sa + first_row * k_blocks;
  p.d[index] = static_cast<ElementD*>(args.out) + first_row * n;
  const int g = group < 0 ? 0 : group;  // rows == 0 problems still point at valid memory
  p.b[index] = static_cast<const ElementB*>(args.b) + int64_t(g) * n * k;
  p.sb[index] = args.sb + int64_t(g) * n_blocks * k_blocks;
  p.stride_a[index] = cute::make_stride(int64_t(k), cute::Int<1>{}, cute::Int<0>{});
  p.stride_b[index] = cute::make_stride(int64_t(k), cute::Int<1>{}, cute::Int<0>{});
  p.stride_d[index] = cute::make_stride(int64_t(n), cute::Int<1>{}, cute::Int<0>{});
  p.layout_sfa[index] = GroupedScaleConfig::tile_atom_to_shape_SFA(cute::make_shape(rows, n, k, 1));
  p.layout_sfb[index] = GroupedScaleConfig::tile_atom_to_shape_SFB(cute::make_shape(rows, n, k, 1));
}

// Masked: problem g = (masked_m[g], n, k) over group g's slab. One thread per group.
template <class Problems>
__global__ void build_masked_problems(Problems problems, GroupedArgs args) {
  for (int g = blockIdx.x * blockDim.x + threadIdx.x; g < args.num_groups; g += gridDim.x * blockDim.x) {
    int rows = args.indices[g];
    rows = rows < 0 ? 0 : (rows > args.m ? args.m : rows);  // the kernel trusts device-resident counts; clamp
    write_problem(problems, g, rows, g, int64_t(g) * args.m, args);
  }
}

// Contiguous: one problem per maximal run of 128-row blocks of the same group (a group's whole segment in the
// usual layout), indexed by the run's first block; every other block's problem is empty (0 rows), so the
// problem count (ceil(m / 128)) is known on the host without reading m_indices. A run's rows end after its last
// row with a valid index, so trailing padding rows are not even read. One CTA: the scans are tiny next to the
// GEMM (m / 128 entries).
template <class Problems>
__global__ void __launch_bounds__(kSetupThreads) build_contiguous_problems(Problems problems, GroupedArgs args) {
  const int num_blocks = (args.m + kRowBlock - 1) / kRowBlock;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int block = warp; block < num_blocks; block += kSetupThreads / 32) {
    int group = -1;
    for (int row = block * kRowBlock + lane; row < min(args.m, (block + 1) * kRowBlock); row += 32) {
      group = max(group, args.indices[row]);
    }
    for (int offset = 16; offset > 0; offset /= 2) group = max(group, __shfl_xor_sync(0xffffffffu, group, offset));
    if (lane == 0) problems.block_group[block] = group < args.num_groups ? group : -1;
  }
  __syncthreads();
  for (int block = threadIdx.x; block < num_blocks; block += kSetupThreads) {
    const int group = problems.block_group[block];
    const bool starts_run = group >= 0 && (block == 0 || problems.block_group[block - 1] != group);
    int rows = 0;
    if (starts_run) {
      int end = block + 1;
      while (end < num_blocks && problems.block_group[end] == group) ++end;
      // Trim trailing padding rows of the run's last block.
      int last_row = min(args.m, end * kRowBlock) - 1;
      while (last_row > (end - 1) * kRowBlock && args.indices[last_row] != group) --last_row;
      rows = last_row + 1 - block * kRowBlock;
    }
    write_problem(problems, block, rows, group, int64_t(block) * kRowBlock, args);
  }
}

inline size_t align_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace detail

// Grouped (ptr-array) GEMM type for one tile configuration; serves the contiguous and the masked layouts.
template <class TileShape, class ClusterShape, class MainloopSchedule, class EpilogueSchedule>
struct GroupedGemm {
  using ScaleConfig = detail::GroupedScaleConfig;
  using LayoutSFA = decltype(ScaleConfig::deduce_layoutSFA());
  using LayoutSFB = decltype(ScaleConfig::deduce_layoutSFB());
  using ProblemShape = cutlass::gemm::GroupProblemShape<cute::Shape<int, int, int>>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, detail::LayoutD*, detail::kAlignmentD,
      detail::ElementD, detail::LayoutD*, detail::kAlignmentD, EpilogueSchedule>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, detail::ElementA,
      cute::tuple<detail::LayoutA*, LayoutSFA*>, detail::kAlignmentAB, detail::ElementB,
      cute::tuple<detail::LayoutB*, LayoutSFB*>, detail::kAlignmentAB, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      MainloopSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using StrideA = typename Kernel::InternalStrideA;
  using StrideB = typename Kernel::InternalStrideB;
  using StrideD = typename Kernel::InternalStrideD;
  using Problems = detail::GroupedProblems<typename ProblemShape::UnderlyingProblemShape, StrideA, StrideB, StrideD,
                                           LayoutSFA, LayoutSFB>;

  static typename Gemm::Arguments make_arguments(const Problems& p, int num_problems, int num_sms) {
    cutlass::KernelHardwareInfo hw_info;
    hw_info.device_id = 0;
    cudaGetDevice(&hw_info.device_id);
    hw_info.sm_count = num_sms;
    typename Gemm::Arguments arguments{
        cutlass::gemm::GemmUniversalMode::kGrouped,
        {num_problems, p.shapes, nullptr},
        {p.a, p.stride_a, p.b, p.stride_b, p.sa, p.layout_sfa, p.sb, p.layout_sfb},
        {{}, nullptr, p.stride_d, p.d, p.stride_d},
        hw_info};
    auto& fusion = arguments.epilogue.thread;
    fusion.alpha = 1.0f;
    fusion.beta = 0.0f;
    fusion.alpha_ptr = nullptr;
    fusion.beta_ptr = nullptr;
    fusion.alpha_ptr_array = nullptr;
    fusion.beta_ptr_array = nullptr;
    fusion.dAlpha = {cute::_0{}, cute::_0{}, 0};
    fusion.dBeta = {cute::_0{}, cute::_0{}, 0};
    return arguments;
  }

  static std::string run(const GroupedArgs& args) {
    const bool contiguous = args.kind == GroupedKind::kContiguous;
    const int num_blocks = (args.m + detail::kRowBlock - 1) / detail::kRowBlock;
    const int num_problems = contiguous ? num_blocks : args.num_groups;
    if (num_problems == 0) return {};
    const auto count = static_cast<size_t>(num_problems);

    // One allocation: the problem arrays, then CUTLASS's workspace (per-SM tensor maps).
    Problems p{};
    size_t offsets[13];
    const size_t sizes[12] = {sizeof(*p.shapes) * count,     sizeof(*p.a) * count,          sizeof(*p.b) * count,
                              sizeof(*p.sa) * count,         sizeof(*p.sb) * count,         sizeof(*p.d) * count,
                              sizeof(*p.stride_a) * count,   sizeof(*p.stride_b) * count,   sizeof(*p.stride_d) * count,
                              sizeof(*p.layout_sfa) * count, sizeof(*p.layout_sfb) * count, sizeof(int32_t) * count};
    offsets[0] = 0;
    for (int i = 0; i < 12; ++i) offsets[i + 1] = offsets[i] + detail::align_up(sizes[i]);
    const size_t cutlass_workspace = Gemm::get_workspace_size(make_arguments(p, num_problems, args.num_sms));
    void* base = nullptr;
    std::string error = allocate_async(&base, offsets[12] + cutlass_workspace, args.stream);
    if (!error.empty()) return error;
    auto* bytes = static_cast<char*>(base);
    p.shapes = reinterpret_cast<decltype(p.shapes)>(bytes + offsets[0]);
    p.a = reinterpret_cast<decltype(p.a)>(bytes + offsets[1]);
    p.b = reinterpret_cast<decltype(p.b)>(bytes + offsets[2]);
    p.sa = reinterpret_cast<decltype(p.sa)>(bytes + offsets[3]);
    p.sb = reinterpret_cast<decltype(p.sb)>(bytes + offsets[4]);
    p.d = reinterpret_cast<decltype(p.d)>(bytes + offsets[5]);
    p.stride_a = reinterpret_cast<decltype(p.stride_a)>(bytes + offsets[6]);
    p.stride_b = reinterpret_cast<decltype(p.stride_b)>(bytes + offsets[7]);
    p.stride_d = reinterpret_cast<decltype(p.stride_d)>(bytes + offsets[8]);
    p.layout_sfa = reinterpret_cast<decltype(p.layout_sfa)>(bytes + offsets[9]);
    p.layout_sfb = reinterpret_cast<decltype(p.layout_sfb)>(bytes + offsets[10]);
    p.block_group = reinterpret_cast<int32_t*>(bytes + offsets[11]);
    void* workspace = bytes + offsets[12];

    const auto stream = static_cast<cudaStream_t>(args.stream);
    if (contiguous) {
      detail::build_contiguous_problems<<<1, detail::kSetupThreads, 0, stream>>>(p, args);
    } else {
      detail::build_masked_problems<<<(num_problems + 255) / 256, 256, 0, stream>>>(p, args);
    }
    cudaError_t launched = cudaGetLastError();
    std::string result;
    if (launched != cudaSuccess) {
      result = std::string("problem setup launch: ") + cudaGetErrorString(launched);
    } else {
      auto arguments = make_arguments(p, num_problems, args.num_sms);
      Gemm gemm;
      cutlass::Status status = gemm.can_implement(arguments);
      if (status == cutlass::Status::kSuccess) status = gemm.initialize(arguments, workspace, stream);
      if (status == cutlass::Status::kSuccess) status = gemm.run(stream);
      if (status != cutlass::Status::kSuccess) {
        result = detail::cutlass_error("grouped gemm", status);
      } else if (contiguous) {
        result = zero_padding_rows(args);
      }
      launched = cudaGetLastError();
      if (result.empty() && launched != cudaSuccess) result = std::string("launch: ") + cudaGetErrorString(launched);
    }
    free_async(base, args.stream);
    return result;
  }
};

}  // namespace ff::gemm::cuda
