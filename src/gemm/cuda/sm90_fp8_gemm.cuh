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

#include <algorithm>
#include <numeric>
#include <string>
#include <type_traits>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/detail/blockwise_scale_layout.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/epilogue/thread/activation.h"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/gemm/kernel/tile_scheduler.hpp"
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

// The epilogue's work on each fp32 accumulator (the scales were applied in the mainloop): ConvertToD converts it to
// bf16 and nothing else; AlphaBetaD is CUTLASS's default, alpha * acc (+ beta * C, C void here), one FMUL per element
// with alpha = 1. The dense kernels use ConvertToD (1.006-1.066x faster on all 18 dense benchmark shapes, H200, same
// run); the contiguous and masked ones keep AlphaBetaD, which was as fast or faster there (0.99x geometric mean of
// their times; docs/gemm.md "The epilogue's conversion"). The 256-row tiles with the 1x2 cluster store through
// WholeTileEpilogue (below), which converts only, whatever the fusion.
using ConvertToD = cutlass::epilogue::fusion::Sm90EVT<
    cutlass::epilogue::fusion::Sm90Compute<cutlass::epilogue::thread::Identity, ElementD, float,
                                           cutlass::FloatRoundStyle::round_to_nearest>,
    cutlass::epilogue::fusion::Sm90AccFetch>;
using AlphaBetaD = cutlass::epilogue::fusion::LinearCombination<ElementD, float, void, float>;

// The fusion a schedule takes: the epilogue without shared memory (the masked ping-pong tiles' registers-to-global
// store) is built from a thread-level operation only, so it keeps CUTLASS's default.
template <class EpilogueSchedule, class Fusion>
using FusionFor = std::conditional_t<std::is_base_of_v<cutlass::epilogue::NoSmemWarpSpecialized, EpilogueSchedule>,
                                     AlphaBetaD, Fusion>;

// Sets alpha = 1 and beta = 0 where the epilogue has them (AlphaBetaD); ConvertToD has no arguments. (The CUDA
// translation units are C++17: a detection trait instead of a requires-expression.)
template <class ThreadArguments, class = void>
struct HasAlpha : std::false_type {};
template <class ThreadArguments>
struct HasAlpha<ThreadArguments, std::void_t<decltype(std::declval<ThreadArguments&>().alpha)>> : std::true_type {};

template <class ThreadArguments>
void set_unit_scaling(ThreadArguments& thread) {
  if constexpr (HasAlpha<ThreadArguments>::value) {
    thread.alpha = 1.0f;
    thread.beta = 0.0f;
  }
}

// Scale granularity: 1x128 for A, 128x128 for B. A's scales are M-major for the dense kernel (DeepGEMM's
// TMA-aligned column-major layout, loaded by TMA) and K-major (row-major) for the grouped kernels: CUTLASS's
// ptr-array collective derives each group's scale layout from that group's problem shape, so an M-major layout
// would need a leading dimension equal to each group's m (masked_m[g] or the segment length), which no caller
// has. B's scales are K-major (row-major) everywhere.
//
// kScaleN is the B-scale granularity along n the kernel is built with: 128 (the caller's 128x128 blocks) for tiles
// whose N is a multiple of 128, 64 for the 192-wide tiles, 16 for the 112-wide ones and the tile's width for the
// narrow 64-row ones (CUTLASS requires the tile's N to be a multiple of it). The dense and indexed kernels built
// finer than 128 read the caller's 128-row blocks directly (DirectScalesB, WideTileMma<..., true>); the grouped
// ptr-array ones, and the dense ones with FF_GEMM_EXPAND_B_SCALES=1, read a copy expanded to (ceil(n/kScaleN), kb)
// first (ScalesB below).
template <int kScaleN>
using DenseScaleConfigN =
    cutlass::detail::Sm90BlockwiseScaleConfig<1, kScaleN, 128, cute::GMMA::Major::MN, cute::GMMA::Major::K>;
template <int kScaleN>
using GroupedScaleConfigN =
    cutlass::detail::Sm90BlockwiseScaleConfig<1, kScaleN, 128, cute::GMMA::Major::K, cute::GMMA::Major::K>;
using DenseScaleConfig = DenseScaleConfigN<128>;
using GroupedScaleConfig = GroupedScaleConfigN<128>;

// B's scales as a kernel with B-scale granularity kScaleN and tile width kTileN reads them: the caller's sb for 128,
// else a copy expanded to (groups, scale_n(n) / kScaleN, kb) in stream-ordered scratch memory, freed
// (stream-ordered, after the kernels enqueued before) when this goes out of scope. scale_n(n) rounds n up to whole
// tiles, so a tile reads every scale block it covers inside its own group's rows (the ptr-array kernel's scale
// loads are not bounded by n: without the padding they read past the last group, found by compute-sanitizer);
// the padding repeats the last 128-row block's scale and only feeds output columns >= n, which are not stored.
template <int kScaleN, int kTileN>
struct ScalesB {
  static_assert(128 % kScaleN == 0, "B-scale granularity must divide the 128-row scale block");
  static_assert(kTileN % kScaleN == 0, "the tile must hold whole scale blocks");
  static constexpr int kScaleBlock = kScaleN;
  __host__ __device__ static int scale_n(int n) { return kScaleN == 128 ? n : (n + kTileN - 1) / kTileN * kTileN; }
  const float* sb = nullptr;
  void* scratch = nullptr;
  void* stream = nullptr;
  ScalesB() = default;
  ScalesB(const ScalesB&) = delete;
  ScalesB& operator=(const ScalesB&) = delete;
  ~ScalesB() { free_async(scratch, stream); }

  std::string prepare(const float* src, int64_t groups, int n, int k, void* on_stream) {
    stream = on_stream;
    if constexpr (kScaleN == 128) {
      sb = src;
      return {};
    } else {
      const int64_t k_blocks = (k + 127) / 128;
      const int64_t n_blocks = scale_n(n) / kScaleN;
      std::string error = allocate_async(&scratch, sizeof(float) * groups * n_blocks * k_blocks, stream);
      if (!error.empty()) return error;
      sb = static_cast<const float*>(scratch);
      return expand_b_scales(src, static_cast<float*>(scratch), groups, n, n_blocks, k_blocks, kScaleN, stream);
    }
  }
};

// Applies a Schedule to CUTLASS's tile scheduler arguments (any scheduler with raster_order / max_swizzle_size).
template <class SchedulerArguments>
void apply_schedule(SchedulerArguments& scheduler, const Schedule& schedule) {
  using Raster = decltype(scheduler.raster_order);
  if (schedule.raster == 1) scheduler.raster_order = Raster::AlongM;
  if (schedule.raster == 2) scheduler.raster_order = Raster::AlongN;
  if (schedule.swizzle > 0) scheduler.max_swizzle_size = schedule.swizzle;
}

inline std::string cutlass_error(const char* what, cutlass::Status status) {
  return std::string(what) + ": " + cutlass::cutlassGetStatusString(status);
}

// Enqueues a CUTLASS GemmUniversalAdapter on `stream`: can_implement, its workspace (stream-ordered scratch, freed
// after the kernel), initialize, run. Empty when enqueued, else what failed ("<what>: <CUTLASS status>" or the
// launch's CUDA error). `after_kernel`: the last operation on the stream is a small kernel of this call that triggers
// its dependents at its start (expand_b_scales): the GEMM is then launched as a programmatic dependent (PDL), so
// its launch and prologue overlap that kernel; its producer warps wait (griddepcontrol.wait, compiled in with
// CUTLASS_ENABLE_GDC_FOR_SM90) until that kernel has finished and its writes are visible, before any global load.
// FF_GEMM_PDL=0 in the environment launches it normally (for A/B runs).
template <class Gemm>
std::string launch_gemm(typename Gemm::Arguments const& arguments, const char* what, void* stream,
                        bool after_kernel = false) {
  std::string result;
  Gemm gemm;
  cutlass::Status status = gemm.can_implement(arguments);
  void* workspace = nullptr;
  if (status == cutlass::Status::kSuccess) {
    const size_t workspace_bytes = Gemm::get_workspace_size(arguments);
    if (workspace_bytes > 0) result = allocate_async(&workspace, workspace_bytes, stream);
    if (result.empty()) {
      status = gemm.initialize(arguments, workspace, static_cast<cudaStream_t>(stream));
      if (status == cutlass::Status::kSuccess) {
        status = gemm.run(static_cast<cudaStream_t>(stream), nullptr, after_kernel && programmatic_launch_enabled());
      }
    }
  }
  if (result.empty() && status != cutlass::Status::kSuccess) result = cutlass_error(what, status);
  const cudaError_t launched = cudaGetLastError();
  if (result.empty() && launched != cudaSuccess) result = std::string("launch: ") + cudaGetErrorString(launched);
  free_async(workspace, stream);
  return result;
}

// The consumers' per-stage scale vectors in shared memory broadcast over the tile, (BLK_M, BLK_N, (1, PIPE)), so
// that partition_C gives each thread the scales of its accumulators: A's per row, B's per column block.
template <class Base>
CUTLASS_DEVICE auto broadcast_scales_a(typename Base::TensorStorage& shared_tensors) {
  using namespace cute;
  using Smem = typename Base::SmemLayoutSFA;
  return make_tensor(
      make_smem_ptr(shared_tensors.smem_SFA.data()),
      make_layout(make_shape(shape<0>(Smem{}), get<1>(typename Base::TileShape{}),
                             make_shape(shape<1>(Smem{}), shape<2>(Smem{}))),
                  make_stride(stride<0>(Smem{}), _0{}, make_stride(stride<1>(Smem{}), stride<2>(Smem{})))));
}
template <class Base>
CUTLASS_DEVICE auto broadcast_scales_b(typename Base::TensorStorage& shared_tensors) {
  using namespace cute;
  using Smem = typename Base::SmemLayoutSFB;
  return make_tensor(
      make_smem_ptr(shared_tensors.smem_SFB.data()),
      make_layout(make_shape(get<0>(typename Base::TileShape{}), shape<0>(Smem{}),
                             make_shape(shape<1>(Smem{}), shape<2>(Smem{}))),
                  make_stride(_0{}, stride<0>(Smem{}), make_stride(stride<1>(Smem{}), stride<2>(Smem{})))));
}
// What a consumer reads per stage, partitioned for the calling thread: `a` and `b`, the WGMMA operand descriptors of
// its warpgroup ((MMA, MMA_M, MMA_K, PIPE) and (MMA, MMA_N, MMA_K, PIPE)); `sfa` and `sfb`, the scales broadcast
// over the tile and partitioned like its accumulators ((MMA, MMA_M, MMA_N, (1, PIPE))).
template <class A, class B, class ScalesA, class ScalesB>
struct ConsumerOperands {
  A a;
  B b;
  ScalesA sfa;
  ScalesB sfb;
};
template <class Base, class TiledMma>
CUTLASS_DEVICE auto consumer_operands(TiledMma& tiled_mma, typename Base::TensorStorage& shared_tensors,
                                      int thread_idx) {
  using namespace cute;
  constexpr int kWarpGroupThreads = cutlass::NumThreadsPerWarpGroup;
  constexpr int kWarpGroups = size(TiledMma{}) / kWarpGroupThreads;
  const Layout warp_group_thread_layout = make_layout(Int<kWarpGroups>{}, Int<kWarpGroupThreads>{});
  const int warp_group = __shfl_sync(0xffffffff, thread_idx / kWarpGroupThreads, 0);
  auto thread_mma = tiled_mma.get_slice(warp_group_thread_layout(warp_group));
  Tensor s_a = make_tensor(make_smem_ptr(shared_tensors.smem_A.data()), typename Base::SmemLayoutA{});
  Tensor s_b = make_tensor(make_smem_ptr(shared_tensors.smem_B.data()), typename Base::SmemLayoutB{});
  Tensor a = thread_mma.make_fragment_A(thread_mma.partition_A(s_a));
  Tensor b = thread_mma.make_fragment_B(thread_mma.partition_B(s_b));
  Tensor sfa = tiled_mma.get_slice(thread_idx).partition_C(broadcast_scales_a<Base>(shared_tensors));
  Tensor sfb = tiled_mma.get_slice(thread_idx).partition_C(broadcast_scales_b<Base>(shared_tensors));
  return ConsumerOperands<decltype(a), decltype(b), decltype(sfa), decltype(sfb)>{a, b, sfa, sfb};
}

inline constexpr int kRowBlock = 128;  // get_m_alignment_for_contiguous_layout()

// The groups of a contiguous-layout tile's 128-row blocks (kBlocksPerTile of them, 1 or 2): `first` and `second`
// (equal for one block). A padding block (-1, or any index outside [0, num_groups)) takes its neighbour's group,
// so a tile of one group and padding runs as one group; a tile of padding only computes with group 0 (its rows are
// zeroed afterwards). block_group == nullptr: a dense GEMM, one group.
struct TileGroups {
  int first = 0;
  int second = 0;
  CUTLASS_HOST_DEVICE bool two() const { return first != second; }
};
template <int kBlocksPerTile>
CUTLASS_DEVICE TileGroups tile_groups(const int32_t* block_group, int num_blocks, int num_groups, int m_tile) {
  static_assert(kBlocksPerTile == 1 || kBlocksPerTile == 2, "tiles of 128 or 256 rows");
  if (block_group == nullptr) return {};
  auto group_at = [&](int block) {
    const int group = block < num_blocks ? block_group[block] : -1;
    return group >= 0 && group < num_groups ? group : -1;
  };
  const int first = group_at(m_tile * kBlocksPerTile);
  const int second = kBlocksPerTile == 2 ? group_at(m_tile * kBlocksPerTile + 1) : first;
  if (first < 0 && second < 0) return {};
  return {first < 0 ? second : first, second < 0 ? first : second};
}

}  // namespace detail

// Whether a blockwise collective loads A's scales by TMA (the dense one with M-major scales); the ptr-array one has no
// such member and loads them by cp.async.
template <class Collective, class = void>
struct LoadsScalesATma : std::false_type {};
template <class Collective>
struct LoadsScalesATma<Collective, std::void_t<decltype(Collective::IsTmaLoadSFA)>>
    : std::bool_constant<Collective::IsTmaLoadSFA> {};

// The consumer side for tiles with several B-scale blocks along N (ScaleNsPerTile > 1, the 192-wide tiles): CUTLASS's
// mma for that case cannot partition the (64, 3) scale mode like the accumulators (static_assert) and scales each
// element by (block sum * sa) * sb, two multiplies. This one keeps CUTLASS's pipeline protocol (stage i released
// after stage i+1's MMAs completed, the last one by the base's mma_tail) and its per-K-block promotion: one K block
// (128) of WGMMAs into `block`, wait, then total += block * (sa * sb), where the product is formed once per
// distinct (row, 64-column group) pair held by the thread (the scale fragments broadcast over the others, so
// identical products fold) and each element costs one FFMA.
// kDirect: `ptr_SFB` is the caller's (G, ceil(n/128), kb) array of 128x128 blocks, and layout_SFB its shape at the
// kernel's granularity ((g, ceil(n/g)), (128, kb), G), of which only the extents are read: lane t copies the scale
// of the 128-row block holding the tile's B-scale block t directly, so nothing is expanded before the GEMM
// (without it, `ptr_SFB` is the copy ScalesB expanded to that granularity).
template <class Base, bool kDirect = false>
struct WideTileMma : Base {
  static_assert(Base::ScaleNsPerTile > 1 && Base::ScaleMsPerTile > 1, "for per-row A and multi-block B scales");
  static_assert(cute::size<2>(typename Base::TileShape{}) == Base::ScaleGranularityK,
                "one promotion per K tile: the tile's K is the scale block");
  static_assert(Base::ScaleNsPerTile <= 32, "one producer lane per B-scale block of the tile");

  // The scale producer. CUTLASS's spreads each tile's scale vectors over the producer warp's 32 lanes as a
  // 32-lane partition of the tile's (broadcast) rows and columns, so lane t copies the B-scale blocks holding columns
  // t, t + 32, ...: with blocks narrower than 32 columns (the 112-wide tiles' 16) every other block never reached
  // shared memory (found by the GPU tests). Here lane t < ScaleNsPerTile copies B-scale block t of the tile; A's
  // scales, when not loaded by TMA, as CUTLASS does (rows t, t + 32, ...: one block per row). The pipeline protocol
  // is CUTLASS's: acquire the stage, cp.async, commit with a no-increment cp.async arrival per lane.
  template <class TensorA, class TensorB, class TensorSFA, class TensorSFB, class KTileIterator, class BlockCoord>
  CUTLASS_DEVICE void load_auxiliary(typename Base::Params const& params, typename Base::MainloopPipeline pipeline,
                                     typename Base::PipelineState smem_pipe_write,
                                     cute::tuple<TensorA, TensorB, TensorSFA, TensorSFB> const& load_inputs,
                                     BlockCoord const& blk_coord, KTileIterator k_tile_iter, int k_tile_count,
                                     int thread_idx, uint32_t block_rank_in_cluster,
                                     typename Base::TensorStorage& shared_tensors) {
    using namespace cute;
    using TileShape = typename Base::TileShape;
    using ScaleCopy = SM80_CP_ASYNC_CACHEALWAYS<float>;
    (void)params;
    (void)block_rank_in_cluster;
    auto [m_coord, n_coord, k_coord, l_coord] = blk_coord;
    (void)k_coord;
    Tensor s_sfa = make_tensor(make_smem_ptr(shared_tensors.smem_SFA.data()), typename Base::SmemLayoutSFA{});
    Tensor s_sfb = make_tensor(make_smem_ptr(shared_tensors.smem_SFB.data()), typename Base::SmemLayoutSFB{});
    Tensor m_sfa = get<2>(load_inputs);
    Tensor m_sfb = get<3>(load_inputs);
    Tensor g_sfb = local_tile(m_sfb, TileShape{}, make_coord(_, _, _), Step<X, _1, _1>{})(_, _, n_coord, _, l_coord);
    Tensor c_sfb = local_tile(make_identity_tensor(shape(m_sfb.layout())), TileShape{}, make_coord(_, _, _),
                              Step<X, _1, _1>{})(_, _, n_coord, _, l_coord);  // (BLK_N, BLK_K, k) coordinates
    // A's scale tiles (used only where TMA does not load them).
    Tensor g_sfa = local_tile(m_sfa, TileShape{}, make_coord(_, _, _), Step<_1, X, _1>{})(_, _, m_coord, _, l_coord);
    Tensor c_sfa = local_tile(make_identity_tensor(shape(m_sfa.layout())), TileShape{}, make_coord(_, _, _),
                              Step<_1, X, _1>{})(_, _, m_coord, _, l_coord);
    const int b_block = thread_idx;  // the B-scale block of the tile this lane copies
    const float* direct = nullptr;   // kDirect: this lane's 128-row block's scales, one per K block
    if constexpr (kDirect) {
      constexpr int kTileN = decltype(size<1>(TileShape{}))::value;
      const int blocks = static_cast<int>(get<0, 1>(shape(params.layout_SFB)));  // of ScaleGranularityN rows
      const int k_blocks = static_cast<int>(get<1, 1>(shape(params.layout_SFB)));
      const int blocks_128 = (blocks * Base::ScaleGranularityN + 127) / 128;
      const int column = static_cast<int>(n_coord) * kTileN + b_block * Base::ScaleGranularityN;
      direct = params.ptr_SFB + (static_cast<int64_t>(l_coord) * blocks_128 + column / 128) * k_blocks;
    }

    CUTLASS_PRAGMA_NO_UNROLL
    for (; k_tile_count > 0; --k_tile_count) {
      pipeline.producer_acquire(smem_pipe_write);
      const int stage = smem_pipe_write.index();
      if constexpr (!LoadsScalesATma<Base>::value) {
        Tensor src = filter_zeros(g_sfa(_, _, *k_tile_iter));  // (ScaleMsPerTile, 1) values
        Tensor dst = filter_zeros(s_sfa(_, _, stage));
        CUTLASS_PRAGMA_UNROLL
        for (int row = thread_idx; row < Base::ScaleMsPerTile; row += 32) {
          if (elem_less(c_sfa(row * Base::ScaleGranularityM, 0, *k_tile_iter), shape(m_sfa.layout()))) {
            ScaleCopy::copy(src(row), dst(row));
          }
        }
      }
      if (b_block < Base::ScaleNsPerTile &&
          elem_less(c_sfb(b_block * Base::ScaleGranularityN, 0, *k_tile_iter), shape(m_sfb.layout()))) {
        Tensor dst = filter_zeros(s_sfb(_, _, stage));
        if constexpr (kDirect) {
          ScaleCopy::copy(direct[*k_tile_iter], dst(b_block));
        } else {
          Tensor src = filter_zeros(g_sfb(_, _, *k_tile_iter));  // (ScaleNsPerTile, 1) values
          ScaleCopy::copy(src(b_block), dst(b_block));
        }
      }
      pipeline.producer_commit(smem_pipe_write, cutlass::arch::cpasync_barrier_arrive_noinc);
      ++k_tile_iter;
      ++smem_pipe_write;
    }
  }

  template <class FrgTensorC>
  CUTLASS_DEVICE void mma(typename Base::MainloopPipeline pipeline, typename Base::PipelineState smem_pipe_read,
                          FrgTensorC& accum, int k_tile_count, int thread_idx,
                          typename Base::TensorStorage& shared_tensors, typename Base::Params const& params) {
    using namespace cute;
    (void)params;
    typename Base::TiledMma tiled_mma;
    const auto ops = detail::consumer_operands<Base>(tiled_mma, shared_tensors, thread_idx);
    Tensor sfa = make_tensor_like<float>(ops.sfa(_, _, _, _0{}));  // broadcast: one register per distinct row
    Tensor sfb = make_tensor_like<float>(ops.sfb(_, _, _, _0{}));  // one per distinct 64-column group
    CUTE_STATIC_ASSERT_V(size(sfa) == size(accum) && size(sfb) == size(accum));
    Tensor block = make_fragment_like(accum);

    clear(accum);
    typename Base::PipelineState smem_pipe_release = smem_pipe_read;
    auto barrier_token = pipeline.consumer_try_wait(smem_pipe_read);
    CUTLASS_PRAGMA_NO_UNROLL
    for (int k_tile = 0; k_tile < k_tile_count; ++k_tile) {
      pipeline.consumer_wait(smem_pipe_read, barrier_token);
      const int stage = smem_pipe_read.index();
      copy(ops.sfa(_, _, _, make_coord(_0{}, stage)), sfa);
      copy(ops.sfb(_, _, _, make_coord(_0{}, stage)), sfb);
      tiled_mma.accumulate_ = GMMA::ScaleOut::Zero;
      warpgroup_fence_operand(block);
      warpgroup_arrive();
      CUTLASS_PRAGMA_UNROLL
      for (int k_block = 0; k_block < size<2>(ops.a); ++k_block) {
        cute::gemm(tiled_mma, ops.a(_, _, k_block, stage), ops.b(_, _, k_block, stage), block);
        tiled_mma.accumulate_ = GMMA::ScaleOut::One;
      }
      warpgroup_commit_batch();
      warpgroup_fence_operand(block);
      warpgroup_wait<0>();
      if (k_tile > 0) {  // the previous stage; the last one is released by mma_tail, as CUTLASS's mma does
        pipeline.consumer_release(smem_pipe_release);
        ++smem_pipe_release;
      }
      ++smem_pipe_read;
      if (k_tile + 1 < k_tile_count) barrier_token = pipeline.consumer_try_wait(smem_pipe_read);
      warpgroup_fence_operand(accum);
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < size(accum); ++i) accum(i) += block(i) * (sfa(i) * sfb(i));
      warpgroup_fence_operand(accum);
    }
  }
};

// How the consumer of the 128x128 tiles (one B-scale block per tile) overlaps the promotion (total += block · sa ·
// sb on the CUDA cores) with tensor-core work. CUTLASS's consumer, like WideTileMma, issues a K block's WGMMAs,
// waits for them and then promotes, and in the cooperative kernel both warpgroups do so at the same time, so the
// tensor cores idle during every promotion.
enum class Promotion : int {
  kNone = 0,  // CUTLASS's consumer (WideTileMma for the 192-wide tiles): promote after waiting for the K block
  // Two K blocks in flight per warpgroup: K block k+1's WGMMAs go into a second block accumulator before K block
  // k's is promoted (wgmma.wait_group 1), so each warpgroup promotes while its own next WGMMAs run. 3 x 64 fp32
  // accumulators per thread (total, two blocks); stage k is released as soon as its WGMMAs completed.
  kOverlap = 1,
  // The two warpgroups take turns issuing each K block (named barriers: warpgroup 1 issues K block k after
  // warpgroup 0 did, warpgroup 0 issues k+1 after warpgroup 1 issued k), so the tensor cores run warpgroup 0's
  // block, then warpgroup 1's, and each warpgroup promotes while the other's WGMMAs run.
  kStagger = 2,
  // Tiles taller than the warpgroups' 64-row WGMMA atoms (256x128: each warpgroup holds two 64x128 row waves of
  // the total): one K block is issued wave by wave into a single one-wave block accumulator, each wave promoted
  // before the next is issued (WaveMma). 128 + 64 fp32 registers per thread instead of the 256 that a block
  // accumulator for both waves would need.
  kWaves = 3,
};

// The consumer for 128x128 tiles with an overlapped promotion (Promotion above). CUTLASS's pipeline protocol is
// kept: stages 0..K-2 of a tile are released here, the last by the base's mma_tail. The promotion is one FFMA per
// element with sa·sb formed once per distinct row of the thread (as WideTileMma).
template <class Base, Promotion kMode>
struct OverlappedPromotionMma : Base {
  static_assert(Base::ScaleNsPerTile == 1 && Base::ScaleMsPerTile > 1, "for per-row A and one B-scale block per tile");
  static_assert(cute::size<2>(typename Base::TileShape{}) == Base::ScaleGranularityK,
                "one promotion per K tile: the tile's K is the scale block");
  // User named barriers 0 and 1 (hardware ids 8 and 9; CUTLASS reserves 1-7): "warpgroup 0 issued K block k" and
  // "warpgroup 1 issued K block k".
  static constexpr uint32_t kFirstIssued = 0;
  static constexpr uint32_t kSecondIssued = 1;

  template <class FrgTensorC>
  CUTLASS_DEVICE void mma(typename Base::MainloopPipeline pipeline, typename Base::PipelineState smem_pipe_read,
                          FrgTensorC& accum, int k_tile_count, int thread_idx,
                          typename Base::TensorStorage& shared_tensors, typename Base::Params const& params) {
    using namespace cute;
    (void)params;
    typename Base::TiledMma tiled_mma;
    const auto ops = detail::consumer_operands<Base>(tiled_mma, shared_tensors, thread_idx);
    Tensor sfa0 = make_tensor_like<float>(ops.sfa(_, _, _, _0{}));  // broadcast: one register per distinct row
    Tensor sfb0 = make_tensor_like<float>(ops.sfb(_, _, _, _0{}));  // broadcast: one register
    CUTE_STATIC_ASSERT_V(size(sfa0) == size(accum) && size(sfb0) == size(accum));
    Tensor block0 = make_fragment_like(accum);

    // Waits for the next stage, reads its scales into (sfa, sfb) and issues its K block's WGMMAs into `block`.
    auto issue = [&](auto& block, auto& sfa, auto& sfb) {
      auto token = pipeline.consumer_try_wait(smem_pipe_read);
      pipeline.consumer_wait(smem_pipe_read, token);
      const int stage = smem_pipe_read.index();
      copy(ops.sfa(_, _, _, make_coord(_0{}, stage)), sfa);
      copy(ops.sfb(_, _, _, make_coord(_0{}, stage)), sfb);
      tiled_mma.accumulate_ = GMMA::ScaleOut::Zero;
      warpgroup_fence_operand(block);
      warpgroup_arrive();
      CUTLASS_PRAGMA_UNROLL
      for (int k_block = 0; k_block < size<2>(ops.a); ++k_block) {
        cute::gemm(tiled_mma, ops.a(_, _, k_block, stage), ops.b(_, _, k_block, stage), block);
        tiled_mma.accumulate_ = GMMA::ScaleOut::One;
      }
      warpgroup_commit_batch();
      warpgroup_fence_operand(block);
      ++smem_pipe_read;
    };
    auto promote = [&](auto& block, auto& sfa, auto& sfb) {
      warpgroup_fence_operand(block);
      warpgroup_fence_operand(accum);
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < size(accum); ++i) accum(i) += block(i) * (sfa(i) * sfb(i));
      warpgroup_fence_operand(accum);
    };

    clear(accum);
    typename Base::PipelineState smem_pipe_release = smem_pipe_read;
    if constexpr (kMode == Promotion::kOverlap) {
      Tensor sfa1 = make_tensor_like<float>(ops.sfa(_, _, _, _0{}));
      Tensor sfb1 = make_tensor_like<float>(ops.sfb(_, _, _, _0{}));
      Tensor block1 = make_fragment_like(accum);
      // K block k: issue k+1 into the other buffers, wait for k (one batch left in flight), release k's stage
      // (its scales are in registers), promote k. Unrolled by two so that the buffers are static registers, and
      // peeled so that every path has block0's batch in flight at the loop head: with the steps under branches
      // ptxas could not prove the promoted buffer idle and serialised the WGMMAs (C7514).
      auto step = [&](auto& block, auto& sfa, auto& sfb, auto& next_block, auto& next_sfa, auto& next_sfb) {
        issue(next_block, next_sfa, next_sfb);
        warpgroup_wait<1>();
        pipeline.consumer_release(smem_pipe_release);
        ++smem_pipe_release;
        promote(block, sfa, sfb);
      };
      issue(block0, sfa0, sfb0);
      int k = 0;
      CUTLASS_PRAGMA_NO_UNROLL
      for (; k + 2 < k_tile_count; k += 2) {
        step(block0, sfa0, sfb0, block1, sfa1, sfb1);
        step(block1, sfa1, sfb1, block0, sfa0, sfb0);
      }
      if (k + 1 < k_tile_count) {  // two K blocks left
        step(block0, sfa0, sfb0, block1, sfa1, sfb1);
        warpgroup_wait<0>();  // the last stage is released by mma_tail
        promote(block1, sfa1, sfb1);
      } else {
        warpgroup_wait<0>();
        promote(block0, sfa0, sfb0);
      }
    } else {
      static_assert(kMode == Promotion::kStagger);
      constexpr int kWarpGroupThreads = cutlass::NumThreadsPerWarpGroup;
      static_assert(size(typename Base::TiledMma{}) == 2 * kWarpGroupThreads,
                    "the staggered promotion pairs two consumer warpgroups");
      constexpr uint32_t kPairThreads = 2 * kWarpGroupThreads;
      const bool first = __shfl_sync(0xffffffff, thread_idx / kWarpGroupThreads, 0) == 0;
      CUTLASS_PRAGMA_NO_UNROLL
      for (int k = 0; k < k_tile_count; ++k) {
        // Per tile the arrivals and waits balance: kFirstIssued k_tile_count times, kSecondIssued k_tile_count-1.
        if (first) {
          if (k > 0) cutlass::arch::NamedBarrier::sync(kPairThreads, kSecondIssued);
        } else {
          cutlass::arch::NamedBarrier::sync(kPairThreads, kFirstIssued);
        }
        issue(block0, sfa0, sfb0);
        if (first) {
          cutlass::arch::NamedBarrier::arrive(kPairThreads, kFirstIssued);
        } else if (k + 1 < k_tile_count) {
          cutlass::arch::NamedBarrier::arrive(kPairThreads, kSecondIssued);
        }
        warpgroup_wait<0>();
        if (k > 0) {  // the previous stage; the last one is released by mma_tail
          pipeline.consumer_release(smem_pipe_release);
          ++smem_pipe_release;
        }
        promote(block0, sfa0, sfb0);
      }
    }
  }
};

// The consumer for tiles with several row waves per warpgroup (Promotion::kWaves: 256x128 tiles, MMA_M = 2). Per
// K block, for each wave w: its WGMMAs (A rows of wave w, all of B) into `block` (one wave's accumulators), wait,
// total(wave w) += block * sa * sb. The warpgroup's tensor-core work stops while it promotes; the other consumer
// warpgroup's WGMMAs fill that time. CUTLASS's pipeline protocol: stages 0..K-2 of a tile released here as soon as
// their last wave completed, the last one by the base's mma_tail.
// Wave w holds the tile's rows [128 w, 128 w + 128) (the TiledMma's 128-row M repeat), so a contiguous-layout tile
// whose two 128-row blocks belong to different groups runs as two passes over K (mma_two_groups: the producer loads
// each pass's B from its block's group, and pass p runs wave p only).
template <class Base>
struct WaveMma : Base {
  static_assert(Base::ScaleNsPerTile == 1 && Base::ScaleMsPerTile > 1, "for per-row A and one B-scale block per tile");
  static_assert(cute::size<2>(typename Base::TileShape{}) == Base::ScaleGranularityK,
                "one promotion per K tile: the tile's K is the scale block");

  template <class FrgTensorC>
  CUTLASS_DEVICE void mma(typename Base::MainloopPipeline pipeline, typename Base::PipelineState smem_pipe_read,
                          FrgTensorC& accum, int k_tile_count, int thread_idx,
                          typename Base::TensorStorage& shared_tensors, typename Base::Params const& params) {
    (void)params;
    run<false>(pipeline, smem_pipe_read, accum, k_tile_count, k_tile_count, thread_idx, shared_tensors);
  }

  // k_tile_count = 2 x k_tiles_per_pass: K blocks 0..k_tiles_per_pass-1 feed wave 0, the rest wave 1.
  template <class FrgTensorC>
  CUTLASS_DEVICE void mma_two_groups(typename Base::MainloopPipeline pipeline,
                                     typename Base::PipelineState smem_pipe_read, FrgTensorC& accum, int k_tile_count,
                                     int k_tiles_per_pass, int thread_idx,
                                     typename Base::TensorStorage& shared_tensors) {
    run<true>(pipeline, smem_pipe_read, accum, k_tile_count, k_tiles_per_pass, thread_idx, shared_tensors);
  }

 private:
  template <bool kTwoGroups, class FrgTensorC>
  CUTLASS_DEVICE void run(typename Base::MainloopPipeline pipeline, typename Base::PipelineState smem_pipe_read,
                          FrgTensorC& accum, int k_tile_count, int k_tiles_per_pass, int thread_idx,
                          typename Base::TensorStorage& shared_tensors) {
    using namespace cute;
    using TileShape = typename Base::TileShape;
    typename Base::TiledMma tiled_mma;
    const auto ops = detail::consumer_operands<Base>(tiled_mma, shared_tensors, thread_idx);
    Tensor sfa = make_tensor_like<float>(ops.sfa(_, _, _, _0{}));  // broadcast: one register per distinct row
    Tensor sfb = make_tensor_like<float>(ops.sfb(_, _, _, _0{}));  // broadcast: one register
    CUTE_STATIC_ASSERT_V(size(sfa) == size(accum) && size(sfb) == size(accum));
    constexpr int kWaves = decltype(size<1>(ops.a))::value;
    constexpr int kColumns = decltype(size<1>(ops.b))::value;
    static_assert(kWaves > 1, "one wave per warpgroup: use OverlappedPromotionMma");
    static_assert(!kTwoGroups || (kWaves == 2 && tile_size<0>(typename Base::TiledMma{}) == 128),
                  "two groups per tile: one 128-row wave per group");
    // One wave's accumulators: (MMA, 1, MMA_N), the C partition of a tile tile_size<0>(TiledMma) rows tall.
    Tensor block = partition_fragment_C(tiled_mma, make_shape(tile_size<0>(tiled_mma), get<1>(TileShape{})));
    CUTE_STATIC_ASSERT_V(size(block) * Int<kWaves>{} == size(accum));
    (void)k_tiles_per_pass;  // read by the two-group walk only

    clear(accum);
    typename Base::PipelineState smem_pipe_release = smem_pipe_read;
    auto barrier_token = pipeline.consumer_try_wait(smem_pipe_read);
    CUTLASS_PRAGMA_NO_UNROLL
    for (int k_tile = 0; k_tile < k_tile_count; ++k_tile) {
      pipeline.consumer_wait(smem_pipe_read, barrier_token);
      const int stage = smem_pipe_read.index();
      copy(ops.sfa(_, _, _, make_coord(_0{}, stage)), sfa);
      copy(ops.sfb(_, _, _, make_coord(_0{}, stage)), sfb);
      // One wave's K block: its WGMMAs, wait, (after the stage's last wave: release it) promote.
      auto run_wave = [&](auto wave_constant, bool last_wave) {
        constexpr int wave = decltype(wave_constant)::value;
        tiled_mma.accumulate_ = GMMA::ScaleOut::Zero;
        warpgroup_fence_operand(block);
        warpgroup_arrive();
        CUTLASS_PRAGMA_UNROLL
        for (int k_block = 0; k_block < size<2>(ops.a); ++k_block) {
          CUTLASS_PRAGMA_UNROLL
          for (int column = 0; column < kColumns; ++column) {
            // (V) x (V) => (V): one atom, wave `wave`'s A rows against B's column block `column`.
            cute::gemm(tiled_mma, ops.a(_, wave, k_block, stage), ops.b(_, column, k_block, stage),
                       block(_, 0, column));
          }
          tiled_mma.accumulate_ = GMMA::ScaleOut::One;
        }
        warpgroup_commit_batch();
        warpgroup_fence_operand(block);
        warpgroup_wait<0>();
        if (last_wave) {
          ++smem_pipe_read;
          if (k_tile + 1 < k_tile_count) {  // the last stage is released by mma_tail, as CUTLASS's mma does
            pipeline.consumer_release(smem_pipe_release);
            ++smem_pipe_release;
            barrier_token = pipeline.consumer_try_wait(smem_pipe_read);
          }
        }
        warpgroup_fence_operand(accum);
        CUTLASS_PRAGMA_UNROLL
        for (int column = 0; column < kColumns; ++column) {
          CUTLASS_PRAGMA_UNROLL
          for (int i = 0; i < size<0>(accum); ++i) {
            accum(i, wave, column) += block(i, 0, column) * (sfa(i, wave, column) * sfb(i, wave, column));
          }
        }
        warpgroup_fence_operand(accum);
      };
      if constexpr (kTwoGroups) {
        if (k_tile < k_tiles_per_pass) {
          run_wave(Int<0>{}, true);
        } else {
          run_wave(Int<1>{}, true);
        }
      } else {
        for_each(make_int_sequence<kWaves>{}, [&](auto wave) { run_wave(wave, decltype(wave)::value + 1 == kWaves); });
      }
    }
  }
};

// The consumer a kernel uses: CUTLASS's, WideTileMma for several B-scale blocks per tile, or an overlapped
// promotion.
// kDirect (wide tiles only): WideTileMma reads the caller's 128x128 B-scale blocks.
template <class Built, bool kWide, Promotion kPromotion, bool kDirect = false>
struct SelectConsumer {
  using type = OverlappedPromotionMma<Built, kPromotion>;
};
template <class Built, bool kDirect>
struct SelectConsumer<Built, false, Promotion::kWaves, kDirect> {
  using type = WaveMma<Built>;
};
template <class Built, Promotion kPromotion, bool kDirect>
struct SelectConsumer<Built, true, kPromotion, kDirect> {
  static_assert(kPromotion == Promotion::kNone, "the 192-wide tiles have no overlapped promotion");
  using type = WideTileMma<Built, kDirect>;
};
template <class Built, bool kDirect>
struct SelectConsumer<Built, false, Promotion::kNone, kDirect> {
  using type = Built;
};

// The mainloop of the indexed contiguous kernels: CUTLASS's dense blockwise-FP8 collective (`Base`), with B and its
// scales addressed as a batch of G groups and each tile's batch index taken from block_group[m tile] instead of
// the tile scheduler's L coordinate (which is 0: the kernel runs one (m_sum, n, k) problem). A, its scales and D
// keep the dense layouts. With block_group == nullptr and one group it is a plain dense mainloop whose producer
// does not tile B's scales for TMA (which CUTLASS's does, and cannot for 3 scale blocks per tile): DenseGemm's
// 192-wide tiles use it that way. Only the A/B/scale-A producer (load) is re-written; the scale-B producer
// (load_auxiliary, cp.async) is the base's with the group substituted for L; the consumers are untouched. All
// tiles of a CTA pair in a 1x2 cluster share m, hence the group, so A multicast stays valid; a 2x1 cluster (B
// multicast) is rejected, since the two M tiles may belong to different groups.
// 256-row tiles (WaveMma): a tile spans two 128-row blocks, which may belong to two groups. ContiguousTileScheduler
// gives such a tile twice the K blocks; the producer loads K blocks 0..K-1 with the first block's B and K..2K-1 with
// the second's (A and its scales again), and the consumer runs wave 0 (rows 0-127) on the first pass and wave 1 on
// the second (WaveMma::mma_two_groups). Tiles of one group (and padding) run one pass as before.
template <class Base>
struct GroupIndexedMainloop : Base {
  using TileShape = typename Base::TileShape;
  using ClusterShape = typename Base::DispatchPolicy::ClusterShape;
  using MainloopPipeline = typename Base::MainloopPipeline;
  using PipelineState = typename Base::PipelineState;
  using TensorStorage = typename Base::TensorStorage;
  using GmemTiledCopyA = typename Base::GmemTiledCopyA;
  using GmemTiledCopyB = typename Base::GmemTiledCopyB;
  static_assert(cute::size<0>(ClusterShape{}) == 1, "B multicast across M tiles of different groups is invalid");
  static_assert(Base::IsTmaLoadSFA && !Base::IsTmaLoadSFB, "expects M-major A scales loaded by TMA");
  // 64-row tiles (the narrow dense ones wider than a B-scale block): dense only, one group (groups_of_tile).
  static constexpr int kBlocksPerTile = std::max(1, int(cute::size<0>(TileShape{})) / detail::kRowBlock);
  static constexpr bool kDenseOnly = int(cute::size<0>(TileShape{})) < detail::kRowBlock;

  struct Arguments : Base::Arguments {
    const int32_t* block_group;  // (ceil(m / 128)) groups, -1 for padding blocks
    int num_groups;
  };
  struct Params : Base::Params {
    const int32_t* block_group;
    int num_groups;
    int num_blocks;  // ceil(m / 128)
    int k_blocks;    // K tiles of one pass
  };

  template <class ProblemShape>
  static Params to_underlying_arguments(ProblemShape const& problem_shape, Arguments const& args, void* workspace) {
    auto problem_shape_mnkl = cute::append<4>(problem_shape, 1);
    const auto m = cute::get<0>(problem_shape_mnkl);
    const auto n = cute::get<1>(problem_shape_mnkl);
    const auto k = cute::get<2>(problem_shape_mnkl);
    constexpr int kTileK = cute::size<2>(TileShape{});
    Params params{Base::to_underlying_arguments(problem_shape, args, workspace), args.block_group, args.num_groups,
                  static_cast<int>((m + detail::kRowBlock - 1) / detail::kRowBlock),
                  static_cast<int>((k + kTileK - 1) / kTileK)};
    // B as (n, k, G): the batch stride of args.dB steps over groups.
    auto tensor_b = cute::make_tensor(args.ptr_B, cute::make_layout(cute::make_shape(n, k, args.num_groups), args.dB));
    params.tma_load_b = cute::make_tma_copy_B_sm90(GmemTiledCopyB{}, tensor_b,
                                                   typename Base::SmemLayoutB{}(cute::_, cute::_, cute::Int<0>{}),
                                                   TileShape{}, ClusterShape{});
    return params;
  }

  template <class ProblemShape_MNKL>
  CUTLASS_DEVICE auto load_init(ProblemShape_MNKL const& problem_shape_mnkl, Params const& params) const {
    auto inputs = Base::load_init(problem_shape_mnkl, params);
    cute::Tensor m_b = params.tma_load_b.get_tma_tensor(
        cute::make_shape(cute::get<1>(problem_shape_mnkl), cute::get<2>(problem_shape_mnkl), params.num_groups));
    cute::Tensor g_b = cute::local_tile(m_b, TileShape{}, cute::make_coord(cute::_, cute::_, cute::_),
                                        cute::Step<cute::Underscore, cute::_1, cute::_1>{});  // (BLK_N,BLK_K,n,k,G)
    return cute::make_tuple(cute::get<0>(inputs), g_b, cute::get<2>(inputs), cute::get<3>(inputs));
  }

  CUTLASS_DEVICE static detail::TileGroups groups_of_tile(Params const& params, int m_tile) {
    if constexpr (kDenseOnly) return {};
    return detail::tile_groups<kBlocksPerTile>(params.block_group, params.num_blocks, params.num_groups, m_tile);
  }

  // Tiles of two groups: K blocks 0..k_blocks-1 on the first group's B (wave 0), the rest on the second's (wave 1).
  template <class FrgTensorC>
  CUTLASS_DEVICE void mma(MainloopPipeline pipeline, PipelineState smem_pipe_read, FrgTensorC& accum, int k_tile_count,
                          int thread_idx, TensorStorage& shared_tensors, Params const& params) {
    if constexpr (kBlocksPerTile == 2) {
      if (k_tile_count > params.k_blocks) {
        Base::mma_two_groups(pipeline, smem_pipe_read, accum, k_tile_count, params.k_blocks, thread_idx,
                             shared_tensors);
        return;
      }
    }
    Base::mma(pipeline, smem_pipe_read, accum, k_tile_count, thread_idx, shared_tensors, params);
  }

  template <class TensorA, class TensorB, class TensorSFA, class TensorSFB, class KTileIterator, class BlockCoord>
  CUTLASS_DEVICE void load(Params const& params, MainloopPipeline pipeline, PipelineState smem_pipe_write,
                           cute::tuple<TensorA, TensorB, TensorSFA, TensorSFB> const& load_inputs,
                           BlockCoord const& blk_coord, KTileIterator k_tile_iter, int k_tile_count, int thread_idx,
                           uint32_t block_rank_in_cluster, TensorStorage& shared_tensors) {
    using namespace cute;
    (void)thread_idx;
    const int lane_predicate = cute::elect_one_sync();
    Tensor s_a = make_tensor(make_smem_ptr(shared_tensors.smem_A.data()), typename Base::SmemLayoutA{});
    Tensor s_b = make_tensor(make_smem_ptr(shared_tensors.smem_B.data()), typename Base::SmemLayoutB{});
    Tensor s_sfa =
        make_tensor(make_smem_ptr(shared_tensors.smem_SFA.data()), filter_zeros(typename Base::SmemLayoutSFA{}));

    // Cluster shape is (1, c): every CTA of a cluster has the same m tile, the y index picks the A slice it loads.
    const uint32_t cluster_y = block_rank_in_cluster;
    auto [m_coord, n_coord, k_coord, l_coord] = blk_coord;
    const detail::TileGroups groups = groups_of_tile(params, m_coord);

    Tensor g_a = get<0>(load_inputs)(_, _, m_coord, _, l_coord);             // (BLK_M,BLK_K,k)
    Tensor g_b_first = get<1>(load_inputs)(_, _, n_coord, _, groups.first);  // (BLK_N,BLK_K,k)
    Tensor g_b_second = get<1>(load_inputs)(_, _, n_coord, _, groups.second);
    Tensor g_sfa = local_tile(get<2>(load_inputs), make_tile(Int<Base::ScaleMsPerTile>{}, Int<1>{}),
                              make_coord(m_coord, _, l_coord));

    auto block_tma_a = params.tma_load_a.get_slice(cluster_y);
    auto block_tma_b = params.tma_load_b.get_slice(0);
    auto block_tma_sfa = params.tma_load_sfa.get_slice(0);
    Tensor t_ag = block_tma_a.partition_S(g_a);
    Tensor t_as = block_tma_a.partition_D(s_a);
    Tensor t_bg_first = block_tma_b.partition_S(g_b_first);
    Tensor t_bg_second = block_tma_b.partition_S(g_b_second);
    Tensor t_bs = block_tma_b.partition_D(s_b);
    Tensor t_sfag = block_tma_sfa.partition_S(g_sfa);
    Tensor t_sfas = block_tma_sfa.partition_D(s_sfa);

    uint16_t mcast_mask_a = 0;
    if constexpr (cute::is_same_v<GmemTiledCopyA, SM90_TMA_LOAD_MULTICAST>) {
      for (int n = 0; n < size<1>(ClusterShape{}); ++n) mcast_mask_a |= uint16_t(1) << n;
    }
    // The persistent scheduler's tiles start at K block 0; a tile of two groups (k_tile_count = 2 x k_blocks) walks
    // K twice, the second time on the second group's B.
    (void)k_tile_iter;
    CUTLASS_PRAGMA_NO_UNROLL
    for (int tile = 0; tile < k_tile_count; ++tile) {
      const bool second = tile >= params.k_blocks;
      const int k = second ? tile - params.k_blocks : tile;
      pipeline.producer_acquire(smem_pipe_write);
      const int stage = smem_pipe_write.index();
      auto* barrier = pipeline.producer_get_barrier(smem_pipe_write);
      if (lane_predicate) {
        copy(params.tma_load_a.with(*barrier, mcast_mask_a), t_ag(_, _, _, k), t_as(_, _, _, stage));
        copy(params.tma_load_b.with(*barrier, uint16_t(0)), (second ? t_bg_second : t_bg_first)(_, _, _, k),
             t_bs(_, _, _, stage));
        copy(params.tma_load_sfa.with(*barrier, uint16_t(0)), t_sfag(_, _, _, k), t_sfas(_, _, _, stage));
      }
      ++smem_pipe_write;
    }
  }

  template <class TensorA, class TensorB, class TensorSFA, class TensorSFB, class KTileIterator, class BlockCoord>
  CUTLASS_DEVICE void load_auxiliary(Params const& params, MainloopPipeline pipeline, PipelineState smem_pipe_write,
                                     cute::tuple<TensorA, TensorB, TensorSFA, TensorSFB> const& load_inputs,
                                     BlockCoord const& blk_coord, KTileIterator k_tile_iter, int k_tile_count,
                                     int thread_idx, uint32_t block_rank_in_cluster, TensorStorage& shared_tensors) {
    // CUTLASS's cooperative kernel starts this (scale-B) producer warp without waiting for the grid it may be a
    // programmatic dependent of (its ping-pong kernel waits): the wide dense tiles are launched so after
    // expand_b_scales (launch_gemm), whose output this warp reads. Without a programmatic launch: no wait.
    cutlass::arch::wait_on_dependent_grids();
    auto [m_coord, n_coord, k_coord, l_coord] = blk_coord;
    (void)l_coord;
    const detail::TileGroups groups = groups_of_tile(params, m_coord);
    const int first_count = k_tile_count < params.k_blocks ? k_tile_count : params.k_blocks;
    Base::load_auxiliary(params, pipeline, smem_pipe_write, load_inputs,
                         cute::make_coord(m_coord, n_coord, k_coord, groups.first), k_tile_iter, first_count,
                         thread_idx, block_rank_in_cluster, shared_tensors);
    if (k_tile_count > first_count) {  // a tile of two groups: the second pass over K, the second group's scales
      smem_pipe_write.advance(first_count);
      Base::load_auxiliary(params, pipeline, smem_pipe_write, load_inputs,
                           cute::make_coord(m_coord, n_coord, k_coord, groups.second), k_tile_iter,
                           k_tile_count - first_count, thread_idx, block_rank_in_cluster, shared_tensors);
    }
  }
};

// The tile scheduler tag of the 256-row contiguous kernels (selects ContiguousTileScheduler below).
struct ContiguousTiles {};

// CUTLASS's persistent scheduler (same walk, raster order and swizzle) whose work items also say whether the tile's
// two 128-row blocks belong to two groups (block_group, written by the setup kernel before the GEMM starts); such a
// tile gets twice the K blocks (GroupIndexedMainloop: one pass over K per group). Every role of the kernel (producer,
// scale producer, consumers) asks get_work_k_tile_count of the same work item, so they agree on the stage count.
class ContiguousTileScheduler : public cutlass::gemm::kernel::detail::PersistentTileSchedulerSm90 {
  using Base = cutlass::gemm::kernel::detail::PersistentTileSchedulerSm90;

 public:
  struct WorkTileInfo : Base::WorkTileInfo {
    bool two_groups = false;
  };
  struct Arguments : Base::Arguments {
    const int32_t* block_group = nullptr;
    int32_t num_blocks = 0;
    int32_t num_groups = 0;
  };
  struct Params : Base::Params {
    const int32_t* block_group = nullptr;
    int32_t num_blocks = 0;
    int32_t num_groups = 0;
  };

  template <class ProblemShapeMNKL, class TileShape, class ClusterShape>
  static Params to_underlying_arguments(ProblemShapeMNKL problem_shape_mnkl, TileShape tile_shape,
                                        ClusterShape cluster_shape, cutlass::KernelHardwareInfo const& hw_info,
                                        Arguments const& arguments, void* workspace = nullptr,
                                        const uint32_t epilogue_subtile = 1, uint32_t ktile_start_alignment = 1u) {
    static_assert(cute::size<0>(TileShape{}) == 2 * detail::kRowBlock, "for tiles of two 128-row blocks");
    Params params;
    static_cast<Base::Params&>(params) =
        Base::to_underlying_arguments(problem_shape_mnkl, tile_shape, cluster_shape, hw_info, arguments, workspace,
                                      epilogue_subtile, ktile_start_alignment);
    params.block_group = arguments.block_group;
    params.num_blocks = arguments.num_blocks;
    params.num_groups = arguments.num_groups;
    return params;
  }

  static bool can_implement(Arguments const& arguments) {
    return arguments.block_group != nullptr && Base::can_implement(arguments);
  }

  CUTLASS_HOST_DEVICE ContiguousTileScheduler() {}
  CUTLASS_DEVICE explicit ContiguousTileScheduler(Params const& params)
      : Base(params),
        block_group_(params.block_group),
        num_blocks_(params.num_blocks),
        num_groups_(params.num_groups) {}

  template <class ClusterShape>
  CUTLASS_DEVICE WorkTileInfo initial_work_tile_info(ClusterShape cluster_shape) {
    return with_groups(Base::initial_work_tile_info(cluster_shape));
  }
  CUTLASS_DEVICE WorkTileInfo get_current_work() const { return with_groups(Base::get_current_work()); }
  CUTLASS_DEVICE auto fetch_next_work(WorkTileInfo) {
    advance_to_next_work();
    return cute::make_tuple(get_current_work(), true);
  }
  template <class Pipeline, class PipelineState>
  CUTLASS_DEVICE auto fetch_next_work(WorkTileInfo work, Pipeline&, PipelineState) {
    return fetch_next_work(work);
  }

  template <class ProblemShape, class TileShape>
  CUTLASS_HOST_DEVICE static int get_work_k_tile_count(WorkTileInfo const& work, ProblemShape problem_shape,
                                                       TileShape tile_shape) {
    const int k_tiles = Base::get_work_k_tile_count(work, problem_shape, tile_shape);
    return work.two_groups ? 2 * k_tiles : k_tiles;
  }

 private:
  CUTLASS_DEVICE WorkTileInfo with_groups(Base::WorkTileInfo base) const {
    WorkTileInfo work;
    static_cast<Base::WorkTileInfo&>(work) = base;
    work.two_groups =
        base.is_valid() && detail::tile_groups<2>(block_group_, num_blocks_, num_groups_, base.M_idx).two();
    return work;
  }

  const int32_t* block_group_ = nullptr;
  int32_t num_blocks_ = 0;
  int32_t num_groups_ = 0;
};

}  // namespace ff::gemm::cuda

namespace cutlass::gemm::kernel::detail {

template <class ArchTag, class TileShape, class ClusterShape, uint32_t SchedulerPipelineStageCount,
          class ProblemShapeType>
struct TileSchedulerSelector<ff::gemm::cuda::ContiguousTiles, ArchTag, TileShape, ClusterShape,
                             SchedulerPipelineStageCount, ProblemShapeType> {
  using Scheduler = ff::gemm::cuda::ContiguousTileScheduler;
};

}  // namespace cutlass::gemm::kernel::detail

namespace ff::gemm::cuda {

// The mainloop of the narrow dense tiles (N = 64, 32 or 16, so one B-scale block of kTileN rows per tile) reading the
// caller's 128x128 B scales directly: CUTLASS's blockwise collective needs the tile's N to be a multiple of the scale
// granularity, so these tiles are built with granularity kTileN, and without this producer B's scales would first be
// expanded to kTileN-row blocks by a separate kernel (ScalesB) before every call. Only the scale-B producer
// (load_auxiliary) is re-written: lane 0 copies the k-th scale of the 128-row block holding the tile's rows,
// sb[(n_tile * kTileN / 128) * k_blocks + k], by cp.async into the stage's slot, and every lane of the producer warp
// commits as CUTLASS's does (33 producer arrivals per stage: the TMA and the 32 cp.async lanes). `ptr_SFB` is the
// caller's sb and layout_SFB its (n, kb) K-major layout at granularity kTileN, of which only kb is read. A's scales
// are loaded by TMA in `load` (M-major), untouched.
template <class Base>
struct DirectScalesB : Base {
  using TileShape = typename Base::TileShape;
  static constexpr int kTileN = decltype(cute::size<1>(TileShape{}))::value;
  static_assert(Base::ScaleNsPerTile == 1 && Base::ScaleGranularityN == kTileN, "one B-scale block per tile");
  static_assert(128 % kTileN == 0, "the tile lies inside one 128-row scale block");
  static_assert(Base::IsTmaLoadSFA && !Base::IsTmaLoadSFB, "expects A's scales by TMA and B's by cp.async");

  template <class TensorA, class TensorB, class TensorSFA, class TensorSFB, class KTileIterator, class BlockCoord>
  CUTLASS_DEVICE void load_auxiliary(typename Base::Params const& params, typename Base::MainloopPipeline pipeline,
                                     typename Base::PipelineState smem_pipe_write,
                                     cute::tuple<TensorA, TensorB, TensorSFA, TensorSFB> const& load_inputs,
                                     BlockCoord const& blk_coord, KTileIterator k_tile_iter, int k_tile_count,
                                     int thread_idx, uint32_t block_rank_in_cluster,
                                     typename Base::TensorStorage& shared_tensors) {
    using namespace cute;
    using ScaleCopy = SM80_CP_ASYNC_CACHEALWAYS<float>;
    (void)load_inputs;
    (void)block_rank_in_cluster;
    auto [m_coord, n_coord, k_coord, l_coord] = blk_coord;
    (void)m_coord;
    (void)k_coord;
    (void)l_coord;  // dense: one problem
    Tensor s_sfb = make_tensor(make_smem_ptr(shared_tensors.smem_SFB.data()), typename Base::SmemLayoutSFB{});
    const int k_blocks = static_cast<int>(get<1, 1>(shape(params.layout_SFB)));
    const int scale_row = static_cast<int>(n_coord) * kTileN / 128;
    Tensor g_sfb = make_tensor(make_gmem_ptr(params.ptr_SFB + static_cast<int64_t>(scale_row) * k_blocks),
                               make_layout(make_shape(k_blocks)));
    CUTLASS_PRAGMA_NO_UNROLL
    for (; k_tile_count > 0; --k_tile_count) {
      pipeline.producer_acquire(smem_pipe_write);
      if (thread_idx == 0) {
        Tensor dst = filter_zeros(s_sfb(_, _, smem_pipe_write.index()));
        ScaleCopy::copy(g_sfb(static_cast<int>(*k_tile_iter)), dst(0));
      }
      pipeline.producer_commit(smem_pipe_write, cutlass::arch::cpasync_barrier_arrive_noinc);
      ++k_tile_iter;
      ++smem_pipe_write;
    }
  }
};

// The epilogue of the 256-row tiles: the whole tile written to shared memory at once, then stored by TMA. `Base` is
// CUTLASS's TMA epilogue built with as many pieces as its store buffers (two 128x128 pieces, 2 buffers: the whole
// 256x128 bf16 tile, 64 KB); its types, shared memory, TMA descriptor and store_tail are kept, store() is ours.
// CUTLASS's store converts and writes one piece, then issues the previous piece's TMA store and waits until at most
// one store is still reading shared memory, with a CTA-wide barrier before and after each store: per tile four
// barriers and, at the end, a wait for the first piece's store to finish reading. Here, per tile: the warp that
// issued the previous tile's stores waits for them to finish reading (done long before, during the mainloop), one
// barrier, every thread converts its accumulators to bf16 and writes both pieces (stmatrix, the same layout and
// copy as CUTLASS's), a fence and a second barrier, then that warp issues both TMA stores without waiting for them.
// The accumulators are stored as they are (alpha = 1, no C).
template <class Base>
struct WholeTileEpilogue : Base {
  using EpilogueTile = typename Base::EpilogueTile;
  using CtaTileMNK = typename Base::CtaTileMNK;
  using ElementD = typename Base::ElementD;
  static constexpr int kPieces =
      decltype(cute::size(cute::shape_div(cute::take<0, 2>(CtaTileMNK{}), EpilogueTile{})))::value;
  static_assert(decltype(cute::size<1>(EpilogueTile{}))::value == decltype(cute::size<1>(CtaTileMNK{}))::value,
                "pieces span the tile's columns");
  static_assert(Base::DispatchPolicy::StagesD == kPieces, "one store buffer per piece: the whole tile");
  static_assert(cute::is_void_v<typename Base::ElementC>, "no source C");
  // Base::SmemLayoutD is private: the same layout, rebuilt from the public atom (D is row-major, N contiguous).
  using SmemLayoutD = decltype(cute::tile_to_shape(
      typename Base::SmemLayoutAtomD{},
      cute::make_shape(cute::size<0>(EpilogueTile{}), cute::size<1>(EpilogueTile{}), cute::Int<kPieces>{}),
      cute::Step<cute::_1, cute::_2, cute::_3>{}));

  CUTLASS_HOST_DEVICE WholeTileEpilogue(typename Base::Params const& params,
                                        typename Base::TensorStorage& shared_tensors)
      : Base(params, shared_tensors), params_(&params) {}

  template <class ProblemShapeMNKL, class TileShapeMNK, class TileCoordMNKL, class AccEngine, class AccLayout,
            class TiledMma>
  CUTLASS_DEVICE auto store(typename Base::LoadPipeline load_pipeline,
                            typename Base::LoadPipelineState load_pipe_consumer_state,
                            typename Base::StorePipeline store_pipeline,
                            typename Base::StorePipelineState store_pipe_producer_state,
                            ProblemShapeMNKL problem_shape_mnkl, TileShapeMNK tile_shape_mnk,
                            TileCoordMNKL tile_coord_mnkl, cute::Tensor<AccEngine, AccLayout> accumulators,
                            TiledMma tiled_mma, int thread_idx, typename Base::TensorStorage& shared_tensors,
                            int subtile_index = -1) {
    using namespace cute;
    (void)load_pipeline;
    (void)store_pipeline;
    (void)tile_shape_mnk;
    (void)subtile_index;  // the cooperative kernel stores whole tiles
    static_assert(is_static<AccLayout>::value, "static accumulator fragment");
    auto [M, N, K, L] = problem_shape_mnkl;
    (void)K;
    auto [m_coord, n_coord, k_coord, l_coord] = tile_coord_mnkl;
    (void)k_coord;
    const bool issues_stores = thread_idx / cutlass::NumThreadsPerWarp == 0;
    auto synchronize = [] {
      cutlass::arch::NamedBarrier::sync(size(TiledMma{}), cutlass::arch::ReservedNamedBarriers::EpilogueBarrier);
    };

    // The output tile and its pieces, as TMA coordinates.
    Tensor m_d = params_->tma_store_d.get_tma_tensor(make_shape(M, N, L));
    Tensor g_d = local_tile(coalesce(m_d, take<0, 2>(CtaTileMNK{})), take<0, 2>(CtaTileMNK{}),
                            make_coord(m_coord, n_coord, l_coord));  // (CTA_M, CTA_N)
    Tensor g_d_pieces = flat_divide(g_d, EpilogueTile{});            // (EPI_M_SIZE, EPI_N_SIZE, PIECES_M, 1)
    Tensor s_d = as_position_independent_swizzle_tensor(
        make_tensor(make_smem_ptr(shared_tensors.collective.smem_D.begin()), SmemLayoutD{}));  // (EPI_M, EPI_N, PIECE)

    // Registers to shared memory: CUTLASS's partition (stmatrix over the accumulator fragment of each piece).
    TiledCopy tiled_copy_c_atom = make_tiled_copy_C_atom(typename Base::CopyAtomC{}, tiled_mma);
    TiledCopy tiled_r2s = make_tiled_copy_S(Copy_Atom<typename Base::CopyOpR2S, ElementD>{}, tiled_copy_c_atom);
    ThrCopy thread_r2s = tiled_r2s.get_slice(thread_idx);
    Tensor r2s_acc = thread_r2s.retile_S(accumulators);  // ((R2S, R2S_V), MMA_M, MMA_N)
    Tensor r2s_smem = thread_r2s.partition_D(s_d);       // (R2S, R2S_M, R2S_N, PIECE)
    static_assert(decltype(size<1>(r2s_acc))::value == kPieces && decltype(size<2>(r2s_acc))::value == 1,
                  "one 128-row MMA tile per piece");
    Tensor r2s_d = make_tensor<ElementD>(take<0, 3>(shape(r2s_smem)));  // (R2S, R2S_M, R2S_N)
    CUTE_STATIC_ASSERT_V(size(r2s_d) == size<0>(r2s_acc));

    // The previous tile's stores have read the buffers (the issuing warp's bulk groups), then everyone may write.
    if (issues_stores) tma_store_wait<0>();
    synchronize();
    constexpr int kFragment = decltype(size(r2s_d))::value;
    CUTLASS_PRAGMA_UNROLL
    for (int piece = 0; piece < kPieces; ++piece) {
      cutlass::Array<float, kFragment> fp32;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < kFragment; ++i) fp32[i] = r2s_acc(i, piece, 0);
      const cutlass::Array<ElementD, kFragment> bf16 =
          cutlass::NumericArrayConverter<ElementD, float, kFragment>{}(fp32);
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < kFragment; ++i) r2s_d(i) = bf16[i];
      copy(tiled_r2s, r2s_d, r2s_smem(_, _, _, piece));
    }
    cutlass::arch::fence_view_async_shared();  // the generic-proxy writes, visible to the TMA store
    synchronize();
    if (issues_stores) {
      ThrCopy s2g = params_->tma_store_d.get_slice(Int<0>{});
      Tensor s2g_smem = s2g.partition_S(s_d);         // (S2G, S2G_M, S2G_N, PIECE)
      Tensor s2g_gmem = s2g.partition_D(g_d_pieces);  // (S2G, S2G_M, S2G_N, PIECES_M, 1)
      CUTLASS_PRAGMA_UNROLL
      for (int piece = 0; piece < kPieces; ++piece) {
        copy(params_->tma_store_d, s2g_smem(_, _, _, piece), s2g_gmem(_, _, _, piece, 0));
      }
      tma_store_arrive();
    }
    return cute::make_tuple(load_pipe_consumer_state, store_pipe_producer_state);
  }

 private:
  typename Base::Params const* params_;
};

// Dense GEMM type for one tile configuration.
// kDirectScalesB (kScaleN < 128: the narrow and the 112/192-wide tiles): B's scales read from the caller's 128x128
// blocks (DirectScalesB, WideTileMma<..., true>) instead of a copy expanded to kScaleN-row blocks before the GEMM.
// EpilogueTile: the pieces the epilogue stores a tile in (CUTLASS's automatic choice unless given).
template <class TileShape, class ClusterShape, class MainloopSchedule, class EpilogueSchedule, int kScaleN = 128,
          Promotion kPromotion = Promotion::kNone, bool kDirectScalesB = false,
          class EpilogueTile = cutlass::epilogue::collective::EpilogueTileAuto, class Fusion = detail::ConvertToD,
          bool kWholeTileEpilogue = false>
struct DenseGemm {
  using ScaleConfig = detail::DenseScaleConfigN<kScaleN>;
  using LayoutSFA = decltype(ScaleConfig::deduce_layoutSFA());
  using LayoutSFB = decltype(ScaleConfig::deduce_layoutSFB());

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape, EpilogueTile, float, float, void,
      detail::LayoutD, detail::kAlignmentD, detail::ElementD, detail::LayoutD, detail::kAlignmentD, EpilogueSchedule,
      detail::FusionFor<EpilogueSchedule, Fusion>>::CollectiveOp;

  using BuiltMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, detail::ElementA, cute::tuple<detail::LayoutA, LayoutSFA>,
      detail::kAlignmentAB, detail::ElementB, cute::tuple<detail::LayoutB, LayoutSFB>, detail::kAlignmentAB, float,
      TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      MainloopSchedule>::CollectiveOp;
  // Several B-scale blocks per tile (192-wide tiles at kScaleN 64, 112-wide at 16): WideTileMma's consumer, and
  // GroupIndexedMainloop's producer over one group. One block per tile (128 at 128, the narrow 64-row tiles at their
  // own width): CUTLASS's collective.
  static constexpr bool kWide = decltype(cute::size<1>(TileShape{}))::value / kScaleN > 1;
  using MmaMainloop = typename SelectConsumer<BuiltMainloop, kWide, kPromotion, kDirectScalesB>::type;
  static_assert(!kDirectScalesB || kScaleN < 128, "direct B scales are for tiles built at a finer granularity");
  using CollectiveMainloop =
      std::conditional_t<kWide, GroupIndexedMainloop<MmaMainloop>,
                         std::conditional_t<kDirectScalesB, DirectScalesB<MmaMainloop>, MmaMainloop>>;

  // The epilogue the kernel runs: CUTLASS's, or WholeTileEpilogue over it (the 256-row tiles).
  using KernelEpilogue =
      std::conditional_t<kWholeTileEpilogue, WholeTileEpilogue<CollectiveEpilogue>, CollectiveEpilogue>;
  using Kernel =
      cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, CollectiveMainloop, KernelEpilogue>;
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
    using Scales = std::conditional_t<kDirectScalesB, detail::ScalesB<128, 128>,
                                      detail::ScalesB<kScaleN, decltype(cute::size<1>(TileShape{}))::value>>;
    // Direct: the caller's sb, of whose layout DirectScalesB / WideTileMma read only the extents.
    LayoutSFB layout_sfb =
        ScaleConfig::tile_atom_to_shape_SFB(cute::make_shape(m, kDirectScalesB ? n : Scales::scale_n(n), k, 1));

    Scales scales_b;
    std::string scale_error = scales_b.prepare(args.sb, 1, n, k, args.stream);
    if (!scale_error.empty()) return scale_error;

    cutlass::KernelHardwareInfo hw_info;
    hw_info.device_id = 0;
    cudaGetDevice(&hw_info.device_id);
    hw_info.sm_count = args.num_sms;

    typename BuiltMainloop::Arguments built{static_cast<const detail::ElementA*>(args.a), stride_a,
                                            static_cast<const detail::ElementB*>(args.b), stride_b, args.sa,
                                            layout_sfa, scales_b.sb, layout_sfb};
    typename CollectiveMainloop::Arguments mainloop{};
    if constexpr (kWide) {
      mainloop = {built, nullptr, 1};
    } else {
      mainloop = built;
    }
    typename Gemm::Arguments arguments{cutlass::gemm::GemmUniversalMode::kGemm,
                                       {m, n, k, 1},
                                       mainloop,
                                       {{}, nullptr, stride_d, static_cast<detail::ElementD*>(args.out), stride_d},
                                       hw_info};
    detail::set_unit_scaling(arguments.epilogue.thread);
    detail::apply_schedule(arguments.scheduler, args.schedule);
    return detail::launch_gemm<Gemm>(arguments, "dense gemm", args.stream,
                                     /*after_kernel=*/kScaleN != 128 && !kDirectScalesB);
  }
};

// A dense tile built at a finer B-scale granularity than 128 (kScaleN: the narrow 64-row tiles and the 112/192-wide
// ones): B's scales read directly, or with FF_GEMM_EXPAND_B_SCALES=1 in the environment expanded first by a separate
// kernel (the former path, kept for A/B runs).
template <class TileShape, class MainloopSchedule, class EpilogueSchedule, int kScaleN,
          Promotion kPromotion = Promotion::kNone>
std::string run_dense_reading_scales_b(const DenseArgs& args) {
  using Cluster = cute::Shape<cute::_1, cute::_1, cute::_1>;
  using Direct = DenseGemm<TileShape, Cluster, MainloopSchedule, EpilogueSchedule, kScaleN, kPromotion, true>;
  using Expanded = DenseGemm<TileShape, Cluster, MainloopSchedule, EpilogueSchedule, kScaleN, kPromotion, false>;
  return expanded_b_scales_requested() ? Expanded::run(args) : Direct::run(args);
}
// The narrow dense tiles: 64 x kTileN, ping-pong, B-scale blocks as wide as the tile where it divides 128 (16, 32,
// 64), else 64 (192: three blocks per tile, WideTileMma, which has no overlapped promotion).
template <int kTileN, Promotion kPromotion = Promotion::kNone>
std::string run_narrow_dense(const DenseArgs& args) {
  constexpr int kScaleN = std::gcd(kTileN, 128);
  return run_dense_reading_scales_b<cute::Shape<cute::_64, cute::Int<kTileN>, cute::_128>,
                                    cutlass::gemm::KernelTmaWarpSpecializedPingpongFP8Blockwise,
                                    cutlass::epilogue::TmaWarpSpecialized, kScaleN, kPromotion>(args);
}

namespace detail {

// The per-problem arrays the ptr-array kernel reads, carved out of one stream-ordered allocation.
template <class ProblemShape, class StrideA, class StrideB, class StrideD, class LayoutSFA, class LayoutSFB,
          class ScalesB_ = ScalesB<128, 128>>
struct GroupedProblems {
  using ScalesB = ScalesB_;  // B-scale granularity along n (sb expanded to it) and padding
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

template <class Problems>
__device__ void write_problem(const Problems& p, int index, int rows, int group, int64_t first_row,
                              const GroupedArgs& args) {
  const int n = args.n, k = args.k;
  constexpr int kScaleN = Problems::ScalesB::kScaleBlock;
  using ScaleConfig = GroupedScaleConfigN<kScaleN>;
  const int scale_n = Problems::ScalesB::scale_n(n);
  const int k_blocks = (k + 127) / 128, n_blocks = scale_n / kScaleN;
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
  p.layout_sfa[index] = ScaleConfig::tile_atom_to_shape_SFA(cute::make_shape(rows, n, k, 1));
  p.layout_sfb[index] = ScaleConfig::tile_atom_to_shape_SFB(cute::make_shape(rows, scale_n, k, 1));
}

// Contiguous: the group of 128-row block `block` (called by a whole warp): the largest m_indices entry in it, -1
// when that is not a valid group (all padding, or >= num_groups), as DeepGEMM trusts device-resident indices.
__device__ inline int warp_block_group(const GroupedArgs& args, int block, int lane) {
  int group = -1;
  for (int row = block * kRowBlock + lane; row < min(args.m, (block + 1) * kRowBlock); row += 32) {
    group = max(group, args.indices[row]);
  }
  for (int offset = 16; offset > 0; offset /= 2) group = max(group, __shfl_xor_sync(0xffffffffu, group, offset));
  return group < args.num_groups ? group : -1;
}

// Contiguous, indexed kernels: block_group[b] = the group of 128-row block b. One warp per block. (A template, so
// that every .cu including this header may hold it without an ODR clash at link time.)
template <int kThreads>
__global__ void __launch_bounds__(kThreads) build_block_groups(int32_t* block_group, GroupedArgs args) {
  const int num_blocks = (args.m + kRowBlock - 1) / kRowBlock;
  const int lane = threadIdx.x % 32;
  for (int block = (blockIdx.x * blockDim.x + threadIdx.x) / 32; block < num_blocks;
       block += gridDim.x * blockDim.x / 32) {
    const int group = warp_block_group(args, block, lane);
    if (lane == 0) block_group[block] = group;
  }
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
    const int group = warp_block_group(args, block, lane);
    if (lane == 0) problems.block_group[block] = group;
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
template <class TileShape, class ClusterShape, class MainloopSchedule, class EpilogueSchedule, int kScaleN = 128,
          Promotion kPromotion = Promotion::kNone>
struct GroupedGemm {
  using ScaleConfig = detail::GroupedScaleConfigN<kScaleN>;
  using LayoutSFA = decltype(ScaleConfig::deduce_layoutSFA());
  using LayoutSFB = decltype(ScaleConfig::deduce_layoutSFB());
  using ProblemShape = cutlass::gemm::GroupProblemShape<cute::Shape<int, int, int>>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, detail::LayoutD*, detail::kAlignmentD,
      detail::ElementD, detail::LayoutD*, detail::kAlignmentD, EpilogueSchedule>::CollectiveOp;

  using BuiltMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, detail::ElementA,
      cute::tuple<detail::LayoutA*, LayoutSFA*>, detail::kAlignmentAB, detail::ElementB,
      cute::tuple<detail::LayoutB*, LayoutSFB*>, detail::kAlignmentAB, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      MainloopSchedule>::CollectiveOp;
  using CollectiveMainloop = typename SelectConsumer<BuiltMainloop, kScaleN != 128, kPromotion>::type;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using StrideA = typename Kernel::InternalStrideA;
  using StrideB = typename Kernel::InternalStrideB;
  using StrideD = typename Kernel::InternalStrideD;
  using Scales = detail::ScalesB<kScaleN, decltype(cute::size<1>(TileShape{}))::value>;
  using Problems = detail::GroupedProblems<typename ProblemShape::UnderlyingProblemShape, StrideA, StrideB, StrideD,
                                           LayoutSFA, LayoutSFB, Scales>;

  static typename Gemm::Arguments make_arguments(const Problems& p, int num_problems, int num_sms,
                                                 const Schedule& schedule) {
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
    detail::apply_schedule(arguments.scheduler, schedule);
    return arguments;
  }

  static std::string run(const GroupedArgs& caller_args) {
    const bool contiguous = caller_args.kind == GroupedKind::kContiguous;
    // The problem setup kernels point each problem at its group's slice of the (expanded) B scales.
    Scales scales_b;
    std::string scale_error =
        scales_b.prepare(caller_args.sb, caller_args.num_groups, caller_args.n, caller_args.k, caller_args.stream);
    if (!scale_error.empty()) return scale_error;
    GroupedArgs args = caller_args;
    args.sb = scales_b.sb;
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
    const size_t cutlass_workspace =
        Gemm::get_workspace_size(make_arguments(p, num_problems, args.num_sms, args.schedule));
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
      auto arguments = make_arguments(p, num_problems, args.num_sms, args.schedule);
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

// Contiguous grouped GEMM on the dense kernel with GroupIndexedMainloop (TileConfig::kIndexed*): one launch over
// the whole (m_sum, n, k) problem, so no problem arrays, no per-problem tensor-map updates and the dense kernel's
// TMA-loaded M-major A scales. A one-warp-per-block setup kernel writes each 128-row block's group. 256-row tiles
// (Promotion::kWaves) run ContiguousTileScheduler: a tile of two groups takes one pass over K per group.
template <class TileShape, class ClusterShape, int kScaleN = 128, Promotion kPromotion = Promotion::kNone,
          class EpilogueTile = cutlass::epilogue::collective::EpilogueTileAuto, bool kWholeTileEpilogue = false>
struct IndexedGemm {
  using ScaleConfig = detail::DenseScaleConfigN<kScaleN>;
  using LayoutSFA = decltype(ScaleConfig::deduce_layoutSFA());
  using LayoutSFB = decltype(ScaleConfig::deduce_layoutSFB());
  // The 192-wide tiles read B's 128x128 blocks directly (WideTileMma<..., true>).
  static constexpr bool kDirectScalesB = kScaleN < 128;
  static constexpr bool kTwoBlocksPerTile = cute::size<0>(TileShape{}) == 2 * detail::kRowBlock;
  static_assert(!kTwoBlocksPerTile || kPromotion == Promotion::kWaves, "256-row tiles: WaveMma's two-group passes");
  using Dense = DenseGemm<TileShape, ClusterShape, cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8Blockwise,
                          cutlass::epilogue::TmaWarpSpecializedCooperative, kScaleN, kPromotion, kDirectScalesB,
                          EpilogueTile, detail::AlphaBetaD, kWholeTileEpilogue>;
  using CollectiveMainloop = GroupIndexedMainloop<typename Dense::MmaMainloop>;
  using Scheduler = std::conditional_t<kTwoBlocksPerTile, ContiguousTiles, void>;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, CollectiveMainloop,
                                                      typename Dense::KernelEpilogue, Scheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static std::string run(const GroupedArgs& args) {
    using StrideA = typename Kernel::StrideA;
    using StrideB = typename Kernel::StrideB;
    using StrideD = typename Kernel::StrideD;
    const int m = args.m, n = args.n, k = args.k;
    const int num_blocks = (m + detail::kRowBlock - 1) / detail::kRowBlock;
    StrideA stride_a = cute::make_stride(int64_t(k), cute::Int<1>{}, int64_t(0));
    StrideB stride_b = cute::make_stride(int64_t(k), cute::Int<1>{}, int64_t(n) * k);  // batch = group
    StrideD stride_d = cute::make_stride(int64_t(n), cute::Int<1>{}, int64_t(0));
    const int32_t k_blocks = (k + 127) / 128;
    const auto sa_ld = static_cast<int32_t>(args.sa_ld);
    const int32_t m_padded = (m + 3) / 4 * 4;  // as DenseGemm: TMA needs whole 16-byte units
    LayoutSFA layout_sfa = cute::make_layout(
        cute::make_shape(cute::make_shape(cute::Int<1>{}, m_padded), cute::make_shape(cute::Int<128>{}, k_blocks),
                         1),
        cute::make_stride(cute::make_stride(cute::Int<0>{}, cute::Int<1>{}), cute::make_stride(cute::Int<0>{}, sa_ld),
                          sa_ld * k_blocks));
    using Scales = std::conditional_t<kDirectScalesB, detail::ScalesB<128, 128>,
                                      detail::ScalesB<kScaleN, decltype(cute::size<1>(TileShape{}))::value>>;
    LayoutSFB layout_sfb = ScaleConfig::tile_atom_to_shape_SFB(
        cute::make_shape(m, kDirectScalesB ? n : Scales::scale_n(n), k, args.num_groups));

    Scales scales_b;
    std::string error = scales_b.prepare(args.sb, args.num_groups, n, k, args.stream);
    if (!error.empty()) return error;
    void* block_group = nullptr;
    error = allocate_async(&block_group, sizeof(int32_t) * num_blocks, args.stream);
    if (!error.empty()) return error;
    const auto stream = static_cast<cudaStream_t>(args.stream);
    constexpr int kSetupThreads = 256;
    const int setup_ctas = (num_blocks * 32 + kSetupThreads - 1) / kSetupThreads;
    detail::build_block_groups<kSetupThreads><<<setup_ctas < 1024 ? setup_ctas : 1024, kSetupThreads, 0, stream>>>(
        static_cast<int32_t*>(block_group), args);
    cudaError_t launched = cudaGetLastError();
    if (launched != cudaSuccess) {
      free_async(block_group, args.stream);
      return std::string("block group setup launch: ") + cudaGetErrorString(launched);
    }

    cutlass::KernelHardwareInfo hw_info;
    hw_info.device_id = 0;
    cudaGetDevice(&hw_info.device_id);
    hw_info.sm_count = args.num_sms;
    typename CollectiveMainloop::Arguments mainloop{
        {static_cast<const detail::ElementA*>(args.a), stride_a, static_cast<const detail::ElementB*>(args.b),
         stride_b, args.sa, layout_sfa, scales_b.sb, layout_sfb},
        static_cast<const int32_t*>(block_group),
        args.num_groups};
    typename Gemm::Arguments arguments{cutlass::gemm::GemmUniversalMode::kGemm,
                                       {m, n, k, 1},
                                       mainloop,
                                       {{}, nullptr, stride_d, static_cast<detail::ElementD*>(args.out), stride_d},
                                       hw_info};
    detail::set_unit_scaling(arguments.epilogue.thread);
    detail::apply_schedule(arguments.scheduler, args.schedule);
    if constexpr (kTwoBlocksPerTile) {
      arguments.scheduler.block_group = static_cast<const int32_t*>(block_group);
      arguments.scheduler.num_blocks = num_blocks;
      arguments.scheduler.num_groups = args.num_groups;
    }

    std::string result = detail::launch_gemm<Gemm>(arguments, "indexed gemm", args.stream);
    if (result.empty()) result = zero_padding_rows(args);
    free_async(block_group, args.stream);
    return result;
  }
};

}  // namespace ff::gemm::cuda
