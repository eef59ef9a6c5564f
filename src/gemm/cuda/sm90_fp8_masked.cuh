// The masked grouped GEMM on the dense (non-ptr-array) kernel: the G groups are the batch mode L of one
// (m_max, n, k, G) problem, so A, B, their scales and D keep the dense kernel's TMA loads (A's scales M-major per
// group, loaded by TMA) and no per-group problem arrays or tensor-map updates exist. Two pieces make it masked:
//   - MaskedTileScheduler hands out only the tiles holding valid rows (row < masked_m[g]), read from the device at
//     run time (no host synchronisation, so the call can be captured in a CUDA graph);
//   - MaskedRowsEpilogue stores full tiles by TMA and a group's partly valid last tile from registers, only the rows
//     below masked_m[g]: the rows past it are never written ("masked rows untouched").
// Included by one .cu per tile configuration (sm90_fp8_masked_*.cu).
#pragma once

#include <cuda_bf16.h>

#include "cutlass/gemm/kernel/tile_scheduler.hpp"
#include "sm90_fp8_gemm.cuh"

namespace ff::gemm::cuda {

// The tile scheduler tag of the masked kernels (selects MaskedTileScheduler below).
struct MaskedTiles {};

// A persistent static scheduler over the valid tiles only: group by group, the row tiles holding rows below
// masked_m[g] times every column tile, row tiles fastest (the CTAs running at once share B's column tiles and the
// group's A). Work item w of CTA c is linear tile c + w * grid; the group is found by walking masked_m (G reads,
// cached). CUTLASS's PersistentTileSchedulerSm90 supplies the grid size, the k-tile bookkeeping and the rest of the
// interface; the functions that map a linear index to a tile are re-defined here (the kernel calls them on this
// type).
class MaskedTileScheduler : public cutlass::gemm::kernel::detail::PersistentTileSchedulerSm90 {
  using Base = cutlass::gemm::kernel::detail::PersistentTileSchedulerSm90;

 public:
  struct Arguments : Base::Arguments {
    const int32_t* masked_m = nullptr;
  };
  struct Params : Base::Params {
    const int32_t* masked_m = nullptr;
    int32_t m_max = 0;
    int32_t groups = 0;
    int32_t tile_m = 1;
    int32_t tiles_n = 0;
  };

  template <class ProblemShapeMNKL, class TileShape, class ClusterShape>
  static Params to_underlying_arguments(ProblemShapeMNKL problem_shape_mnkl, TileShape tile_shape,
                                        ClusterShape cluster_shape, cutlass::KernelHardwareInfo const& hw_info,
                                        Arguments const& arguments, void* workspace = nullptr,
                                        const uint32_t epilogue_subtile = 1, uint32_t ktile_start_alignment = 1u) {
    static_assert(cute::size(ClusterShape{}) == 1, "the masked kernels run 1x1 clusters");
    Params params;
    static_cast<Base::Params&>(params) =
        Base::to_underlying_arguments(problem_shape_mnkl, tile_shape, cluster_shape, hw_info, arguments, workspace,
                                      epilogue_subtile, ktile_start_alignment);
    params.masked_m = arguments.masked_m;
    params.m_max = static_cast<int32_t>(cute::get<0>(problem_shape_mnkl));
    params.groups = static_cast<int32_t>(cute::get<3>(problem_shape_mnkl));
    params.tile_m = static_cast<int32_t>(cute::size<0>(tile_shape));
    params.tiles_n = static_cast<int32_t>((cute::get<1>(problem_shape_mnkl) + cute::size<1>(tile_shape) - 1) /
                                          cute::size<1>(tile_shape));
    return params;
  }

  static bool can_implement(Arguments const& arguments) {
    return arguments.masked_m != nullptr && Base::can_implement(arguments);
  }

  CUTLASS_HOST_DEVICE MaskedTileScheduler() {}

  CUTLASS_DEVICE explicit MaskedTileScheduler(Params const& params) : Base(params), masked_(params) {
#if defined(__CUDA_ARCH__)
    linear_ = uint64_t(blockIdx.x) + uint64_t(gridDim.x) * (uint64_t(blockIdx.y) + uint64_t(gridDim.y) * blockIdx.z);
    grid_ = uint64_t(gridDim.x) * gridDim.y * gridDim.z;
#endif
  }

  template <class ClusterShape>
  CUTLASS_DEVICE WorkTileInfo initial_work_tile_info(ClusterShape) {
    return get_current_work();
  }

  CUTLASS_DEVICE WorkTileInfo get_current_work() const { return work_for(linear_); }

  CUTLASS_DEVICE void advance_to_next_work(uint32_t advance_count = 1) { linear_ += grid_ * advance_count; }

  CUTLASS_DEVICE bool is_last_tile(WorkTileInfo&, uint32_t advance_count = 1) const {
    return !work_for(linear_ + grid_ * advance_count).is_valid();
  }

  CUTLASS_DEVICE auto fetch_next_work(WorkTileInfo) {
    advance_to_next_work();
    return cute::make_tuple(get_current_work(), true);
  }

  template <class Pipeline, class PipelineState>
  CUTLASS_DEVICE auto fetch_next_work(WorkTileInfo work, Pipeline&, PipelineState) {
    return fetch_next_work(work);
  }

 private:
  CUTLASS_DEVICE WorkTileInfo work_for(uint64_t linear) const {
    uint64_t index = linear;
    for (int32_t group = 0; group < masked_.groups; ++group) {
      int32_t rows = __ldg(masked_.masked_m + group);
      rows = rows < 0 ? 0 : (rows > masked_.m_max ? masked_.m_max : rows);  // device-resident counts: clamp
      const uint64_t tiles_m = uint64_t(rows + masked_.tile_m - 1) / masked_.tile_m;
      const uint64_t tiles = tiles_m * masked_.tiles_n;
      if (index < tiles) {
        return {static_cast<int32_t>(index % tiles_m), static_cast<int32_t>(index / tiles_m), group, true};
      }
      index -= tiles;
    }
    return WorkTileInfo::invalid_work_tile();
  }

  Params masked_;
  uint64_t linear_ = 0;
  uint64_t grid_ = 1;
};

// The epilogue of the masked kernels. With kTmaFullTiles, `Base` is CUTLASS's TMA epilogue (over the (m_max, n, G)
// output) and stores the tiles whose rows are all valid; a group's last, partly valid tile is stored from registers,
// the rows below masked_m[g] only (the TMA store would write the whole box). There each thread converts its
// accumulators to bf16 and stores them as bf16 pairs (two adjacent columns of one row: the WGMMA accumulator
// fragment's innermost mode). The choice is per tile, so all consumer threads of a tile take the same path and the
// TMA store pipeline's state only advances on the tiles it stored. Without kTmaFullTiles, `Base` is CUTLASS's
// shared-memory-free epilogue (NoSmemWarpSpecialized, whose arguments it keeps) and every tile is stored from
// registers: the ping-pong kernel, whose two consumer warpgroups share the TMA store pipeline's buffers by a fixed
// alternation that a skipped store would break. No source C: D = A * B^T.
template <class Base, bool kTmaFullTiles>
struct MaskedRowsEpilogue : Base {
  using ElementD = typename Base::ElementD;
  using StrideD = typename Base::StrideD;
  struct Arguments : Base::Arguments {
    const int32_t* masked_m = nullptr;
  };
  struct Params : Base::Params {
    ElementD* ptr_d = nullptr;
    StrideD stride_d{};
    const int32_t* masked_m = nullptr;
  };

  template <class ProblemShape>
  static Params to_underlying_arguments(ProblemShape const& problem_shape, Arguments const& arguments,
                                        void* workspace) {
    Params params;
    static_cast<typename Base::Params&>(params) = Base::to_underlying_arguments(problem_shape, arguments, workspace);
    params.ptr_d = const_cast<ElementD*>(arguments.ptr_D);
    params.stride_d = arguments.dD;
    params.masked_m = arguments.masked_m;
    return params;
  }

  template <class ProblemShape>
  static bool can_implement(ProblemShape const& problem_shape, Arguments const& arguments) {
    return arguments.masked_m != nullptr && arguments.ptr_D != nullptr && cute::get<1>(problem_shape) % 2 == 0 &&
           Base::can_implement(problem_shape, arguments);
  }

  CUTLASS_HOST_DEVICE MaskedRowsEpilogue(Params const& params, typename Base::TensorStorage& shared_tensors)
      : Base(params, shared_tensors), ptr_d_(params.ptr_d), stride_d_(params.stride_d), masked_m_(params.masked_m) {}

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
    using X = Underscore;
    static_assert(is_static<AccLayout>::value, "static accumulator fragment");
    static_assert(size<0, 0>(AccLayout{}) == 2 && stride<0, 0>(AccLayout{}) == 1,
                  "the fragment's innermost mode pairs two adjacent columns");
    const auto m = get<0>(problem_shape_mnkl);
    const auto n = get<1>(problem_shape_mnkl);
    const auto l = get<3>(problem_shape_mnkl);
    auto [m_coord, n_coord, k_coord, l_coord] = tile_coord_mnkl;
    (void)k_coord;
    int rows = __ldg(masked_m_ + l_coord);
    rows = rows < 0 ? 0 : (rows > m ? m : rows);
    constexpr int kTileM = size<0>(TileShapeMNK{});
    const bool all_rows_valid = (m_coord + 1) * kTileM <= rows || ((m_coord + 1) * kTileM > m && rows == m);
    if (kTmaFullTiles && all_rows_valid) {
      // Every row of the tile is valid (or the rows past m_max, which the TMA box clips): CUTLASS's TMA store.
      return Base::store(load_pipeline, load_pipe_consumer_state, store_pipeline, store_pipe_producer_state,
                         problem_shape_mnkl, tile_shape_mnk, tile_coord_mnkl, accumulators, tiled_mma, thread_idx,
                         shared_tensors, subtile_index);
    }
    Tensor m_d = make_tensor(make_gmem_ptr(ptr_d_), make_shape(m, n, l), stride_d_);  // (m, n, l)
    Tensor g_d = local_tile(m_d, tile_shape_mnk, make_coord(_, _, _), Step<_1, _1, X>{})(_, _, m_coord, n_coord,
                                                                                         l_coord);  // (BLK_M, BLK_N)
    Tensor c_d = local_tile(make_identity_tensor(make_shape(m, n)), take<0, 2>(tile_shape_mnk),
                            make_coord(m_coord, n_coord));  // (BLK_M, BLK_N) coordinates
    auto thread_mma = tiled_mma.get_thread_slice(thread_idx);
    Tensor t_g = thread_mma.partition_C(g_d);
    Tensor t_c = thread_mma.partition_C(c_d);
    CUTE_STATIC_ASSERT_V(size(t_g) == size(accumulators));
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < size(accumulators); i += 2) {
      const auto coord = t_c(i);
      if (get<0>(coord) < rows && get<1>(coord) < n) {
        const __nv_bfloat162 pair = __floats2bfloat162_rn(accumulators(i), accumulators(i + 1));
        *reinterpret_cast<__nv_bfloat162*>(&t_g(i)) = pair;
      }
    }
    return cute::make_tuple(load_pipe_consumer_state, store_pipe_producer_state);
  }

 private:
  ElementD* ptr_d_;
  StrideD stride_d_;
  const int32_t* masked_m_;
};

}  // namespace ff::gemm::cuda

namespace cutlass::gemm::kernel::detail {

template <class ArchTag, class TileShape, class ClusterShape, uint32_t SchedulerPipelineStageCount,
          class ProblemShapeType>
struct TileSchedulerSelector<ff::gemm::cuda::MaskedTiles, ArchTag, TileShape, ClusterShape, SchedulerPipelineStageCount,
                             ProblemShapeType> {
  using Scheduler = ff::gemm::cuda::MaskedTileScheduler;
};

}  // namespace cutlass::gemm::kernel::detail

namespace ff::gemm::cuda {

// Masked grouped GEMM type for one tile configuration (1x1 cluster, cooperative, 128-row tiles).
// args.sa: M-major per group, element (g, row, kb) at sa[g * sa_group_stride + row + kb * sa_ld] (DeepGEMM's
// TMA-aligned column-major layout of (G, m_max, kb)); sa_ld and sa_group_stride multiples of 4, sa_ld >= m_max
// rounded up to 4.
// kPingpong: the ping-pong kernel (two consumer warpgroups on alternate 64-row tiles, each tile's epilogue
// overlapping the other's mainloop) with CUTLASS's consumer and the register-only epilogue; else the cooperative
// kernel with the TMA epilogue for full tiles.
template <class TileShape, Promotion kPromotion, bool kPingpong = false>
struct MaskedGemm {
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
  // The dense kernel's types for this tile: its mainloop (consumer included) and the epilogue the masked one wraps.
  using Dense = DenseGemm<TileShape, ClusterShape,
                          std::conditional_t<kPingpong, cutlass::gemm::KernelTmaWarpSpecializedPingpongFP8Blockwise,
                                             cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8Blockwise>,
                          std::conditional_t<kPingpong, cutlass::epilogue::NoSmemWarpSpecialized,
                                             cutlass::epilogue::TmaWarpSpecializedCooperative>,
                          128, kPromotion, false, cutlass::epilogue::collective::EpilogueTileAuto, detail::AlphaBetaD>;
  using ScaleConfig = typename Dense::ScaleConfig;
  using LayoutSFA = typename Dense::LayoutSFA;
  using LayoutSFB = typename Dense::LayoutSFB;
  using CollectiveEpilogue = MaskedRowsEpilogue<typename Dense::CollectiveEpilogue, !kPingpong>;
  using CollectiveMainloop = typename Dense::MmaMainloop;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, CollectiveMainloop,
                                                      CollectiveEpilogue, MaskedTiles>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static std::string run(const GroupedArgs& args) {
    using StrideA = typename Kernel::StrideA;
    using StrideB = typename Kernel::StrideB;
    using StrideD = typename Kernel::StrideD;
    const int m = args.m, n = args.n, k = args.k, groups = args.num_groups;
    StrideA stride_a = cute::make_stride(int64_t(k), cute::Int<1>{}, int64_t(m) * k);
    StrideB stride_b = cute::make_stride(int64_t(k), cute::Int<1>{}, int64_t(n) * k);
    StrideD stride_d = cute::make_stride(int64_t(n), cute::Int<1>{}, int64_t(m) * n);
    const int32_t k_blocks = (k + 127) / 128;
    const auto sa_ld = static_cast<int32_t>(args.sa_ld);
    const int32_t m_padded = (m + 3) / 4 * 4;  // as DenseGemm: TMA needs whole 16-byte units
    LayoutSFA layout_sfa = cute::make_layout(
        cute::make_shape(cute::make_shape(cute::Int<1>{}, m_padded), cute::make_shape(cute::Int<128>{}, k_blocks),
                         groups),
        cute::make_stride(cute::make_stride(cute::Int<0>{}, cute::Int<1>{}), cute::make_stride(cute::Int<0>{}, sa_ld),
                          static_cast<int32_t>(args.sa_group_stride)));
    LayoutSFB layout_sfb = ScaleConfig::tile_atom_to_shape_SFB(cute::make_shape(m, n, k, groups));

    cutlass::KernelHardwareInfo hw_info;
    hw_info.device_id = 0;
    cudaGetDevice(&hw_info.device_id);
    hw_info.sm_count = args.num_sms;
    typename CollectiveMainloop::Arguments mainloop{static_cast<const detail::ElementA*>(args.a),
                                                    stride_a,
                                                    static_cast<const detail::ElementB*>(args.b),
                                                    stride_b,
                                                    args.sa,
                                                    layout_sfa,
                                                    args.sb,
                                                    layout_sfb};
    typename CollectiveEpilogue::Arguments epilogue{};
    detail::set_unit_scaling(epilogue.thread);
    epilogue.ptr_D = static_cast<detail::ElementD*>(args.out);
    epilogue.dC = stride_d;
    epilogue.dD = stride_d;
    epilogue.masked_m = args.indices;
    typename Gemm::Arguments arguments{
        cutlass::gemm::GemmUniversalMode::kGemm, {m, n, k, groups}, mainloop, epilogue, hw_info};
    arguments.scheduler.masked_m = args.indices;
    return detail::launch_gemm<Gemm>(arguments, "masked gemm", args.stream);
  }
};

}  // namespace ff::gemm::cuda
