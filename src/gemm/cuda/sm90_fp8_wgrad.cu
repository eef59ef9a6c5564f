// The weight-gradient GEMM (DeepGEMM's wgrad_gemm_fp8_fp8_fp32_nt): out (m, n) fp32 += A (m, k) * B (n, k)^T, A and
// B e4m3 scaled per 1x128 (activations and output gradients). CUTLASS's blockwise FP8 collective at scale
// granularity (1, 1, 128): per 128-wide K block the WGMMAs sum into a block accumulator, then each element is added
// to the fp32 total times sa[row, kb] * sb[col, kb] (two-level accumulation, as the bf16 GEMMs). Both scale vectors
// are loaded per stage by the producer warp (cp.async, 128 floats each: too many per tile along both M and N for
// CUTLASS's TMA path, which takes one of them per tile). The epilogue reads the output tile by TMA as C and writes
// acc + C back (LinearCombination, alpha = beta = 1): C and D are the same tensor, and each tile reads its own tile
// before it writes it. 128x128x128 cooperative tiles, persistent grid, 1x1 cluster.
// Measured and not kept (H200, docs/gemm.md "Weight-gradient GEMMs"): the staggered promotion
// (OverlappedPromotionMma, kStagger) with per-column B scales, 2-CTA clusters, and CUTLASS's epilogue with a TMA
// reduce-add in place of its store.
#include "sm90_fp8_gemm.cuh"

namespace ff::gemm::cuda {

namespace {

using WgradScaleConfig =
    cutlass::detail::Sm90BlockwiseScaleConfig<1, 1, 128, cute::GMMA::Major::MN, cute::GMMA::Major::MN>;
using ElementOut = float;
using LayoutOut = cutlass::layout::RowMajor;
constexpr int kAlignmentOut = 4;  // 16 bytes of float32
using Accumulate = cutlass::epilogue::fusion::LinearCombination<ElementOut, float, ElementOut, float>;

template <class TileShape, class ClusterShape>
struct WgradGemm {
  using LayoutSFA = decltype(WgradScaleConfig::deduce_layoutSFA());
  using LayoutSFB = decltype(WgradScaleConfig::deduce_layoutSFB());

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, ElementOut, LayoutOut, kAlignmentOut, ElementOut,
      LayoutOut, kAlignmentOut, cutlass::epilogue::TmaWarpSpecializedCooperative, Accumulate>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, detail::ElementA, cute::tuple<detail::LayoutA, LayoutSFA>,
      detail::kAlignmentAB, detail::ElementB, cute::tuple<detail::LayoutB, LayoutSFB>, detail::kAlignmentAB, float,
      TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8Blockwise>::CollectiveOp;

  using Kernel =
      cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, CollectiveMainloop, CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  // ((1, rows), (128, kb), 1) : ((0, 1), (0, ld), ld * kb): element (row, kb) at scales[row + kb * ld].
  static auto scale_layout(int rows, int k_blocks, int64_t ld) {
    const auto stride = static_cast<int32_t>(ld);
    return cute::make_layout(
        cute::make_shape(cute::make_shape(cute::Int<1>{}, rows), cute::make_shape(cute::Int<128>{}, k_blocks), 1),
        cute::make_stride(cute::make_stride(cute::Int<0>{}, cute::Int<1>{}), cute::make_stride(cute::Int<0>{}, stride),
                          stride * k_blocks));
  }

  static std::string run(const WgradArgs& args) {
    using StrideA = typename Kernel::StrideA;
    using StrideB = typename Kernel::StrideB;
    using StrideC = typename Kernel::StrideC;
    using StrideD = typename Kernel::StrideD;
    const int m = args.m, n = args.n, k = args.k;
    const int k_blocks = (k + 127) / 128;
    StrideA stride_a = cute::make_stride(int64_t(k), cute::Int<1>{}, int64_t(0));
    StrideB stride_b = cute::make_stride(int64_t(k), cute::Int<1>{}, int64_t(0));
    StrideC stride_c = cute::make_stride(int64_t(n), cute::Int<1>{}, int64_t(0));
    StrideD stride_d = cute::make_stride(int64_t(n), cute::Int<1>{}, int64_t(0));
    const LayoutSFA layout_sfa = scale_layout(m, k_blocks, args.sa_ld);
    const LayoutSFB layout_sfb = scale_layout(n, k_blocks, args.sb_ld);

    cutlass::KernelHardwareInfo hw_info;
    hw_info.device_id = 0;
    cudaGetDevice(&hw_info.device_id);
    hw_info.sm_count = args.num_sms;

    typename Gemm::Arguments arguments{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {m, n, k, 1},
        {static_cast<const detail::ElementA*>(args.a), stride_a, static_cast<const detail::ElementB*>(args.b), stride_b,
         args.sa, layout_sfa, args.sb, layout_sfb},
        {{}, args.out, stride_c, args.out, stride_d},
        hw_info};
    arguments.epilogue.thread.alpha = 1.0f;
    arguments.epilogue.thread.beta = 1.0f;  // out += A B^T
    return detail::launch_gemm<Gemm>(arguments, "wgrad gemm", args.stream);
  }
};

}  // namespace

std::string run_wgrad(const WgradArgs& args) {
  using Gemm = WgradGemm<cute::Shape<cute::_128, cute::_128, cute::_128>, cute::Shape<cute::_1, cute::_1, cute::_1>>;
  return Gemm::run(args);
}

}  // namespace ff::gemm::cuda
