// sm90 MLA decode over a paged KV cache (bf16 / fp16, and the FP8 e4m3 cache): warpgroup MMAs (wgmma:
// WgmmaPipelinedDecoder for a bf16 / fp16 cache at any number of query rows per KV head, WgmmaFp8Decoder
// for the FP8 cache from 64 rows, the opt-in WgmmaSeesawDecoder, and for the FP8 cache with <= 16 rows
// Fp8TransposedWgDecoder, the rows as WGMMA's N side; further down) and warp-level tensor-core MMA
// (mma.sync m16n8k16, ldmatrix: the FP8 cache with 17-63 rows, and when forced); fed by cp.async
// pipelines or bulk copies (the bf16 / fp16 WGMMA kernel: full KV blocks by TMA), then a combine kernel
// for sequences split over several SM parts. The design and its numbers are in docs/mla.md. The comments
// up to the WGMMA section describe the mma.sync kernels.
//
// Work decomposition (FlashMLA's): grid (m_blocks, h_kv, num_sm_parts). A CTA takes the 64 query rows
// of one m-block of one KV head (row r of a KV head is query token r / group, head r % group) and
// walks the sequences of its scheduler part, a 64-token KV block at a time, with an online softmax in
// the log2 domain. A sequence's only piece writes out / softmax_lse; a split piece writes its
// normalized partial output and log2 lse to the fp32 workspace, merged by mla_combine_kernel.
//
// Inside a CTA: 8 warps, warp w owns query rows 16 (w % 4) .. + 16 and is half (w / 4) of a pair:
//   S = Q K^T   the warp computes its 16 rows x the 32 tokens of its half (all 576 channels);
//   softmax     row maxima are exchanged with the partner warp through shared memory; each warp keeps
//               per-thread partial row sums over its own tokens (merged once, at the end);
//   O += P V    the warp accumulates its 16 rows x the 256 value channels of its half over all 64
//               tokens: its own P half stays in registers (the accumulator layout of m16n8 is the A
//               layout of m16n8k16), the partner's half comes through shared memory, written into the
//               RoPE channels 512..575 of the KV tile, which QK^T no longer needs.
// With few query rows the pairs split the tokens instead (Decoder's kSplit): h_q 16, s_q 1 (16 rows):
// each of the 4 pairs takes 16 tokens of every block with its own softmax state, merged at the end of
// the piece; 32 rows: 2 row groups x 2 slices of 32 tokens. Warps whose rows are all padding skip the
// arithmetic but keep the barriers. Fragment loads run one k-step ahead of the MMAs (software pipeline).
//
// Shared memory (one CTA per SM): tiles of 64 rows x 576 channels in 16-bit elements, 1152 bytes per
// row, the 16-byte chunk c of row r stored at chunk c ^ (r & 7), so the 8 row addresses of an ldmatrix
// hit 8 different bank groups.
//   bf16 / fp16 cache: Q tile | KV tile 0 | KV tile 1 | row reduction buffer       = 222,720 bytes
//   FP8 cache, > 32 rows: Q tile | KV tile (dequantized) | raw tile 0 | raw tile 1 | … = 231,936 bytes
// The raw FP8 tiles hold the 656-byte tokens as stored; every block is dequantized (e4m3 * scale ->
// bf16 / fp16, RoPE copied) into the KV tile before its MMAs (Decoder<., true, 1>). With at most 32
// rows per KV head (the memory-bound shapes) Fp8Decoder instead feeds its MMAs straight from four raw
// stages filled by bulk copies (see its comment; by default in its channel-split mode: 8 warps share
// one softmax, S is split by tokens and P V by output channels, for 16 and 32 rows; the pair, direct
// and Fp8WideDecoder (16-warp) variants stay selectable with FF_MLA_FP8).
//
// Never reads past the length: tokens at or past a piece's end are zero-filled by cp.async with a source
// size of 0 (no global read), or, in Fp8Decoder, not copied and zeroed by plain stores; blocks past it
// are not loaded, and a block id outside the cache or a column outside the block table loads zeros
// instead of faulting (the host rejects such input first when asked to check values).
#include <cuda.h>  // CUtensorMap and its enums only: the encoder comes through the runtime's entry-point query
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "decode_params.h"

namespace ff::mla::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kTileRows = 64;  // query rows per CTA, and tokens per KV block
constexpr int kDimQk = 576;
constexpr int kDimV = 512;
constexpr int kChunks = kDimQk / 8;  // 16-byte chunks per tile row (72)
constexpr int kRowBytes = kDimQk * 2;
constexpr int kTileBytes = kTileRows * kRowBytes;  // 73,728
constexpr int kFp8TokenBytes = 656;
constexpr int kFp8TokenChunks = kFp8TokenBytes / 16;       // 41
constexpr int kRawTileBytes = kTileRows * kFp8TokenBytes;  // 41,984
constexpr int kReductionBytes = 2 * kTileRows * 4;         // (2 halves, 64 rows) floats
constexpr int kSmemBytes16 = 3 * kTileBytes + kReductionBytes;
constexpr int kSmemBytesFp8 = 2 * kTileBytes + 2 * kRawTileBytes + kReductionBytes;
constexpr float kLog2e = 1.4426950408889634f;
// Lazy rescaling (the 16-bit mma.sync kernel, Decoder, and Fp8TransposedWgDecoder; params.lazy_rescale): a
// row's running max (log2 domain) moves only when a block's max exceeds it by more than kLazyMaxLog2, so most
// blocks leave the accumulators alone; P = 2^(s - max) is then at most 2^8 instead of 1, which fp32 sums and
// 16-bit P hold with the same relative precision. Softmax results do not depend on the reference max (lse adds
// it back). Measured on the H200 (h_q 16, 4K-32K): bf16 1-2% faster. The mma.sync FP8 kernel (Fp8Decoder),
// which already skips unmoved rescales, got 0.7-2% slower with it at 8K-32K, so it keeps the eager rule.
constexpr float kLazyMaxLog2 = 8.0f;
// Lazy units in Fp8TransposedWgDecoder (with the lazy running max): a channel group's unit (the largest
// scale seen) moves only when a block's largest scale exceeds it this many times, so a token's weight is at
// most 16 and its P * weight, stored as f16, at most 2^8 * 16 = 4096 (f16 holds 65504).
constexpr float kLazyScaleFactor = 16.0f;
// The new running max of a row from its old one and the block's (-inf: nothing visible yet).
__device__ __forceinline__ float next_running_max(float old_max, float block_max, bool lazy) {
  return lazy ? (block_max > old_max + kLazyMaxLog2 ? block_max : old_max) : fmaxf(old_max, block_max);
}
static_assert(kChunks % 8 == 0, "the XOR swizzle permutes chunks within groups of 8");
static_assert(kFp8TokenBytes % 16 == 0, "FP8 tokens are copied in 16-byte chunks");
static_assert(kSmemBytesFp8 <= 232448, "one CTA must fit the 227 KB of an sm_90 SM");
static_assert(kThreads == 8 * 32, "8 warps: 4 row groups x 2 halves");

__device__ __forceinline__ uint32_t tile_offset(int row, int chunk) {
  return static_cast<uint32_t>(row * kRowBytes + ((chunk ^ (row & 7)) << 4));
}

__device__ __forceinline__ uint32_t smem_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// Read-only global loads that skip L1 (data read once): 16 bytes, and two floats.
__device__ __forceinline__ uint4 ld_global_nc_u32x4(const void* src) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(src));
  return v;
}
__device__ __forceinline__ float2 ld_global_nc_f32x2(const void* src) {
  float2 v;
  asm volatile("ld.global.nc.L1::no_allocate.v2.f32 {%0, %1}, [%2];\n" : "=f"(v.x), "=f"(v.y) : "l"(src));
  return v;
}
// 16 bytes global -> shared; with valid = false the destination is zero-filled and nothing is read.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  const int src_size = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_size) : "memory");
}
// The L2 cache policy of Fp8Decoder's whole-block KV copies: with `evict_first` the lines a copy brings
// in are the first evicted (the KV cache is read once per call), else the normal priority
// (DecodeParams::kv_evict_first). A select, not a branch: both ways run the same hinted copy. On the
// H200 the FP8 decode was 0.5-1% faster with evict_first in 8 of 8 A/B cases; the combine kernel's
// time did not change (its partials are read from DRAM either way).
__device__ __forceinline__ uint64_t kv_l2_policy(bool evict_first) {
  uint64_t first, normal;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(first));
  asm volatile("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;\n" : "=l"(normal));
  return evict_first ? first : normal;
}
__device__ __forceinline__ void cp_async_16_always(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// mbarriers (shared memory, 8 bytes each) and the bulk copy engine (TMA), for the TMA loads of
// WgmmaPipelinedDecoder<., ., true> and the bulk copies of Fp8Decoder.
__device__ __forceinline__ void mbarrier_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes initialized mbarriers visible to the other threads and to the copy engine (async proxy).
__device__ __forceinline__ void fence_mbarrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// Holds the barrier's current phase open until every cp.async this thread issued so far has landed
// (the pending count is raised now and lowered when they complete: no arrival of its own).
__device__ __forceinline__ void cp_async_mbarrier_arrive(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
// Spins until the phase of parity `parity` has completed. The loop lives inside one asm block and its
// branch is uniform (every lane of a warp reads the same barrier at once), so the compiler sees no
// divergent path between the wgmma instructions around a wait (which would serialize them).
// NOTE: no timeout: a lost arrival would hang the kernel, as a lost named-barrier arrival would.
__device__ __forceinline__ void mbarrier_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\n"
      "WAIT_AGAIN:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra.uni WAIT_AGAIN;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void mbarrier_arrive_if(uint32_t bar, int issue) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %1, 0;\n"
      "@p mbarrier.arrive.shared::cta.b64 _, [%0];\n}\n" ::"r"(bar),
      "r"(issue)
      : "memory");
}
// One arrival on `bar` that adds `bytes` to the transaction count of its phase, where `issue` is
// nonzero (the grouped mbarriers of the lean kernels: one arrival announces the bytes of 3 boxes).
__device__ __forceinline__ void mbarrier_arrive_expect_tx_if(uint32_t bar, uint32_t bytes, int issue) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %2, 0;\n"
      "@p mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n}\n" ::"r"(bar),
      "r"(bytes), "r"(issue)
      : "memory");
}
// `bytes` (a multiple of 16) from global `src` to shared `dst` (both 16-byte aligned) by the bulk copy
// engine; the copy completes its bytes on the mbarrier `bar` (announced there by an arrive.expect_tx).
__device__ __forceinline__ void bulk_copy_to_shared(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}
// bulk_copy_to_shared under an L2 cache policy (kv_l2_policy).
__device__ __forceinline__ void bulk_copy_to_shared_hint(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar,
                                                         uint64_t policy) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;\n" ::"r"(
          dst),
      "l"(src), "r"(bytes), "r"(bar), "l"(policy)
      : "memory");
}
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void st_shared_v4(uint32_t address, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
  asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(address), "r"(a), "r"(b), "r"(c), "r"(d) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address)
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(address)
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address)
               : "memory");
}

// d += a (16x16, row-major) * b (16x8, column-major), fp32 accumulation.
template <bool kFp16>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (kFp16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

template <bool kFp16>
__device__ __forceinline__ uint32_t pack2(float low, float high) {
  if constexpr (kFp16) {
    const __half2 value = __floats2half2_rn(low, high);
    return *reinterpret_cast<const uint32_t*>(&value);
  } else {
    const __nv_bfloat162 value = __floats2bfloat162_rn(low, high);
    return *reinterpret_cast<const uint32_t*>(&value);
  }
}

__device__ __forceinline__ float2 e4m3x2_to_float2(uint16_t bits) {
  const __half2_raw raw = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(bits), __NV_E4M3);
  const __half2 value(raw);
  return __half22float2(value);
}

// 4 kWords e4m3 values (the bytes of `in`, in order) dequantized: e4m3 x scale in fp32, rounded to
// 16 bits (f16 / bf16), two per output word.
template <bool kFp16, int kWords>
__device__ __forceinline__ void dequantize_e4m3(const uint32_t (&in)[kWords], float scale,
                                                uint32_t (&out)[2 * kWords]) {
#pragma unroll
  for (int i = 0; i < 2 * kWords; ++i) {
    const float2 value = e4m3x2_to_float2(static_cast<uint16_t>(in[i / 2] >> ((i % 2) * 16)));
    out[i] = pack2<kFp16>(value.x * scale, value.y * scale);
  }
}

// Two bf16 values (the cache's RoPE channels) as f16x2 (rounded).
__device__ __forceinline__ uint32_t bf16x2_to_f16x2(uint32_t word) {
  return pack2<true>(__uint_as_float(word << 16), __uint_as_float(word & 0xffff0000u));
}
// 8 bf16 values as f16, in place.
__device__ __forceinline__ void bf16x8_to_f16x8(uint4& packed) {
  packed = make_uint4(bf16x2_to_f16x2(packed.x), bf16x2_to_f16x2(packed.y), bf16x2_to_f16x2(packed.z),
                      bf16x2_to_f16x2(packed.w));
}

// Bytes 0, 1 and 2, 3 of x (e4m3) -> two f16x2 (exact).
__device__ __forceinline__ void e4m3x4_to_f16x2x2(uint32_t x, uint32_t& low, uint32_t& high) {
  asm("{\n.reg .b16 l, h;\nmov.b32 {l, h}, %2;\ncvt.rn.f16x2.e4m3x2 %0, l;\ncvt.rn.f16x2.e4m3x2 %1, h;\n}\n"
      : "=r"(low), "=r"(high)
      : "r"(x));
}

// Per-thread state of one piece: the warp's output accumulators and the running softmax statistics of
// the two rows (g and g + 8 of the warp's 16) this thread holds.
struct RowState {
  float max_log2[2];
  float sum[2];  // partial: this thread's tokens only; reduced over the quad and the pair at the end
};

// The piece: tokens [token_begin, token_end) of sequence `batch`, written to split slot `slot` (or
// directly to out when `only_piece`).
struct Piece {
  int batch, token_begin, token_end, seqlen, slot;
  bool only_piece;
};

// kSplit > 1: folds the softmax states of slices 1.. into the slice-0 warps with the same rows and
// half, through shared memory (`scratch`: the KV stages, idle once the pipeline has drained; 135 KB):
// m = max(m_a, m_b), sum = sum_a 2^(m_a - m) + sum_b 2^(m_b - m), acc likewise. The layout of `acc`
// does not matter as long as every warp uses the same one.
template <int kSplit>
__device__ void merge_slice_states(float (&acc)[32][4], RowState& state, float* scratch, bool active, int slice,
                                   int row_group, int half, int lane) {
  constexpr int kRowGroups = 4 / kSplit;
  constexpr int kWarpFloats = 32 * 4 * 32 + 4 * 32;  // acc, then max0, max1, sum0, sum1; lane-minor
  const int warp = static_cast<int>(threadIdx.x) / 32;
  __syncthreads();  // every warp is done with the tiles
  if (active && slice > 0) {
    float* mine = scratch + warp * kWarpFloats;
#pragma unroll
    for (int n = 0; n < 32; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) mine[(n * 4 + e) * 32 + lane] = acc[n][e];
    }
    mine[4096 + lane] = state.max_log2[0];
    mine[4096 + 32 + lane] = state.max_log2[1];
    mine[4096 + 64 + lane] = state.sum[0];
    mine[4096 + 96 + lane] = state.sum[1];
  }
  __syncthreads();
  if (active && slice == 0) {
#pragma unroll 1
    for (int other_slice = 1; other_slice < kSplit; ++other_slice) {
      const int other_warp = (row_group + kRowGroups * other_slice) + 4 * half;
      const float* theirs = scratch + other_warp * kWarpFloats;
      float mine_scale[2], their_scale[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const float their_max = theirs[4096 + 32 * i + lane];
        const float new_max = fmaxf(state.max_log2[i], their_max);
        const float base = new_max == -INFINITY ? 0.0f : new_max;
        mine_scale[i] = exp2f(state.max_log2[i] - base);
        their_scale[i] = exp2f(their_max - base);
        state.sum[i] = state.sum[i] * mine_scale[i] + theirs[4096 + 64 + 32 * i + lane] * their_scale[i];
        state.max_log2[i] = new_max;
      }
#pragma unroll
      for (int n = 0; n < 32; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          acc[n][e] = acc[n][e] * mine_scale[e / 2] + theirs[(n * 4 + e) * 32 + lane] * their_scale[e / 2];
        }
      }
    }
  }
}
constexpr int kMergeScratchBytes = 8 * (32 * 4 * 32 + 4 * 32) * 4;

// kSplit: token slices per 64-token block. With few query rows (h_q 16: one row group of 16), the
// four warp pairs would otherwise idle but one: with kSplit = 4 (<= 16 rows) or 2 (<= 32 rows), pair
// (row group, slice) takes rows of row group `rg % (4 / kSplit)` and the slice `rg / (4 / kSplit)` of
// every block's tokens, with its own softmax state; the slices are merged once per piece.
template <bool kFp16, bool kFp8, int kSplit>
class Decoder {
  static_assert(kSplit == 1 || kSplit == 2 || kSplit == 4, "token slices per block: 1, 2 or 4");
  static constexpr int kRowGroups = 4 / kSplit;            // query row groups of 16 served
  static constexpr int kSliceTokens = kTileRows / kSplit;  // tokens of a block per warp pair
  static constexpr int kWarpTokens = kSliceTokens / 2;     // tokens per warp in S = Q K^T
  static constexpr int kNTiles = kWarpTokens / 8;          // m16n8 tiles of S per warp (4, 2, 1)
  static constexpr int kKSteps = kSliceTokens / 16;        // k-steps of O += P V per block (4, 2, 1)

 public:
  static constexpr int kSmemBytes = kFp8 ? kSmemBytesFp8 : kSmemBytes16;

  __device__ Decoder(const DecodeParams& p, char* smem) : p_(p) {
    sq_ = smem_address(smem);
    skv_ = sq_ + kTileBytes;
    reduction_ = reinterpret_cast<float*>(smem + (kFp8 ? 2 * kTileBytes + 2 * kRawTileBytes : 3 * kTileBytes));
    raw_ = smem + 2 * kTileBytes;
    kv_tile_ = smem + kTileBytes;
    warp_ = static_cast<int>(threadIdx.x) / 32;
    lane_ = static_cast<int>(threadIdx.x) % 32;
    pair_ = warp_ & 3;
    row_group_ = pair_ % kRowGroups;
    slice_ = pair_ / kRowGroups;
    half_ = warp_ >> 2;
    head_k_ = static_cast<int>(blockIdx.y);
    m_block_ = static_cast<int>(blockIdx.x);
    const int tile_rows = min(kTileRows, p.rows - m_block_ * kTileRows);
    active_ = row_group_ * 16 < tile_rows;
  }

  __device__ void run_piece(const Piece& piece) {
    const int num_kv_blocks =
        piece.token_end > piece.token_begin ? (piece.token_end - piece.token_begin + kTileRows - 1) / kTileRows : 0;
    const int first_block = piece.token_begin / kTileRows;
    float acc[32][4];
#pragma unroll
    for (int n = 0; n < 32; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    RowState state;
    state.max_log2[0] = state.max_log2[1] = -INFINITY;
    state.sum[0] = state.sum[1] = 0.0f;

    // Prologue: group 0 = Q + block 0, group 1 = block 1 (either may be empty).
    load_q(piece.batch);
    if (num_kv_blocks > 0) load_block(piece, first_block, 0);
    cp_async_commit();
    if (num_kv_blocks > 1) load_block(piece, first_block + 1, 1);
    cp_async_commit();

    for (int j = 0; j < num_kv_blocks; ++j) {
      // Groups committed so far: j + 2; all but the newest are complete, so block j has landed.
      cp_async_wait<1>();
      __syncthreads();
      uint32_t tile;
      if constexpr (kFp8) {
        dequantize(raw_ + (j & 1) * kRawTileBytes);
        __syncthreads();  // the raw tile is free again and the KV tile is complete
        if (j + 2 < num_kv_blocks) load_block(piece, first_block + j + 2, j & 1);
        cp_async_commit();
        tile = skv_;
      } else {
        tile = skv_ + (j & 1) * kTileBytes;
      }
      if (!p_.probe_loads_only) compute_block(tile, (first_block + j) * kTileRows, piece, acc, state);
      if constexpr (!kFp8) {
        __syncthreads();  // every warp is done with this tile before it is refilled
        if (j + 2 < num_kv_blocks) load_block(piece, first_block + j + 2, j & 1);
        cp_async_commit();
      }
    }
    cp_async_wait<0>();
    if constexpr (kSplit > 1) merge_slices(acc, state);
    finish_piece(piece, acc, state);
    __syncthreads();  // the next piece reuses every buffer
  }

 private:
  // Q rows of this CTA (64 x 576, padding rows zero) into the Q tile.
  __device__ void load_q(int batch) {
    const auto* q = static_cast<const uint16_t*>(p_.q);
    for (int task = static_cast<int>(threadIdx.x); task < kTileRows * kChunks; task += kThreads) {
      const int row = task / kChunks, chunk = task % kChunks;
      const int r = m_block_ * kTileRows + row;
      const bool valid = r < p_.rows;
      const uint16_t* source = q;
      if (valid) {
        const int token = r / p_.group, head = head_k_ * p_.group + r % p_.group;
        source = q + batch * p_.q_batch_stride + token * p_.q_token_stride + head * p_.q_head_stride + chunk * 8;
      }
      cp_async_16(sq_ + tile_offset(row, chunk), source, valid);
    }
  }

  // KV block `block` (64 tokens) of the piece's sequence into stage `stage`; tokens at or past the
  // piece's end are zero-filled without being read.
  __device__ void load_block(const Piece& piece, int block, int stage) {
    int physical = -1;
    if (block < p_.max_blocks) {
      physical = p_.block_table[piece.batch * p_.block_table_batch_stride + block * p_.block_table_column_stride];
    }
    const bool block_ok = physical >= 0 && physical < p_.num_blocks;
    const int valid_tokens = block_ok ? min(kTileRows, piece.token_end - block * kTileRows) : 0;
    if constexpr (kFp8) {
      const auto* cache = static_cast<const uint8_t*>(p_.k_cache);
      const uint8_t* base = cache + (block_ok ? physical * p_.k_block_stride + head_k_ * p_.k_head_stride : 0);
      const uint32_t destination = smem_address(raw_ + stage * kRawTileBytes);
      for (int task = static_cast<int>(threadIdx.x); task < kTileRows * kFp8TokenChunks; task += kThreads) {
        const int token = task / kFp8TokenChunks, chunk = task % kFp8TokenChunks;
        const bool valid = token < valid_tokens;
        const uint8_t* source = valid ? base + token * p_.k_token_stride + chunk * 16 : cache;
        cp_async_16(destination + token * kFp8TokenBytes + chunk * 16, source, valid);
      }
    } else {
      const auto* cache = static_cast<const uint16_t*>(p_.k_cache);
      const uint16_t* base = cache + (block_ok ? physical * p_.k_block_stride + head_k_ * p_.k_head_stride : 0);
      const uint32_t destination = skv_ + stage * kTileBytes;
      for (int task = static_cast<int>(threadIdx.x); task < kTileRows * kChunks; task += kThreads) {
        const int token = task / kChunks, chunk = task % kChunks;
        const bool valid = token < valid_tokens;
        const uint16_t* source = valid ? base + token * p_.k_token_stride + chunk * 8 : cache;
        cp_async_16(destination + tile_offset(token, chunk), source, valid);
      }
    }
  }

  // Raw FP8 tokens -> the 16-bit KV tile: channel c < 512 = e4m3(byte c) * scale[c / 128], the 64 RoPE
  // channels copied. Zero-filled tokens (past the end) have scale 0 and stay 0.
  __device__ void dequantize(const char* raw) {
    for (int task = static_cast<int>(threadIdx.x); task < kTileRows * kChunks; task += kThreads) {
      const int token = task / kChunks, chunk = task % kChunks;
      const char* source = raw + token * kFp8TokenBytes;
      uint4 packed;
      if (chunk < kDimV / 8) {
        const uint2 bytes = *reinterpret_cast<const uint2*>(source + chunk * 8);
        const float scale = *reinterpret_cast<const float*>(source + kDimV + (chunk / 16) * 4);
        uint32_t words[4];
        dequantize_e4m3<kFp16>({bytes.x, bytes.y}, scale, words);
        packed = make_uint4(words[0], words[1], words[2], words[3]);
      } else {
        // RoPE channels are stored as bf16: convert when the tile is fp16.
        packed = *reinterpret_cast<const uint4*>(source + kDimV + 16 + (chunk - kDimV / 8) * 16);
        if constexpr (kFp16) bf16x8_to_f16x8(packed);
      }
      *reinterpret_cast<uint4*>(kv_tile_ + tile_offset(token, chunk)) = packed;
    }
  }

  // One 64-token block: S = Q K^T, online softmax, O += P V. `tile` is the KV tile's shared address,
  // `block_start` the sequence position of its first token.
  __device__ void compute_block(uint32_t tile, int block_start, const Piece& piece, float (&acc)[32][4],
                                RowState& state) {
    const int g = lane_ >> 2, q4 = lane_ & 3;
    float s[kNTiles][4];
#pragma unroll
    for (int n = 0; n < kNTiles; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
    const int warp_token0 = slice_ * kSliceTokens + half_ * kWarpTokens;  // first token of this warp's S
    if (active_) {
      // NOTE: software-pipelined: the fragments of k-step k + 1 are loaded before the MMAs of k-step k,
      // so each MMA finds its operands in registers (one warp per scheduler cannot hide the ldmatrix
      // latency otherwise).
      const int a_row = row_group_ * 16 + (lane_ & 7) + ((lane_ >> 3) & 1) * 8;
      // x4 loads take two n-tiles (lanes 16..31 address the second); x2 loads one (lanes 0..15 count).
      const int b_token = warp_token0 + (lane_ & 7) + (kNTiles >= 2 ? (lane_ >> 4) * 8 : 0);
      // NOTE: chunk 2k + c of row r sits at ((2k + c) ^ (r & 7)) = 8 (k / 4) + ((2 (k % 4) + c) ^ (r & 7)):
      // four per-lane offsets, plus a compile-time 128 (k / 4), keep the address arithmetic out of the
      // registers the accumulators need.
      uint32_t a_offset[4], b_offset[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        a_offset[i] = sq_ + a_row * kRowBytes + (((2 * i + (lane_ >> 4)) ^ (a_row & 7)) << 4);
        b_offset[i] = tile + b_token * kRowBytes + (((2 * i + ((lane_ >> 3) & 1)) ^ (b_token & 7)) << 4);
      }
      const auto a_address = [&](int k) { return a_offset[k % 4] + 128 * (k / 4); };
      const auto b_address = [&](int k, int pair) { return b_offset[k % 4] + 128 * (k / 4) + pair * 16 * kRowBytes; };
      constexpr int kLoads = kNTiles >= 2 ? kNTiles / 2 : 1;  // B loads per k-step
      uint32_t a[2][4], b[2][kLoads][4];
      const auto load_b = [&](uint32_t(&fragment)[4], int k, int pair) {
        if constexpr (kNTiles >= 2) {
          ldmatrix_x4(fragment, b_address(k, pair));
        } else {
          ldmatrix_x2(fragment, b_address(k, pair));
        }
      };
      ldmatrix_x4(a[0], a_address(0));
#pragma unroll
      for (int pair = 0; pair < kLoads; ++pair) load_b(b[0][pair], 0, pair);
#pragma unroll
      for (int k = 0; k < kDimQk / 16; ++k) {
        const int current = k & 1, next = current ^ 1;
        if (k + 1 < kDimQk / 16) {
          ldmatrix_x4(a[next], a_address(k + 1));
#pragma unroll
          for (int pair = 0; pair < kLoads; ++pair) load_b(b[next][pair], k + 1, pair);
        }
#pragma unroll
        for (int n = 0; n < kNTiles; ++n) {
          mma_16816<kFp16>(s[n], a[current], b[current][n / 2][(n % 2) * 2], b[current][n / 2][(n % 2) * 2 + 1]);
        }
      }
    }

    // Scale and mask: rows g and g + 8 of the warp; tokens warp_token0 + 8 n + 2 q4 + {0, 1}.
    float local_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = m_block_ * kTileRows + row_group_ * 16 + g + 8 * i;
      // Causal: query token t of s_q sees positions < seqlen - s_q + t + 1.
      int limit = piece.token_end;
      if (p_.causal) limit = min(limit, piece.seqlen - p_.s_q + r / p_.group + 1);
#pragma unroll
      for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int position = block_start + warp_token0 + n * 8 + 2 * q4 + e;
          float& value = s[n][2 * i + e];
          value = position < limit ? value * p_.scale_log2 : -INFINITY;
          local_max[i] = fmaxf(local_max[i], value);
        }
      }
      local_max[i] = fmaxf(local_max[i], __shfl_xor_sync(0xffffffffu, local_max[i], 1));
      local_max[i] = fmaxf(local_max[i], __shfl_xor_sync(0xffffffffu, local_max[i], 2));
    }
    // Pairs exchange through their own 16 entries per half (indexed by pair, not row group).
    if (active_ && q4 == 0) {
      reduction_[half_ * kTileRows + pair_ * 16 + g] = local_max[0];
      reduction_[half_ * kTileRows + pair_ * 16 + g + 8] = local_max[1];
    }
    __syncthreads();

    if (active_) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const float other = reduction_[(1 - half_) * kTileRows + pair_ * 16 + g + 8 * i];
        const float new_max = next_running_max(state.max_log2[i], fmaxf(local_max[i], other), p_.lazy_rescale);
        // A row with nothing visible yet keeps max -inf; subtracting 0 instead keeps exp2 from NaN.
        const float base = new_max == -INFINITY ? 0.0f : new_max;
        const float rescale = new_max == state.max_log2[i] ? 1.0f : exp2f(state.max_log2[i] - base);
        state.max_log2[i] = new_max;
        float block_sum = 0.0f;
#pragma unroll
        for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& value = s[n][2 * i + e];
            value = exp2f(value - base);
            block_sum += value;
          }
        }
        state.sum[i] = state.sum[i] * rescale + block_sum;
        // NOTE: skipped when no row of the warp moved its max (most blocks, with lazy rescaling).
        if (__any_sync(0xffffffffu, rescale != 1.0f)) {
#pragma unroll
          for (int n = 0; n < 32; ++n) {
            acc[n][2 * i] *= rescale;
            acc[n][2 * i + 1] *= rescale;
          }
        }
      }
      // P (row, token) of the pair lives in the RoPE chunks 64..71 of the KV tile's row 16 pair + row.
      const int row = pair_ * 16 + g;
#pragma unroll
      for (int n = 0; n < kNTiles; ++n) {
        const int token = warp_token0 + n * 8 + 2 * q4;
        const uint32_t column = (token % 8) * 2;
        const uint32_t word0 = pack2<kFp16>(s[n][0], s[n][1]);
        const uint32_t word1 = pack2<kFp16>(s[n][2], s[n][3]);
        asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(tile + tile_offset(row, 64 + token / 8) + column), "r"(word0)
                     : "memory");
        asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(tile + tile_offset(row + 8, 64 + token / 8) + column), "r"(word1)
                     : "memory");
      }
    }
    __syncthreads();

    if (active_) {
      const int p_row = pair_ * 16 + (lane_ & 7) + ((lane_ >> 3) & 1) * 8;
      const int v_token = (lane_ & 7) + ((lane_ >> 3) & 1) * 8;
      // P of the pair's slice as A fragments, one per k-step of 16 tokens (both halves' tokens).
      uint32_t p[kKSteps][4];
#pragma unroll
      for (int k = 0; k < kKSteps; ++k) {
        ldmatrix_x4(p[k], tile + tile_offset(p_row, 64 + (slice_ * kSliceTokens) / 8 + 2 * k + (lane_ >> 4)));
      }
      // Chunk half * 32 + 2 pair + c of row slice tokens + 16 k + v_token: four per-lane offsets.
      uint32_t v_offset[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        v_offset[i] = tile + (slice_ * kSliceTokens + v_token) * kRowBytes + half_ * 512 +
                      (((2 * i + (lane_ >> 4)) ^ (v_token & 7)) << 4);
      }
      const auto v_address = [&](int k, int pair) {
        return v_offset[pair % 4] + 128 * (pair / 4) + 16 * k * kRowBytes;
      };
      // NOTE: V fragments flow through a ring of 3 register sets, two (k-step, pair) steps ahead.
      constexpr int kSteps = kKSteps * 16;
      uint32_t b[3][4];
      ldmatrix_x4_trans(b[0], v_address(0, 0));
      ldmatrix_x4_trans(b[1], v_address(0, 1));
#pragma unroll
      for (int step = 0; step < kSteps; ++step) {
        const int k = step / 16, pair = step % 16;
        if (step + 2 < kSteps) ldmatrix_x4_trans(b[(step + 2) % 3], v_address((step + 2) / 16, (step + 2) % 16));
        mma_16816<kFp16>(acc[2 * pair], p[k], b[step % 3][0], b[step % 3][1]);
        mma_16816<kFp16>(acc[2 * pair + 1], p[k], b[step % 3][2], b[step % 3][3]);
      }
    }
  }

  __device__ void merge_slices(float (&acc)[32][4], RowState& state) {
    static_assert(kMergeScratchBytes <= 2 * kTileBytes, "the merge scratch fits in the KV stages");
    merge_slice_states<kSplit>(acc, state, reinterpret_cast<float*>(kv_tile_), active_, slice_, row_group_, half_,
                               lane_);
  }

  // Normalizes and writes the piece's rows: to out / softmax_lse when it is the sequence's only piece,
  // else to its split slot of the workspace.
  __device__ void finish_piece(const Piece& piece, float (&acc)[32][4], RowState& state) {
    const int g = lane_ >> 2, q4 = lane_ & 3;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      state.sum[i] += __shfl_xor_sync(0xffffffffu, state.sum[i], 1);
      state.sum[i] += __shfl_xor_sync(0xffffffffu, state.sum[i], 2);
    }
    __syncthreads();                             // the last block's readers of the reduction buffer are done
    const bool writer = active_ && slice_ == 0;  // slice 0 holds the merged state
    if (writer && q4 == 0) {
      reduction_[half_ * kTileRows + row_group_ * 16 + g] = state.sum[0];
      reduction_[half_ * kTileRows + row_group_ * 16 + g + 8] = state.sum[1];
    }
    __syncthreads();
    if (!writer) return;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int tile_row = row_group_ * 16 + g + 8 * i;
      const int r = m_block_ * kTileRows + tile_row;
      if (r >= p_.rows) continue;
      const float sum = state.sum[i] + reduction_[(1 - half_) * kTileRows + tile_row];
      const float inverse = sum == 0.0f ? 0.0f : 1.0f / sum;  // an empty row's output is 0
      const int token = r / p_.group, head = head_k_ * p_.group + r % p_.group;
      if (piece.only_piece) {
        uint16_t* out = static_cast<uint16_t*>(p_.out) + piece.batch * p_.out_batch_stride +
                        token * p_.out_token_stride + head * p_.out_head_stride + half_ * 256 + 2 * q4;
#pragma unroll
        for (int n = 0; n < 32; ++n) {
          *reinterpret_cast<uint32_t*>(out + n * 8) =
              pack2<kFp16>(acc[n][2 * i] * inverse, acc[n][2 * i + 1] * inverse);
        }
        if (half_ == 0 && q4 == 0) {
          p_.softmax_lse[piece.batch * p_.lse_batch_stride + head * p_.lse_head_stride + token * p_.lse_token_stride] =
              sum == 0.0f ? INFINITY : (log2f(sum) + state.max_log2[i]) / kLog2e;
        }
      } else {
        const int64_t slot_row = (static_cast<int64_t>(piece.slot) * p_.h_kv + head_k_) * p_.rows + r;
        float* out = p_.out_accum + slot_row * kDimV + half_ * 256 + 2 * q4;
#pragma unroll
        for (int n = 0; n < 32; ++n) {
          *reinterpret_cast<float2*>(out + n * 8) = make_float2(acc[n][2 * i] * inverse, acc[n][2 * i + 1] * inverse);
        }
        if (half_ == 0 && q4 == 0) p_.lse_accum[slot_row] = sum == 0.0f ? -INFINITY : log2f(sum) + state.max_log2[i];
      }
    }
  }

  const DecodeParams& p_;
  uint32_t sq_ = 0, skv_ = 0;
  float* reduction_ = nullptr;
  char* raw_ = nullptr;
  char* kv_tile_ = nullptr;
  int warp_ = 0, lane_ = 0;
  int pair_ = 0;       // warp % 4: the pair of warps (halves) that share a slice's S and P
  int row_group_ = 0;  // which 16 query rows of the tile the pair serves
  int slice_ = 0;      // which kSliceTokens tokens of each block the pair takes
  int half_ = 0;       // warp / 4: its half of the pair's tokens in S, of the 512 channels in O
  int head_k_ = 0, m_block_ = 0;
  bool active_ = false;
};

// kWarpRows query rows of KV head head_k, first_row, first_row + 8, ... (zeros from p.rows on): lane l's
// latent channels 16 l .. 16 l + 15 in q's dtype, and for lanes < 8 RoPE channels 8 l .. 8 l + 7. Every load
// is issued before any is used.
template <int kWarpRows>
__device__ __forceinline__ void load_query_rows(const DecodeParams& p, int batch, int first_row, int head_k, int lane,
                                                uint4 (&latents)[kWarpRows][2], uint4 (&ropes)[kWarpRows]) {
#pragma unroll
  for (int i = 0; i < kWarpRows; ++i) {
    const int r = first_row + 8 * i;
    latents[i][0] = latents[i][1] = ropes[i] = make_uint4(0, 0, 0, 0);
    if (r >= p.rows) continue;
    const int token = r / p.group, head = head_k * p.group + r % p.group;
    const uint16_t* source = static_cast<const uint16_t*>(p.q) + batch * p.q_batch_stride + token * p.q_token_stride +
                             head * p.q_head_stride;
    latents[i][0] = *reinterpret_cast<const uint4*>(source + 16 * lane);
    latents[i][1] = *reinterpret_cast<const uint4*>(source + 16 * lane + 8);
    if (lane < 8) ropes[i] = *reinterpret_cast<const uint4*>(source + kDimV + 8 * lane);
  }
}

// A lane's 16 latent channels (load_query_rows) as floats, and 2^k with k such that the row's largest |q|
// (over the warp's 32 lanes) times 2^k lies in [2^13, 2^14): the exact f16 scaling of the FP8 kernels'
// Q; `factor` = 2^-k.
template <bool kFp16>
__device__ __forceinline__ float query_row_scale(const uint4 (&latent)[2], float (&values)[16], float& factor) {
  const uint32_t words[8] = {latent[0].x, latent[0].y, latent[0].z, latent[0].w,
                             latent[1].x, latent[1].y, latent[1].z, latent[1].w};
  float largest = 0.0f;
#pragma unroll
  for (int w = 0; w < 8; ++w) {
    if constexpr (kFp16) {
      const float2 pair = __half22float2(*reinterpret_cast<const __half2*>(&words[w]));
      values[2 * w] = pair.x;
      values[2 * w + 1] = pair.y;
    } else {
      values[2 * w] = __uint_as_float(words[w] << 16);
      values[2 * w + 1] = __uint_as_float(words[w] & 0xffff0000u);
    }
    largest = fmaxf(largest, fmaxf(fabsf(values[2 * w]), fabsf(values[2 * w + 1])));
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2)
    largest = fmaxf(largest, __shfl_xor_sync(0xffffffffu, largest, offset));
  int exponent = 0;
  if (largest > 0.0f && largest <= 3.0e38f) {
    int e;
    frexpf(largest, &e);  // largest = m 2^e, m in [0.5, 1)
    exponent = 14 - e;
  }
  factor = ldexpf(1.0f, -exponent);
  return ldexpf(1.0f, exponent);
}

// Byte offset of token t in a raw FP8 stage: tokens 656 bytes apart, plus kGroupPad bytes after every 8.
template <int kGroupPad>
__device__ __forceinline__ int fp8_token_offset(int token) {
  return token * kFp8TokenBytes + (token >> 3) * kGroupPad;
}

// KV block `block` (64 raw tokens) into a raw stage. The tokens before the piece's end go by bulk
// copies (warp 0: a packed full block in one copy without the pad, else one per 8 tokens where the
// cache packs them, else one per token), completing on the stage's mbarrier; the rest of the stage is
// zeroed by all threads with plain stores (scale 0, so those tokens stay 0; nothing past the length is
// read), which the loop barrier before the stage's use makes visible.
// `destination`: the raw stage (shared address), `bar`: its mbarrier. Block-table entries come in
// `physical` (-1 for none; see Fp8Decoder::physical_block). Every one of `threads` threads calls it
// (`thread`: its index among them; the first warp of them copies). Returns whether it zeroed any of the stage
// (the caller must order those stores before other threads read it; the mbarrier covers the copies only).
template <int kGroupPad>
__device__ bool load_fp8_block(const DecodeParams& p, int head_k, const Piece& piece, int block, uint32_t destination,
                               uint32_t bar, int physical, int thread = static_cast<int>(threadIdx.x),
                               int threads = kThreads) {
  const int warp = thread / 32, lane = thread % 32;
  const bool block_ok = physical >= 0 && physical < p.num_blocks;
  const int valid_tokens = block_ok ? min(kTileRows, piece.token_end - block * kTileRows) : 0;
  if (warp == 0) {
    if (lane == 0) {
      asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar),
                   "r"(valid_tokens * kFp8TokenBytes)
                   : "memory");
    }
    __syncwarp();
    if (valid_tokens > 0) {
      const auto* base = static_cast<const uint8_t*>(p.k_cache) + physical * p.k_block_stride +
                         static_cast<int64_t>(head_k) * p.k_head_stride;
      if (kGroupPad == 0 && valid_tokens == kTileRows && p.k_token_stride == kFp8TokenBytes) {
        if (lane == 0) {  // the whole block
          bulk_copy_to_shared_hint(destination, base, kTileRows * kFp8TokenBytes, bar, kv_l2_policy(p.kv_evict_first));
        }
      } else if (valid_tokens == kTileRows && p.k_token_stride == kFp8TokenBytes) {
        if (lane < kTileRows / 8) {
          bulk_copy_to_shared(destination + fp8_token_offset<kGroupPad>(8 * lane), base + 8 * lane * kFp8TokenBytes,
                              8 * kFp8TokenBytes, bar);
        }
      } else {
        for (int token = lane; token < valid_tokens; token += 32) {
          bulk_copy_to_shared(destination + fp8_token_offset<kGroupPad>(token), base + token * p.k_token_stride,
                              kFp8TokenBytes, bar);
        }
      }
    }
  }
  if (valid_tokens < kTileRows) {  // uniform: every thread computed the same
    const int zero_chunks = (kTileRows - valid_tokens) * kFp8TokenChunks;
    for (int i = thread; i < zero_chunks; i += threads) {
      const int token = valid_tokens + i / kFp8TokenChunks, chunk = i % kFp8TokenChunks;
      asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(destination + fp8_token_offset<kGroupPad>(token) +
                                                                      16 * chunk),
                   "r"(0)
                   : "memory");
    }
    fence_proxy_async();  // these generic stores come before later bulk copies into the stage
  }
  return valid_tokens < kTileRows;
}

// The FP8 cache with few query rows (kSplit 4: <= 16 rows, kSplit 2: <= 32; the memory-bound shapes):
// the MMAs read their K and V operands straight from the raw 656-byte tokens, converted in registers,
// so no 16-bit KV tile exists and four raw stages (4 x 42,240 B) stay in flight. The warp roles are
// Decoder's (pairs = (row group, token slice), halves split the tokens in S and the channels in O),
// except in the channel-split mode (kChannels, below).
//   S = Q K^T   f16 MMAs on the latent channels: e4m3 -> f16 is exact (cvt.rn.f16x2.e4m3x2), Q is
//               converted once per piece to f16 after scaling each row by a power of two (exact;
//               keeps large or small q in f16 range), per 128-channel group g the partial
//               dot products are multiplied by the token's scale_g; the RoPE channels use MMAs of
//               q's dtype on the bf16 RoPE of the raw token. The latent channels of Q and K are
//               permuted alike (a dot product does not care): thread quad q4 reads 16 consecutive
//               bytes of a token for 4 k-steps, the Q tile is stored so that ldmatrix returns the
//               matching channels.
//   O += P V    f16 MMAs: V's e4m3 bytes of two tokens are paired (prmt) and converted exactly to f16;
//               the per-token, per-group scale goes into P, written as 4 planes (one per 128-channel
//               group g) of P * scale_g / group_max_g in f16, where group_max_g is the largest scale
//               of group g seen so far in the piece (the same in every warp, from a block-wide
//               maximum), so the f16 operand stays in [0, 1]; the accumulators are in units of
//               group_max_g and are rescaled with the softmax when it grows. The tokens of a k-step
//               are permuted (thread quad q4 reads tokens 4 q4 .. 4 q4 + 3 of a 16-token step) and P
//               is stored to match.
// Shared memory: raw stages (4) | Q tile (16-bit, kQRows x 1152 B) | P planes | buffers | mbarriers. In
// a raw stage token t sits at 656 t + 32 (t / 8), whole (token_offset): warp 0 fills a stage by bulk
// copies (one per 8 tokens where the cache packs them, else one per token) that complete on the
// stage's mbarrier; the 32-byte step every 8 tokens makes both the S loads (2 tokens x 4 chunks per 8
// lanes) and the V loads (4 tokens x 2 chunks) hit 8 different 16-byte bank groups, as an XOR swizzle
// of the chunks did when 256 threads filled the stages with 16-byte cp.async copies. The channel-split
// mode has no pad (token t at 656 t): one bulk copy moves a packed block, and its V loads (tokens
// 2 q4 + {0, 1, 8, 9} of a k-step) are conflict-free without it.
//
// kBlocks = 2 ('mma_sync_fp8_pair', FF_MLA_FP8=pair): a round takes two consecutive 64-token blocks,
// which sit in two adjacent raw stages and so form one 128-token tile (token t of the round at
// token_offset(t): the formula continues across the two stages). Everything above then applies to the 128 tokens: one softmax, one
// scale maximum and two barriers per round instead of per block, each warp's S on twice the tokens
// (two independent n-tiles per Q fragment loaded) and its P V over two k-steps; the four raw stages
// hold two rounds (the next one loads while this one computes). A block of a round past the piece's
// last block loads zeros (nothing is read) and is masked. kBlocks = 1 is 'mma_sync_fp8_direct'. Only
// with 16 rows (kSplit 4): with 32 the Q tile and the P planes would not fit beside four raw stages.
//
// kSplitS (with kChannels; 'mma_sync_fp8_channels_split_s', FF_MLA_FP8=channels_split_s): S is computed
// by pairs of warps (w, w + 4) for 32 tokens each (32 (w % 4) ..), each warp of the pair over half of
// the channels (w / 4 = 0: latent groups 0, 1 and RoPE k-steps 0, 1; 1: groups 2, 3 and RoPE k-steps
// 2, 3), so each warp reads half of Q from shared memory per round; the partial scores are exchanged
// through shared memory (a 64-thread named barrier per pair) and warp w keeps tokens
// 32 (w % 4) + 16 (w / 4) .. + 15, from where the channel-split round continues unchanged.
template <bool kFp16, int kSplit, int kBlocks = 1, bool kChannels = false, bool kSplitS = false>
class Fp8Decoder {
  static_assert(kSplit == 2 || kSplit == 4, "the direct FP8 path serves 16 or 32 query rows");
  static_assert(!kSplitS || kChannels, "the split S is a variant of the channel-split mode");
  static_assert(kBlocks == 1 || kBlocks == 2, "one or two 64-token blocks per round");
  static_assert(!kChannels || kBlocks == 2, "the channel-split mode takes rounds of two blocks");
  static constexpr int kRowGroups = 4 / kSplit;
  static constexpr int kQRows = 16 * kRowGroups;                 // query rows held (16 or 32)
  static constexpr int kRoundTokens = kTileRows * kBlocks;       // tokens per round (64, 128)
  static constexpr int kSliceTokens = kRoundTokens / kSplit;     // tokens of a round per warp pair
  static constexpr int kWarpTokens = kSliceTokens / 2;           // tokens per warp in S
  static constexpr int kNTiles = kWarpTokens / 8;                // m16n8 tiles of S per warp
  static constexpr int kKSteps = kSliceTokens / 16;              // k-steps of O += P V per round
  static constexpr int kChains = kNTiles >= 2 ? 1 : 2 / kNTiles;  // independent MMA chains per n-tile of S
  // (The channel-split mode uses none of the five above; this keeps them referenced there too.)
  static_assert(kSliceTokens >= 16 && kWarpTokens >= 8 && kNTiles >= 1 && kKSteps >= 1 && kChains >= 1,
                "a warp's share of a round");
  static constexpr int kStages = 4;
  static constexpr int kRoundStages = kStages / kBlocks;  // rounds in the raw stages (4, 2)
  static constexpr int kQBytes = kQRows * kRowBytes;
  static constexpr int kPlaneBytes = kQRows * kRoundTokens * 2;  // P * scale_g of one group, f16
  // kChannels (FF_MLA_FP8=channels): every warp holds all kQRows rows; S = Q K^T for 16 tokens of the
  // round per warp, one softmax over the 8 warps' row maxima, one P plane (unscaled), the tokens' scale
  // weights beside it, and O[:, 64 w .. 64 w + 63] += P V for warp w over all 128 tokens of the round.
  static constexpr int kPlanes = kChannels ? 1 : 4;
  static constexpr int kWeightBytes = 4 * kRoundTokens * 2;     // scale_g / group_max_g per token, f16
  static constexpr int kExchangeBytes = kQRows * 8 * 4;         // a float per (row, warp)
  // kSplitS: the partial scores a warp hands its partner, 16 tokens x kQRows rows in fp32, per warp.
  static constexpr int kScoreExchangeBytes = kSplitS ? 8 * kQRows * 16 * 4 : 0;
  // A raw stage: token t of a block at t * 656 + 32 (t / 8), each token contiguous (one bulk copy per
  // token, or per 8 tokens where the cache packs them), and the 32-byte step every 8 tokens keeps the
  // operand loads free of bank conflicts (see token_offset). The channel-split mode: t * 656, one bulk
  // copy per packed block (its loads need no pad; see compute_round_channels).
  static constexpr int kGroupPad = kChannels ? 0 : 32;
  static constexpr int kRawStageBytes = kTileRows * kFp8TokenBytes + kTileRows / 8 * kGroupPad;  // 42,240 / 41,984
  static constexpr int kRawOffset = 0;
  static constexpr int kQOffset = kStages * kRawStageBytes;
  static constexpr int kPOffset = kQOffset + kQBytes;
  static constexpr int kReductionOffset = kPOffset + kPlanes * kPlaneBytes;  // kChannels: weights | exchange
  static constexpr int kScoreExchangeOffset = kReductionOffset + (kChannels ? kWeightBytes + kExchangeBytes : 0);
  static constexpr int kScaleMaxOffset =
      kChannels ? kScoreExchangeOffset + kScoreExchangeBytes : kReductionOffset + kReductionBytes;  // 2 (parity) x 4 groups
  static constexpr int kFactorOffset = kScaleMaxOffset + 2 * 4 * 4;
  static constexpr int kBarrierOffset = kFactorOffset + kQRows * 4;  // one mbarrier per raw stage

 public:
  static constexpr int kSmemBytes = kBarrierOffset + kStages * 8;
  static_assert(kSmemBytes <= 232448, "one CTA must fit the 227 KB of an sm_90 SM");
  static_assert(kMergeScratchBytes <= kStages * kRawStageBytes, "the merge scratch fits in the raw stages");
  static_assert(kRawStageBytes % 128 == 0 && kQOffset % 128 == 0 && kPOffset % 128 == 0 && kBarrierOffset % 8 == 0,
                "aligned regions");

  __device__ Fp8Decoder(const DecodeParams& p, char* smem) : p_(p), smem_(smem) {
    sq_ = smem_address(smem + kQOffset);
    sp_ = smem_address(smem + kPOffset);
    reduction_ = reinterpret_cast<float*>(smem + kReductionOffset);
    row_factor_ = reinterpret_cast<float*>(smem + kFactorOffset);
    block_scale_max_ = reinterpret_cast<int*>(smem + kScaleMaxOffset);
    warp_ = static_cast<int>(threadIdx.x) / 32;
    lane_ = static_cast<int>(threadIdx.x) % 32;
    pair_ = warp_ & 3;
    row_group_ = pair_ % kRowGroups;
    slice_ = pair_ / kRowGroups;
    half_ = warp_ >> 2;
    head_k_ = static_cast<int>(blockIdx.y);
    m_block_ = static_cast<int>(blockIdx.x);
    const int tile_rows = min(kTileRows, p.rows - m_block_ * kTileRows);
    active_ = row_group_ * 16 < tile_rows;
    barriers_ = smem_address(smem + kBarrierOffset);
    if (threadIdx.x == 0) {
      for (int stage = 0; stage < kStages; ++stage) mbarrier_init(barriers_ + 8 * stage, 1);
      fence_mbarrier_init();
    }
    __syncthreads();  // the mbarriers are initialized before anyone waits on them or copies complete there
  }

  __device__ void run_piece(const Piece& piece) {
    const int num_kv_blocks =
        piece.token_end > piece.token_begin ? (piece.token_end - piece.token_begin + kTileRows - 1) / kTileRows : 0;
    const int first_block = piece.token_begin / kTileRows;
    float acc[32][4];
#pragma unroll
    for (int n = 0; n < 32; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    RowState states[kChannels ? kRowGroups : 1];  // kChannels: one per row group, else this warp's
#pragma unroll
    for (auto& row_state : states) {
      row_state.max_log2[0] = row_state.max_log2[1] = -INFINITY;
      row_state.sum[0] = row_state.sum[1] = 0.0f;
    }
#pragma unroll
    for (int group = 0; group < 4; ++group) group_max_[group] = 0.0f;
    if (threadIdx.x < 8) block_scale_max_[threadIdx.x] = 0;  // visible after the first barrier below

    // Rounds of kBlocks blocks; round i sits in raw stages kBlocks (i % kRoundStages) ...
    const int num_rounds = (num_kv_blocks + kBlocks - 1) / kBlocks;
    const int end_block = first_block + num_kv_blocks;
    // The block-table entry of block b of round i, -1 past the piece (never read there).
    const auto round_physical = [&](int round, int b) {
      const int block = first_block + round * kBlocks + b;
      return block < end_block ? physical_block(piece, block) : -1;
    };
    // Prologue: kRoundStages - 1 groups of one round each (possibly empty), then Q (plain loads, converted).
#pragma unroll
    for (int stage = 0; stage < kRoundStages - 1; ++stage) {
      if (stage < num_rounds) {
#pragma unroll
        for (int b = 0; b < kBlocks; ++b) {
          load_block(piece, first_block + stage * kBlocks + b, stage * kBlocks + b, round_physical(stage, b));
        }
      }
    }
    // NOTE: the block-table entries of the next round to load are read one iteration ahead, so the
    // copy issue never waits for a global load.
    int next_physical[kBlocks];
#pragma unroll
    for (int b = 0; b < kBlocks; ++b) {
      next_physical[b] = kRoundStages - 1 < num_rounds ? round_physical(kRoundStages - 1, b) : -1;
    }
    load_q(piece.batch);

    for (int j = 0; j < num_rounds; ++j) {
#pragma unroll
      for (int b = 0; b < kBlocks; ++b) wait_stage((j % kRoundStages) * kBlocks + b);
      __syncthreads();  // Q visible to all; every warp is done with round j - 1's stages
      if (j + kRoundStages - 1 < num_rounds) {
        const int round = j + kRoundStages - 1;
#pragma unroll
        for (int b = 0; b < kBlocks; ++b) {
          load_block(piece, first_block + round * kBlocks + b, (round % kRoundStages) * kBlocks + b, next_physical[b]);
        }
      }
#pragma unroll
      for (int b = 0; b < kBlocks; ++b) {
        next_physical[b] = j + kRoundStages < num_rounds ? round_physical(j + kRoundStages, b) : -1;
      }
      if (!p_.probe_loads_only) {
        const char* raw = smem_ + kRawOffset + (j % kRoundStages) * kBlocks * kRawStageBytes;
        if constexpr (kChannels) {
          compute_round_channels(raw, (first_block + j * kBlocks) * kTileRows, j & 1, piece, acc, states);
        } else {
          compute_block(raw, (first_block + j * kBlocks) * kTileRows, j & 1, piece, acc, states[0]);
        }
      }
    }
    if constexpr (kChannels) {
      finish_piece_channels(piece, acc, states);
    } else {
      merge_slice_states<kSplit>(acc, states[0], reinterpret_cast<float*>(smem_ + kRawOffset), active_, slice_,
                                 row_group_, half_, lane_);
      finish_piece(piece, acc, states[0]);
    }
    fence_proxy_async();  // the merge's plain stores into the raw stages come before the next piece's bulk copies
    __syncthreads();  // the next piece reuses every buffer
  }

 private:
  // Byte offset of token t in a raw stage, or in a round (its two stages are adjacent and the formula
  // continues across them: 64 * 656 + 8 * 32 is the stage size). Bank-wise the 32-byte step of tokens
  // 8..15 (mod 32) moves their 16-byte chunks by two, as the XOR swizzle it replaces did: the S loads
  // (lanes: tokens t, t + 4 of one 8-token group x 4 chunks) and the V loads (tokens 4 q4 + t of one
  // 16-token k-step x 2 chunks) both touch 8 distinct 16-byte bank groups per 8-lane phase.
  __device__ static __forceinline__ int token_offset(int token) { return fp8_token_offset<kGroupPad>(token); }
  __device__ __forceinline__ uint32_t stage_barrier(int stage) const { return barriers_ + 8 * stage; }
  // Waits until the copies into raw stage `stage` (the next use of it) have landed.
  __device__ __forceinline__ void wait_stage(int stage) {
    mbarrier_wait(stage_barrier(stage), (phase_bits_ >> stage) & 1u);
    phase_bits_ ^= 1u << stage;
  }

  // The Q rows of this CTA (kQRows; rows past p.rows are zero) into the Q tile: the latent channels
  // as f16 times 2^k_row (k_row puts the row's largest |q| in [2^13, 2^14)) at the permuted places
  // the S loads expect, the RoPE channels in q's dtype, likewise permuted; row_factor_ = 2^-k_row.
  // Logical latent channel 64 j + 16 q + 4 s + e (e < 4) is stored at 64 j + 16 s + 8 (e / 2) + 2 q + e % 2;
  // RoPE channel 32 h + 8 q + 4 s + e at 512 + 16 (2 h + s) + 8 (e / 2) + 2 q + e % 2.
  __device__ void load_q(int batch) {
    // NOTE: every global load of the warp's rows is issued before the first is used: the shared stores
    // below (asm volatile) keep the compiler from hoisting a later row's loads above them, and four
    // round trips in a row (32 rows), queued behind the first round's bulk copies, were ~5% of the
    // kernel's stall samples at s_q 2, 4K (H200, ncu).
    constexpr int kWarpRows = kQRows / 8;
    uint4 latents[kWarpRows][2], ropes[kWarpRows];
    load_query_rows(p_, batch, m_block_ * kTileRows + warp_, head_k_, lane_, latents, ropes);
#pragma unroll
    for (int i = 0; i < kWarpRows; ++i) {
      const int row = warp_ + 8 * i;
      const uint4(&latent)[2] = latents[i];
      const uint4& rope = ropes[i];
      float values[16], factor;
      const float up = query_row_scale<kFp16>(latent, values, factor);
      if (lane_ == 0) row_factor_[row] = factor;
      // Lane l holds logical channels 16 l .. 16 l + 15: j = l / 4, q = l % 4.
      const int j = lane_ >> 2, qq = lane_ & 3;
#pragma unroll
      for (int s = 0; s < 4; ++s) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int c = 4 * s + 2 * half;  // values[c], values[c + 1]
          const __half2 h = __floats2half2_rn(values[c] * up, values[c + 1] * up);
          const uint32_t word = *reinterpret_cast<const uint32_t*>(&h);
          const uint32_t address = sq_ + tile_offset(row, 8 * j + 2 * s + half) + 4 * qq;
          asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(address), "r"(word) : "memory");
        }
      }
      if (lane_ < 8) {
        // Lane l holds RoPE channels 8 l .. 8 l + 7: h = l / 4, q = l % 4, s = 0, 1.
        const int h = lane_ >> 2;
        const uint32_t rope_words[4] = {rope.x, rope.y, rope.z, rope.w};
#pragma unroll
        for (int s = 0; s < 2; ++s) {
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const uint32_t address = sq_ + tile_offset(row, 64 + 2 * (2 * h + s) + half) + 4 * qq;
            asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(address), "r"(rope_words[2 * s + half]) : "memory");
          }
        }
      }
    }
  }

  // The block-table entry of block `block` of the piece's sequence, -1 past the table's columns.
  __device__ int physical_block(const Piece& piece, int block) const {
    return block < p_.max_blocks
               ? p_.block_table[piece.batch * p_.block_table_batch_stride + block * p_.block_table_column_stride]
               : -1;
  }

  // KV block `block` into raw stage `stage` (load_fp8_block).
  __device__ void load_block(const Piece& piece, int block, int stage, int physical) {
    load_fp8_block<kGroupPad>(p_, head_k_, piece, block, smem_address(smem_ + kRawOffset + stage * kRawStageBytes),
                              stage_barrier(stage), physical);
  }

  // 2^x (ex2.approx.ftz: 2 ulp, -inf -> 0), as flash attention kernels use it.
  __device__ static __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
  }

  __device__ static __forceinline__ float component(const float4& v, int group) {
    return group == 0 ? v.x : group == 1 ? v.y : group == 2 ? v.z : v.w;
  }

  // One 64-token block from the raw tile at `raw`: S = Q K^T, online softmax, O += P V.
  __device__ void compute_block(const char* raw, int block_start, int parity, const Piece& piece, float (&acc)[32][4],
                                RowState& state) {
    const int g = lane_ >> 2, q4 = lane_ & 3;
    const int warp_token0 = slice_ * kSliceTokens + half_ * kWarpTokens;
    // Scores: element (n, i, e) is row g + 8 i, token warp_token0 + 8 n + q4 + 4 e (column 2 q4 + e of
    // n-tile n, whose column c is token (c >> 1) + 4 (c & 1)).
    float s[kNTiles][4];
    float4 scales[kNTiles][2];  // of the tokens of columns 2 q4 + e
#pragma unroll
    for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        scales[n][e] =
            *reinterpret_cast<const float4*>(raw + token_offset(warp_token0 + 8 * n + q4 + 4 * e) + kDimV);
      }
    }
    if (active_) {
      const int a_row = row_group_ * 16 + (lane_ & 7) + ((lane_ >> 3) & 1) * 8;
      // NOTE: chunk 2k + c of row r sits at 8 (k / 4) + ((2 (k % 4) + c) ^ (r & 7)): four per-lane offsets
      // plus a compile-time 128 (k / 4), instead of the swizzle arithmetic at every k-step.
      uint32_t a_offset[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a_offset[i] = sq_ + a_row * kRowBytes + (((2 * i + (lane_ >> 4)) ^ (a_row & 7)) << 4);
      const auto a_address = [&](int k) { return a_offset[k % 4] + 128 * (k / 4); };
      const int b_token_local = (g >> 1) + 4 * (g & 1);
      const float row_factor[2] = {row_factor_[row_group_ * 16 + g], row_factor_[row_group_ * 16 + g + 8]};
      // NOTE: kChains independent accumulators per n-tile (k-step k feeds chain k % kChains): one chain
      // would serialize the 36 MMAs of a block on the MMA latency.
      float rope[kChains][kNTiles][4], latent[kNTiles][4];
#pragma unroll
      for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          latent[n][e] = 0.0f;
#pragma unroll
          for (int c = 0; c < kChains; ++c) rope[c][n][e] = 0.0f;
        }
      }
      // RoPE: MMAs of q's dtype on chunks 33 + q4 and 37 + q4 of the token (bf16; f16 for f16 q).
      {
        uint4 k_rope[kNTiles][2];
#pragma unroll
        for (int n = 0; n < kNTiles; ++n) {
          const char* token_row = raw + token_offset(warp_token0 + 8 * n + b_token_local);
          k_rope[n][0] = *reinterpret_cast<const uint4*>(token_row + (33 + q4) * 16);
          k_rope[n][1] = *reinterpret_cast<const uint4*>(token_row + (37 + q4) * 16);
        }
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          uint32_t a[4];
          ldmatrix_x4(a, a_address(32 + k));
#pragma unroll
          for (int n = 0; n < kNTiles; ++n) {
            const uint4 words = k_rope[n][k / 2];
            uint32_t b0 = (k % 2) ? words.z : words.x, b1 = (k % 2) ? words.w : words.y;
            if constexpr (kFp16) {
              b0 = bf16x2_to_f16x2(b0);
              b1 = bf16x2_to_f16x2(b1);
            }
            mma_16816<kFp16>(rope[k % kChains][n], a, b0, b1);
          }
        }
      }
      // Latent: per 128-channel group, f16 MMAs into `part`, then latent += scale_g * part.
#pragma unroll
      for (int group = 0; group < 4; ++group) {
        float part[kChains][kNTiles][4];
#pragma unroll
        for (int c = 0; c < kChains; ++c) {
#pragma unroll
          for (int n = 0; n < kNTiles; ++n) part[c][n][0] = part[c][n][1] = part[c][n][2] = part[c][n][3] = 0.0f;
        }
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) {
          const int j = 2 * group + jj;
          uint4 k_bytes[kNTiles];
#pragma unroll
          for (int n = 0; n < kNTiles; ++n) {
            const int token = warp_token0 + 8 * n + b_token_local;
            k_bytes[n] =
                *reinterpret_cast<const uint4*>(raw + token_offset(token) + (4 * j + q4) * 16);
          }
#pragma unroll
          for (int sub = 0; sub < 4; ++sub) {
            uint32_t a[4];
            ldmatrix_x4(a, a_address(4 * j + sub));
#pragma unroll
            for (int n = 0; n < kNTiles; ++n) {
              const uint32_t x = sub == 0   ? k_bytes[n].x
                                 : sub == 1 ? k_bytes[n].y
                                 : sub == 2 ? k_bytes[n].z
                                            : k_bytes[n].w;
              uint32_t b0, b1;
              e4m3x4_to_f16x2x2(x, b0, b1);
              mma_16816<true>(part[(4 * jj + sub) % kChains][n], a, b0, b1);
            }
          }
        }
#pragma unroll
        for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float4 sc = scales[n][e & 1];
            const float scale = group == 0 ? sc.x : group == 1 ? sc.y : group == 2 ? sc.z : sc.w;
            float total = part[0][n][e];
#pragma unroll
            for (int c = 1; c < kChains; ++c) total += part[c][n][e];
            latent[n][e] = fmaf(scale, total, latent[n][e]);
          }
        }
      }
#pragma unroll
      for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float rope_total = rope[0][n][e];
#pragma unroll
          for (int c = 1; c < kChains; ++c) rope_total += rope[c][n][e];
          s[n][e] = fmaf(row_factor[e / 2], latent[n][e], rope_total);
        }
      }
    } else {
#pragma unroll
      for (int n = 0; n < kNTiles; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
    }

    // Scale and mask.
    float local_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = m_block_ * kTileRows + row_group_ * 16 + g + 8 * i;
      int limit = piece.token_end;
      if (p_.causal) limit = min(limit, piece.seqlen - p_.s_q + r / p_.group + 1);
#pragma unroll
      for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int position = block_start + warp_token0 + n * 8 + q4 + 4 * e;
          float& value = s[n][2 * i + e];
          value = position < limit ? value * p_.scale_log2 : -INFINITY;
          local_max[i] = fmaxf(local_max[i], value);
        }
      }
      local_max[i] = fmaxf(local_max[i], __shfl_xor_sync(0xffffffffu, local_max[i], 1));
      local_max[i] = fmaxf(local_max[i], __shfl_xor_sync(0xffffffffu, local_max[i], 2));
    }
    // The largest scale of each group among this warp's tokens (every lane of a quad has the same).
    float scale_max[4];
    {
#pragma unroll
      for (int group = 0; group < 4; ++group) {
        float m = 0.0f;
#pragma unroll
        for (int n = 0; n < kNTiles; ++n)
          m = fmaxf(m, fmaxf(component(scales[n][0], group), component(scales[n][1], group)));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
        scale_max[group] = m;
      }
    }
    if (active_ && q4 == 0) {
      reduction_[half_ * kTileRows + pair_ * 16 + g] = local_max[0];
      reduction_[half_ * kTileRows + pair_ * 16 + g + 8] = local_max[1];
    }
    if (lane_ < 4) {
      const float mine = lane_ == 0   ? scale_max[0]
                         : lane_ == 1 ? scale_max[1]
                         : lane_ == 2 ? scale_max[2]
                                      : scale_max[3];
      atomicMax(block_scale_max_ + 4 * parity + lane_, __float_as_int(mine));
    }
    __syncthreads();

    // Running largest scale per group over every token of the piece so far, the same in every warp:
    // P * scale_g / group_max_g <= 1 is what the f16 MMAs see, and acc is in units of group_max_g.
    float group_ratio[2];  // old / new group_max of this half's two groups (1 if both are 0)
    float inverse_group_max[4];
    {
      const int4 bits = *reinterpret_cast<const int4*>(block_scale_max_ + 4 * parity);
      const float block_max[4] = {__int_as_float(bits.x), __int_as_float(bits.y), __int_as_float(bits.z),
                                  __int_as_float(bits.w)};
#pragma unroll
      for (int group = 0; group < 4; ++group) {
        const float old_max = group_max_[group];
        const float new_max = fmaxf(old_max, block_max[group]);
        group_max_[group] = new_max;
        // NOTE: fast divisions (2 ulp): every warp computes the same values, which is all the units need.
        inverse_group_max[group] = new_max > 0.0f ? __fdividef(1.0f, new_max) : 0.0f;
        if (group / 2 == half_) group_ratio[group % 2] = new_max > 0.0f ? __fdividef(old_max, new_max) : 1.0f;
      }
    }

    if (active_) {
      float rescale[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const float other = reduction_[(1 - half_) * kTileRows + pair_ * 16 + g + 8 * i];
        const float new_max = fmaxf(state.max_log2[i], fmaxf(local_max[i], other));
        const float base = new_max == -INFINITY ? 0.0f : new_max;
        rescale[i] = fast_exp2(state.max_log2[i] - base);
        state.max_log2[i] = new_max;
        float block_sum = 0.0f;
#pragma unroll
        for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& value = s[n][2 * i + e];
            value = fast_exp2(value - base);
            block_sum += value;
          }
        }
        state.sum[i] = state.sum[i] * rescale[i] + block_sum;
      }
      // NOTE: the accumulators are rescaled only when some factor moved (the running maxima settle
      // after a few blocks), which saves 128 multiplications per thread per block.
      const bool moved = rescale[0] != 1.0f || rescale[1] != 1.0f || group_ratio[0] != 1.0f || group_ratio[1] != 1.0f;
      if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
        for (int m = 0; m < 2; ++m) {
#pragma unroll
          for (int n = 0; n < 16; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[16 * m + n][e] *= rescale[e / 2] * group_ratio[m];
          }
        }
      }
      // P * scale_g / group_max_g (f16) into plane g: row row_group * 16 + g + 8 i, the token's place.
      // Token 16 b + 4 u + v (v < 4) of the block sits at 16 b + 2 u + 8 (v / 2) + v % 2 (what the V
      // loads expect).
#pragma unroll
      for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int token = warp_token0 + 8 * n + q4 + 4 * e;
          const int within = token & 15, u = within >> 2, v = within & 3;
          const int place = (token & ~15) + 2 * u + 8 * (v >> 1) + (v & 1);
          const float4 sc = scales[n][e];
          const float weight[4] = {sc.x * inverse_group_max[0], sc.y * inverse_group_max[1],
                                   sc.z * inverse_group_max[2], sc.w * inverse_group_max[3]};
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            const int row = row_group_ * 16 + g + 8 * i;
            const uint32_t offset = row * (kRoundTokens * 2) + (((place >> 3) ^ (row & 7)) << 4) + (place & 7) * 2;
            const float p = s[n][2 * i + e];
#pragma unroll
            for (int group = 0; group < 4; ++group) {
              const __half value = __float2half_rn(p * weight[group]);
              const uint16_t bits = *reinterpret_cast<const uint16_t*>(&value);
              asm volatile("st.shared.u16 [%0], %1;\n" ::"r"(sp_ + group * kPlaneBytes + offset), "h"(bits) : "memory");
            }
          }
        }
      }
    }
    __syncthreads();
    // Every thread has read this block's scale maxima (before the barrier above): clear them for block
    // j + 2; block j + 1 uses the other half, and its atomics come after the next loop barrier.
    if (threadIdx.x < 4) block_scale_max_[4 * parity + threadIdx.x] = 0;

    if (active_) {
      const int p_row = row_group_ * 16 + (lane_ & 7) + ((lane_ >> 3) & 1) * 8;
#pragma unroll
      for (int k = 0; k < kKSteps; ++k) {
        const int step_token0 = slice_ * kSliceTokens + 16 * k;  // first token of this k-step
        const int chunk = (step_token0 >> 3) + (lane_ >> 4);
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          const int group = 2 * half_ + m;
          uint32_t a[4];
          ldmatrix_x4(a, sp_ + group * kPlaneBytes + p_row * (kRoundTokens * 2) + ((chunk ^ (p_row & 7)) << 4));
          uint4 v[4];  // tokens step_token0 + 4 q4 + t, latent chunk 8 group + g
#pragma unroll
          for (int t = 0; t < 4; ++t) {
            const int token = step_token0 + 4 * q4 + t;
            v[t] = *reinterpret_cast<const uint4*>(raw + token_offset(token) + (8 * group + g) * 16);
          }
          const uint32_t w0[4] = {v[0].x, v[0].y, v[0].z, v[0].w}, w1[4] = {v[1].x, v[1].y, v[1].z, v[1].w};
          const uint32_t w2[4] = {v[2].x, v[2].y, v[2].z, v[2].w}, w3[4] = {v[3].x, v[3].y, v[3].z, v[3].w};
          // n-tile 16 m + i: column c = channel 128 group + 16 c + i. b0 = tokens 4 q4 + 0, 1; b1 = + 2, 3.
#pragma unroll
          for (int word = 0; word < 4; ++word) {
            uint32_t b0[4], b1[4];
            e4m3x4_to_f16x2x2(__byte_perm(w0[word], w1[word], 0x5140), b0[0], b0[1]);
            e4m3x4_to_f16x2x2(__byte_perm(w0[word], w1[word], 0x7362), b0[2], b0[3]);
            e4m3x4_to_f16x2x2(__byte_perm(w2[word], w3[word], 0x5140), b1[0], b1[1]);
            e4m3x4_to_f16x2x2(__byte_perm(w2[word], w3[word], 0x7362), b1[2], b1[3]);
#pragma unroll
            for (int byte = 0; byte < 4; ++byte) mma_16816<true>(acc[16 * m + 4 * word + byte], a, b0[byte], b1[byte]);
          }
        }
      }
    }
  }

  // The ldmatrix addresses of this lane's Q rows for the S MMAs: a_offset[k % 4] + 128 (k / 4) is k-step k
  // of row group 0 (row group rg is 16 rows further down, same swizzle: a_row & 7 does not change).
  __device__ __forceinline__ void q_fragment_offsets(uint32_t (&a_offset)[4]) const {
    const int a_row = (lane_ & 7) + ((lane_ >> 3) & 1) * 8;
#pragma unroll
    for (int i = 0; i < 4; ++i) a_offset[i] = sq_ + a_row * kRowBytes + (((2 * i + (lane_ >> 4)) ^ (a_row & 7)) << 4);
  }
  __device__ static __forceinline__ uint32_t q_fragment(const uint32_t (&a_offset)[4], int rg, int k) {
    return a_offset[k % 4] + 128 * (k / 4) + rg * 16 * kRowBytes;
  }

  // part = the latent channels of 128-channel group `group` of S (f16 MMAs on the exact e4m3 values, the
  // token scales not applied), every row group against kN n-tiles of 8 tokens from token0; thread quad
  // q4 reads 16 consecutive bytes of a token for 4 k-steps, lane g the token b_token_local(g) of each
  // n-tile (the B fragment's permuted token order).
  template <int kN>
  __device__ __forceinline__ void latent_group_scores(const char* raw, int token0, int group,
                                                      const uint32_t (&a_offset)[4], float (&part)[kRowGroups][kN][4]) const {
    const int g = lane_ >> 2, q4 = lane_ & 3;
    const int b_token_local = (g >> 1) + 4 * (g & 1);
#pragma unroll
    for (int rg = 0; rg < kRowGroups; ++rg) {
#pragma unroll
      for (int n = 0; n < kN; ++n) part[rg][n][0] = part[rg][n][1] = part[rg][n][2] = part[rg][n][3] = 0.0f;
    }
#pragma unroll
    for (int jj = 0; jj < 2; ++jj) {
      const int j = 2 * group + jj;
      uint4 k_bytes[kN];
#pragma unroll
      for (int n = 0; n < kN; ++n) {
        k_bytes[n] = *reinterpret_cast<const uint4*>(raw + token_offset(token0 + 8 * n + b_token_local) + (4 * j + q4) * 16);
      }
#pragma unroll
      for (int sub = 0; sub < 4; ++sub) {
        uint32_t b[kN][2];
#pragma unroll
        for (int n = 0; n < kN; ++n) {
          const uint32_t x = sub == 0   ? k_bytes[n].x
                             : sub == 1 ? k_bytes[n].y
                             : sub == 2 ? k_bytes[n].z
                                        : k_bytes[n].w;
          e4m3x4_to_f16x2x2(x, b[n][0], b[n][1]);
        }
#pragma unroll
        for (int rg = 0; rg < kRowGroups; ++rg) {
          uint32_t a[4];
          ldmatrix_x4(a, q_fragment(a_offset, rg, 4 * j + sub));
#pragma unroll
          for (int n = 0; n < kN; ++n) mma_16816<true>(part[rg][n], a, b[n][0], b[n][1]);
        }
      }
    }
  }

  // kSplitS: the scores of this warp's 16 tokens (s as in compute_round_channels): the pair's 32 tokens
  // over this warp's half of the channels, then the partner's partial sums of this warp's tokens
  // added. total[rg][nn][e]: row 16 rg + g + 8 (e / 2), token 32 (w % 4) + 8 nn + q4 + 4 (e % 2).
  __device__ void scores_split(const char* raw, float (&s)[kRowGroups][2][4]) {
    const int g = lane_ >> 2, q4 = lane_ & 3;
    const int pair = warp_ & 3, half = warp_ >> 2;
    const int pair_token0 = 32 * pair;
    uint32_t a_offset[4];
    q_fragment_offsets(a_offset);
    const int b_token_local = (g >> 1) + 4 * (g & 1);
    float total[kRowGroups][4][4];
#pragma unroll
    for (int rg = 0; rg < kRowGroups; ++rg) {
#pragma unroll
      for (int nn = 0; nn < 4; ++nn) total[rg][nn][0] = total[rg][nn][1] = total[rg][nn][2] = total[rg][nn][3] = 0.0f;
    }
    // Latent: this half's two 128-channel groups, f16 MMAs into `part`, then total += scale_g * part.
#pragma unroll
    for (int gg = 0; gg < 2; ++gg) {
      const int group = 2 * half + gg;
      float part[kRowGroups][4][4];
      latent_group_scores<4>(raw, pair_token0, group, a_offset, part);
#pragma unroll
      for (int nn = 0; nn < 4; ++nn) {
#pragma unroll
        for (int t = 0; t < 2; ++t) {
          const float scale =
              *reinterpret_cast<const float*>(raw + token_offset(pair_token0 + 8 * nn + q4 + 4 * t) + kDimV + 4 * group);
#pragma unroll
          for (int rg = 0; rg < kRowGroups; ++rg) {
            total[rg][nn][t] = fmaf(scale, part[rg][nn][t], total[rg][nn][t]);
            total[rg][nn][t + 2] = fmaf(scale, part[rg][nn][t + 2], total[rg][nn][t + 2]);
          }
        }
      }
    }
#pragma unroll
    for (int rg = 0; rg < kRowGroups; ++rg) {
      const float row_factor[2] = {row_factor_[16 * rg + g], row_factor_[16 * rg + g + 8]};
#pragma unroll
      for (int nn = 0; nn < 4; ++nn) {
#pragma unroll
        for (int e = 0; e < 4; ++e) total[rg][nn][e] *= row_factor[e / 2];
      }
    }
    {  // RoPE: this half's two k-steps (chunk 33 + 4 half + q4 of the token), MMAs of q's dtype on top
      uint4 k_rope[4];
#pragma unroll
      for (int nn = 0; nn < 4; ++nn) {
        k_rope[nn] = *reinterpret_cast<const uint4*>(raw + token_offset(pair_token0 + 8 * nn + b_token_local) +
                                                     (33 + 4 * half + q4) * 16);
      }
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
        uint32_t b[4][2];
#pragma unroll
        for (int nn = 0; nn < 4; ++nn) {
          b[nn][0] = kk ? k_rope[nn].z : k_rope[nn].x;
          b[nn][1] = kk ? k_rope[nn].w : k_rope[nn].y;
          if constexpr (kFp16) {
            b[nn][0] = bf16x2_to_f16x2(b[nn][0]);
            b[nn][1] = bf16x2_to_f16x2(b[nn][1]);
          }
        }
#pragma unroll
        for (int rg = 0; rg < kRowGroups; ++rg) {
          uint32_t a[4];
          ldmatrix_x4(a, q_fragment(a_offset, rg, 32 + 2 * half + kk));
#pragma unroll
          for (int nn = 0; nn < 4; ++nn) mma_16816<kFp16>(total[rg][nn], a, b[nn][0], b[nn][1]);
        }
      }
    }
    // The partner's tokens (n-tiles 2 (1 - half) + n) go out, this warp's (2 half + n) stay; slot
    // ((pair, receiving half, rg, n), lane) of float4s: conflict-free, one store and one load each.
    auto* exchange = reinterpret_cast<float4*>(smem_ + kScoreExchangeOffset);
    const auto slot = [&](int receiver, int rg, int n) { return ((((pair * 2 + receiver) * kRowGroups + rg) * 2 + n) * 32) + lane_; };
#pragma unroll
    for (int rg = 0; rg < kRowGroups; ++rg) {
#pragma unroll
      for (int n = 0; n < 2; ++n) {
        float out[4];  // element-wise selects: a reference chosen at run time would put total in local memory
#pragma unroll
        for (int e = 0; e < 4; ++e) out[e] = half ? total[rg][n][e] : total[rg][2 + n][e];
        exchange[slot(1 - half, rg, n)] = make_float4(out[0], out[1], out[2], out[3]);
      }
    }
    asm volatile("bar.sync %0, 64;\n" ::"r"(1 + pair) : "memory");
#pragma unroll
    for (int rg = 0; rg < kRowGroups; ++rg) {
#pragma unroll
      for (int n = 0; n < 2; ++n) {
        float mine[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) mine[e] = half ? total[rg][2 + n][e] : total[rg][n][e];
        const float4 other = exchange[slot(half, rg, n)];
        s[rg][n][0] = mine[0] + other.x;
        s[rg][n][1] = mine[1] + other.y;
        s[rg][n][2] = mine[2] + other.z;
        s[rg][n][3] = mine[3] + other.w;
      }
    }
  }

  // kChannels: one round (128 tokens at `raw`). Warp w: S for tokens 16 w .. 16 w + 15 and every row
  // group (the K bytes converted once for all rows); the rows' maxima over the 8 warps through shared
  // memory (every warp then holds the same running max); P into one plane and scale_g / group_max_g
  // per token into the weights; then O[:, 64 w .. 64 w + 63] += P V over the round's 128 tokens, V
  // converted exactly and multiplied by the token's weight (f16) before its MMA. acc[8 rg + i][e]: row
  // 16 rg + g + 8 (e / 2), channel 64 w + 8 (2 q4 + e % 2) + i, in units of group_max_[w / 2].
  __device__ void compute_round_channels(const char* raw, int round_start, int parity, const Piece& piece,
                                         float (&acc)[32][4], RowState (&states)[kRowGroups]) {
    const int g = lane_ >> 2, q4 = lane_ & 3;
    const int warp_token0 = kSplitS ? 32 * (warp_ & 3) + 16 * (warp_ >> 2) : 16 * warp_;
    // Scores: s[rg][n][e] is row 16 rg + g + 8 (e / 2), token warp_token0 + 8 n + q4 + 4 (e % 2).
    float s[kRowGroups][2][4];
    float4 scales[2][2];  // of the tokens warp_token0 + 8 n + q4 + 4 e
    if constexpr (kSplitS) scores_split(raw, s);
#pragma unroll
    for (int n = 0; n < 2; ++n) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        scales[n][e] = *reinterpret_cast<const float4*>(raw + token_offset(warp_token0 + 8 * n + q4 + 4 * e) + kDimV);
      }
    }
    if constexpr (!kSplitS) {
      uint32_t a_offset[4];
      q_fragment_offsets(a_offset);
      const int b_token_local = (g >> 1) + 4 * (g & 1);
      float rope[kRowGroups][2][4], latent[kRowGroups][2][4];
#pragma unroll
      for (int rg = 0; rg < kRowGroups; ++rg) {
#pragma unroll
        for (int n = 0; n < 2; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) rope[rg][n][e] = latent[rg][n][e] = 0.0f;
        }
      }
      {  // RoPE: MMAs of q's dtype on chunks 33 + q4 and 37 + q4 of the token
        uint4 k_rope[2][2];
#pragma unroll
        for (int n = 0; n < 2; ++n) {
          const char* token_row = raw + token_offset(warp_token0 + 8 * n + b_token_local);
          k_rope[n][0] = *reinterpret_cast<const uint4*>(token_row + (33 + q4) * 16);
          k_rope[n][1] = *reinterpret_cast<const uint4*>(token_row + (37 + q4) * 16);
        }
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          uint32_t b[2][2];
#pragma unroll
          for (int n = 0; n < 2; ++n) {
            const uint4 words = k_rope[n][k / 2];
            b[n][0] = (k % 2) ? words.z : words.x;
            b[n][1] = (k % 2) ? words.w : words.y;
            if constexpr (kFp16) {
              b[n][0] = bf16x2_to_f16x2(b[n][0]);
              b[n][1] = bf16x2_to_f16x2(b[n][1]);
            }
          }
#pragma unroll
          for (int rg = 0; rg < kRowGroups; ++rg) {
            uint32_t a[4];
            ldmatrix_x4(a, q_fragment(a_offset, rg, 32 + k));
#pragma unroll
            for (int n = 0; n < 2; ++n) mma_16816<kFp16>(rope[rg][n], a, b[n][0], b[n][1]);
          }
        }
      }
      // Latent: per 128-channel group, f16 MMAs into `part`, then latent += scale_g * part.
#pragma unroll
      for (int group = 0; group < 4; ++group) {
        float part[kRowGroups][2][4];
        latent_group_scores<2>(raw, warp_token0, group, a_offset, part);
#pragma unroll
        for (int rg = 0; rg < kRowGroups; ++rg) {
#pragma unroll
          for (int n = 0; n < 2; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const float4 sc = scales[n][e & 1];
              const float scale = group == 0 ? sc.x : group == 1 ? sc.y : group == 2 ? sc.z : sc.w;
              latent[rg][n][e] = fmaf(scale, part[rg][n][e], latent[rg][n][e]);
            }
          }
        }
      }
#pragma unroll
      for (int rg = 0; rg < kRowGroups; ++rg) {
        const float row_factor[2] = {row_factor_[16 * rg + g], row_factor_[16 * rg + g + 8]};
#pragma unroll
        for (int n = 0; n < 2; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) s[rg][n][e] = fmaf(row_factor[e / 2], latent[rg][n][e], rope[rg][n][e]);
        }
      }
    }

    // Scale and mask; this warp's row maxima into the exchange (row, warp).
    float* exchange = reinterpret_cast<float*>(smem_ + kReductionOffset + kWeightBytes);
#pragma unroll
    for (int rg = 0; rg < kRowGroups; ++rg) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int row = 16 * rg + g + 8 * i;
        const int r = m_block_ * kTileRows + row;
        int limit = piece.token_end;
        if (p_.causal) limit = min(limit, piece.seqlen - p_.s_q + r / p_.group + 1);
        float local_max = -INFINITY;
#pragma unroll
        for (int n = 0; n < 2; ++n) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int position = round_start + warp_token0 + 8 * n + q4 + 4 * e;
            float& value = s[rg][n][2 * i + e];
            value = position < limit ? value * p_.scale_log2 : -INFINITY;
            local_max = fmaxf(local_max, value);
          }
        }
        local_max = fmaxf(local_max, __shfl_xor_sync(0xffffffffu, local_max, 1));
        local_max = fmaxf(local_max, __shfl_xor_sync(0xffffffffu, local_max, 2));
        if (q4 == 0) exchange[row * 8 + warp_] = local_max;
      }
    }
    {  // the largest scale of each group among this warp's tokens
      float scale_max[4];
#pragma unroll
      for (int group = 0; group < 4; ++group) {
        float m = 0.0f;
#pragma unroll
        for (int n = 0; n < 2; ++n) {
          m = fmaxf(m, fmaxf(component(scales[n][0], group), component(scales[n][1], group)));
        }
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
        scale_max[group] = m;
      }
      if (lane_ < 4) {
        const float mine = lane_ == 0   ? scale_max[0]
                           : lane_ == 1 ? scale_max[1]
                           : lane_ == 2 ? scale_max[2]
                                        : scale_max[3];
        atomicMax(block_scale_max_ + 4 * parity + lane_, __float_as_int(mine));
      }
    }
    __syncthreads();

    const int my_group = warp_ >> 1;  // the 128-channel group of this warp's 64 output channels
    float group_ratio = 1.0f;         // old / new group_max of my_group
    float inverse_group_max[4];
    {
      const int4 bits = *reinterpret_cast<const int4*>(block_scale_max_ + 4 * parity);
      const float block_max[4] = {__int_as_float(bits.x), __int_as_float(bits.y), __int_as_float(bits.z),
                                  __int_as_float(bits.w)};
#pragma unroll
      for (int group = 0; group < 4; ++group) {
        const float old_max = group_max_[group];
        const float new_max = fmaxf(old_max, block_max[group]);
        group_max_[group] = new_max;
        inverse_group_max[group] = new_max > 0.0f ? __fdividef(1.0f, new_max) : 0.0f;
        if (group == my_group) group_ratio = new_max > 0.0f ? __fdividef(old_max, new_max) : 1.0f;
      }
    }
    float rescale[kRowGroups][2];
    bool moved = group_ratio != 1.0f;
#pragma unroll
    for (int rg = 0; rg < kRowGroups; ++rg) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int row = 16 * rg + g + 8 * i;
        const float4 low = *reinterpret_cast<const float4*>(exchange + row * 8);
        const float4 high = *reinterpret_cast<const float4*>(exchange + row * 8 + 4);
        const float block_max = fmaxf(fmaxf(fmaxf(low.x, low.y), fmaxf(low.z, low.w)),
                                      fmaxf(fmaxf(high.x, high.y), fmaxf(high.z, high.w)));
        RowState& state = states[rg];
        const float new_max = fmaxf(state.max_log2[i], block_max);
        const float base = new_max == -INFINITY ? 0.0f : new_max;
        rescale[rg][i] = fast_exp2(state.max_log2[i] - base);
        moved = moved || rescale[rg][i] != 1.0f;
        state.max_log2[i] = new_max;
        float block_sum = 0.0f;
#pragma unroll
        for (int n = 0; n < 2; ++n) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& value = s[rg][n][2 * i + e];
            value = fast_exp2(value - base);
            block_sum += value;
          }
        }
        state.sum[i] = state.sum[i] * rescale[rg][i] + block_sum;  // this thread's tokens only
      }
    }
    // NOTE: the accumulators are rescaled only when some factor moved.
    if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
      for (int rg = 0; rg < kRowGroups; ++rg) {
#pragma unroll
        for (int n = 0; n < 8; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[8 * rg + n][e] *= rescale[rg][e / 2] * group_ratio;
        }
      }
    }
    // P (f16) into the plane in token order; the weights scale_g / group_max_g of this warp's tokens.
#pragma unroll
    for (int n = 0; n < 2; ++n) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int token = warp_token0 + 8 * n + q4 + 4 * e;
#pragma unroll
        for (int rg = 0; rg < kRowGroups; ++rg) {
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            const int row = 16 * rg + g + 8 * i;
            const uint32_t offset = row * (kRoundTokens * 2) + (((token >> 3) ^ (row & 7)) << 4) + (token & 7) * 2;
            const __half value = __float2half_rn(s[rg][n][2 * i + e]);
            asm volatile("st.shared.u16 [%0], %1;\n" ::"r"(sp_ + offset), "h"(*reinterpret_cast<const uint16_t*>(&value))
                         : "memory");
          }
        }
        if (g == 0) {
          const float4 sc = scales[n][e];
          const float weight[4] = {sc.x * inverse_group_max[0], sc.y * inverse_group_max[1],
                                   sc.z * inverse_group_max[2], sc.w * inverse_group_max[3]};
          auto* weights = reinterpret_cast<__half*>(smem_ + kReductionOffset);
#pragma unroll
          for (int group = 0; group < 4; ++group) weights[group * kRoundTokens + token] = __float2half_rn(weight[group]);
        }
      }
    }
    __syncthreads();
    // Every thread has read this round's scale maxima and row maxima: clear the scale maxima for round
    // j + 2 (round j + 1 uses the other half, after the next loop barrier).
    if (threadIdx.x < 4) block_scale_max_[4 * parity + threadIdx.x] = 0;

    const char* weights = smem_ + kReductionOffset + my_group * kRoundTokens * 2;
    const int channel0 = 64 * warp_ + 8 * g;  // this thread's 8 channels (n-tile i: channel0 + i)
#pragma unroll
    for (int k = 0; k < kRoundTokens / 16; ++k) {
      // This thread's tokens of the k-step, 16 k + 2 q4 + {0, 1, 8, 9}: its rows of the B fragment, its
      // columns of P's A fragment (registers 0, 1: tokens + 0, 1; 2, 3: + 8, 9). Without a pad in the
      // raw stage (token stride 656 B = 41 16-byte chunks) the 16 lanes of a phase (g 0..3, q4 0..3)
      // then load from 16 distinct 8-byte bank pairs.
      const int token0 = 16 * k + 2 * q4;
      uint32_t a[kRowGroups][4];
#pragma unroll
      for (int rg = 0; rg < kRowGroups; ++rg) {
        const int p_row = 16 * rg + (lane_ & 7) + ((lane_ >> 3) & 1) * 8;
        const int chunk = 2 * k + (lane_ >> 4);
        ldmatrix_x4(a[rg], sp_ + p_row * (kRoundTokens * 2) + ((chunk ^ (p_row & 7)) << 4));
      }
      uint2 v[4];  // tokens token0, token0 + 1, token0 + 8, token0 + 9
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        v[t] = *reinterpret_cast<const uint2*>(raw + token_offset(token0 + (t & 1) + 8 * (t >> 1)) + channel0);
      }
      // The tokens' f16 weights go on P's fragments (4 multiplications per row group and k-step; on V
      // it took 16).
      const uint32_t w01 = *reinterpret_cast<const uint32_t*>(weights + token0 * 2);
      const uint32_t w89 = *reinterpret_cast<const uint32_t*>(weights + (token0 + 8) * 2);
#pragma unroll
      for (int rg = 0; rg < kRowGroups; ++rg) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const __half2 scaled = __hmul2(*reinterpret_cast<const __half2*>(&a[rg][r]),
                                         *reinterpret_cast<const __half2*>(r < 2 ? &w01 : &w89));
          a[rg][r] = *reinterpret_cast<const uint32_t*>(&scaled);
        }
      }
#pragma unroll
      for (int word = 0; word < 2; ++word) {
        const uint32_t x0 = word ? v[0].y : v[0].x, x1 = word ? v[1].y : v[1].x;
        const uint32_t x2 = word ? v[2].y : v[2].x, x3 = word ? v[3].y : v[3].x;
        uint32_t b0[4], b1[4];  // channel channel0 + 4 word + c: tokens + 0, 1 (b0) and + 8, 9 (b1)
        e4m3x4_to_f16x2x2(__byte_perm(x0, x1, 0x5140), b0[0], b0[1]);
        e4m3x4_to_f16x2x2(__byte_perm(x0, x1, 0x7362), b0[2], b0[3]);
        e4m3x4_to_f16x2x2(__byte_perm(x2, x3, 0x5140), b1[0], b1[1]);
        e4m3x4_to_f16x2x2(__byte_perm(x2, x3, 0x7362), b1[2], b1[3]);
#pragma unroll
        for (int c = 0; c < 4; ++c) {
#pragma unroll
          for (int rg = 0; rg < kRowGroups; ++rg) mma_16816<true>(acc[8 * rg + 4 * word + c], a[rg], b0[c], b1[c]);
        }
      }
    }
  }

  // kChannels: the row sums over the 8 warps, then every warp writes its 64 channels of every row.
  __device__ void finish_piece_channels(const Piece& piece, float (&acc)[32][4], RowState (&states)[kRowGroups]) {
    const int g = lane_ >> 2, q4 = lane_ & 3;
    float* exchange = reinterpret_cast<float*>(smem_ + kReductionOffset + kWeightBytes);
    __syncthreads();  // everyone is done with the exchange's row maxima
#pragma unroll
    for (int rg = 0; rg < kRowGroups; ++rg) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        float partial = states[rg].sum[i];
        partial += __shfl_xor_sync(0xffffffffu, partial, 1);
        partial += __shfl_xor_sync(0xffffffffu, partial, 2);
        if (q4 == 0) exchange[(16 * rg + g + 8 * i) * 8 + warp_] = partial;
      }
    }
    __syncthreads();
    // acc is in units of this warp's group max (selected, not indexed: a runtime index into group_max_
    // would put the decoder object in local memory).
    const int my_group = warp_ >> 1;
    const float factor_units = my_group == 0   ? group_max_[0]
                               : my_group == 1 ? group_max_[1]
                               : my_group == 2 ? group_max_[2]
                                               : group_max_[3];
#pragma unroll
    for (int rg = 0; rg < kRowGroups; ++rg) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int tile_row = 16 * rg + g + 8 * i;
        const int r = m_block_ * kTileRows + tile_row;
        if (r >= p_.rows) continue;
        const float4 low = *reinterpret_cast<const float4*>(exchange + tile_row * 8);
        const float4 high = *reinterpret_cast<const float4*>(exchange + tile_row * 8 + 4);
        const float sum = (low.x + low.y) + (low.z + low.w) + (high.x + high.y) + (high.z + high.w);
        const float max_log2 = states[rg].max_log2[i];
        const float factor = (sum == 0.0f ? 0.0f : 1.0f / sum) * factor_units;
        const int token = r / p_.group, head = head_k_ * p_.group + r % p_.group;
        if (piece.only_piece) {
          uint16_t* out = static_cast<uint16_t*>(p_.out) + piece.batch * p_.out_batch_stride +
                          token * p_.out_token_stride + head * p_.out_head_stride;
#pragma unroll
          for (int e = 0; e < 2; ++e) {  // channels 64 w + 8 (2 q4 + e) + 0..7
            float values[8];
#pragma unroll
            for (int n = 0; n < 8; ++n) values[n] = acc[8 * rg + n][2 * i + e] * factor;
            const uint4 packed = make_uint4(pack2<kFp16>(values[0], values[1]), pack2<kFp16>(values[2], values[3]),
                                            pack2<kFp16>(values[4], values[5]), pack2<kFp16>(values[6], values[7]));
            *reinterpret_cast<uint4*>(out + 64 * warp_ + 8 * (2 * q4 + e)) = packed;
          }
          if (warp_ == 0 && q4 == 0) {
            p_.softmax_lse[piece.batch * p_.lse_batch_stride + head * p_.lse_head_stride +
                           token * p_.lse_token_stride] = sum == 0.0f ? INFINITY : (log2f(sum) + max_log2) / kLog2e;
          }
        } else {
          const int64_t slot_row = (static_cast<int64_t>(piece.slot) * p_.h_kv + head_k_) * p_.rows + r;
          float* out = p_.out_accum + slot_row * kDimV;
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float* destination = out + 64 * warp_ + 8 * (2 * q4 + e);
            *reinterpret_cast<float4*>(destination) =
                make_float4(acc[8 * rg][2 * i + e] * factor, acc[8 * rg + 1][2 * i + e] * factor,
                            acc[8 * rg + 2][2 * i + e] * factor, acc[8 * rg + 3][2 * i + e] * factor);
            *reinterpret_cast<float4*>(destination + 4) =
                make_float4(acc[8 * rg + 4][2 * i + e] * factor, acc[8 * rg + 5][2 * i + e] * factor,
                            acc[8 * rg + 6][2 * i + e] * factor, acc[8 * rg + 7][2 * i + e] * factor);
          }
          if (warp_ == 0 && q4 == 0) p_.lse_accum[slot_row] = sum == 0.0f ? -INFINITY : log2f(sum) + max_log2;
        }
      }
    }
  }

  // Normalizes and writes the piece's rows (see Decoder::finish_piece). Accumulator (16 m + i, 2 r + e)
  // is row g + 8 r, channel 128 (2 half + m) + 32 q4 + 16 e + i, in units of group_max_[2 half + m].
  __device__ void finish_piece(const Piece& piece, float (&acc)[32][4], RowState& state) {
    const int g = lane_ >> 2, q4 = lane_ & 3;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      state.sum[i] += __shfl_xor_sync(0xffffffffu, state.sum[i], 1);
      state.sum[i] += __shfl_xor_sync(0xffffffffu, state.sum[i], 2);
    }
    __syncthreads();
    const bool writer = active_ && slice_ == 0;
    if (writer && q4 == 0) {
      reduction_[half_ * kTileRows + row_group_ * 16 + g] = state.sum[0];
      reduction_[half_ * kTileRows + row_group_ * 16 + g + 8] = state.sum[1];
    }
    __syncthreads();
    if (!writer) return;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int tile_row = row_group_ * 16 + g + 8 * i;
      const int r = m_block_ * kTileRows + tile_row;
      if (r >= p_.rows) continue;
      const float sum = state.sum[i] + reduction_[(1 - half_) * kTileRows + tile_row];
      const float inverse = sum == 0.0f ? 0.0f : 1.0f / sum;
      const int token = r / p_.group, head = head_k_ * p_.group + r % p_.group;
      if (piece.only_piece) {
        uint16_t* out = static_cast<uint16_t*>(p_.out) + piece.batch * p_.out_batch_stride +
                        token * p_.out_token_stride + head * p_.out_head_stride;
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          const float factor = inverse * (half_ == 0 ? group_max_[m] : group_max_[2 + m]);  // acc: units of group_max
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            uint16_t* destination = out + 128 * (2 * half_ + m) + 32 * q4 + 16 * e;
#pragma unroll
            for (int c = 0; c < 16; c += 4) {
              const uint2 packed = make_uint2(
                  pack2<kFp16>(acc[16 * m + c][2 * i + e] * factor, acc[16 * m + c + 1][2 * i + e] * factor),
                  pack2<kFp16>(acc[16 * m + c + 2][2 * i + e] * factor, acc[16 * m + c + 3][2 * i + e] * factor));
              *reinterpret_cast<uint2*>(destination + c) = packed;
            }
          }
        }
        if (half_ == 0 && q4 == 0) {
          p_.softmax_lse[piece.batch * p_.lse_batch_stride + head * p_.lse_head_stride + token * p_.lse_token_stride] =
              sum == 0.0f ? INFINITY : (log2f(sum) + state.max_log2[i]) / kLog2e;
        }
      } else {
        const int64_t slot_row = (static_cast<int64_t>(piece.slot) * p_.h_kv + head_k_) * p_.rows + r;
        float* out = p_.out_accum + slot_row * kDimV;
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          const float factor = inverse * (half_ == 0 ? group_max_[m] : group_max_[2 + m]);  // acc: units of group_max
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float* destination = out + 128 * (2 * half_ + m) + 32 * q4 + 16 * e;
#pragma unroll
            for (int c = 0; c < 16; c += 4) {
              *reinterpret_cast<float4*>(destination + c) =
                  make_float4(acc[16 * m + c][2 * i + e] * factor, acc[16 * m + c + 1][2 * i + e] * factor,
                              acc[16 * m + c + 2][2 * i + e] * factor, acc[16 * m + c + 3][2 * i + e] * factor);
            }
          }
        }
        if (half_ == 0 && q4 == 0) p_.lse_accum[slot_row] = sum == 0.0f ? -INFINITY : log2f(sum) + state.max_log2[i];
      }
    }
  }

  const DecodeParams& p_;
  char* smem_ = nullptr;
  uint32_t sq_ = 0, sp_ = 0;
  float* reduction_ = nullptr;
  float* row_factor_ = nullptr;
  // Per block parity, the 4 groups' largest scale of the block as int bits (scales are >= 0, so their
  // bits order like the values), reduced with atomicMax; block j's half is cleared during its O += P V.
  int* block_scale_max_ = nullptr;
  uint32_t barriers_ = 0;     // kStages mbarriers, one per raw stage
  uint32_t phase_bits_ = 0;   // bit s: the parity of raw stage s's next completion
  float group_max_[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // running largest scale per group in the piece
  int warp_ = 0, lane_ = 0, pair_ = 0, row_group_ = 0, slice_ = 0, half_ = 0;
  int head_k_ = 0, m_block_ = 0;
  bool active_ = false;
};

// The FP8 cache with <= 16 query rows per KV head, 16 warps ('mma_sync_fp8_wide', FF_MLA_FP8=wide): the
// direct kernel keeps 4 copies of the 16 x 512 output (one per token slice, 128 accumulators per
// thread at 255 registers), so only 8 warps fit an SM and 2 per scheduler cannot hide the MMA,
// shared-memory and barrier latencies. Here every warp shares one softmax and owns a slice of the
// output channels instead: 512 threads, 16 accumulators each (<= 128 registers), 4 warps per scheduler.
// A round is two 64-token blocks in adjacent raw stages (one 128-token tile, as the pair kernel):
//   S = Q K^T   warp w: the 16 rows x tokens 8 w .. 8 w + 7 of the round over all 576 channels, as the
//               direct kernel (f16 MMAs on the exact e4m3 values, scale_g per 128-channel group, RoPE
//               in q's dtype, Q rows pre-scaled by powers of two);
//   softmax     each warp's row maxima go to shared memory; after a barrier every warp takes the max
//               over all 16, so all warps keep the same running max and their partial row sums and
//               accumulators need no merge; P * scale_g / group_max_g into 4 f16 planes (as the
//               direct kernel), then a barrier;
//   O += P V    warp w: channels 128 G + 32 m .. + 31 (G = w / 4, m = w % 4) over the 128 tokens: 8
//               k-steps x 4 n-tiles; n-tile i column c is channel 128 G + 32 m + 4 c + i, so a thread
//               reads 4 consecutive bytes of each of its 4 tokens per k-step (one 32-bit load each) and
//               pairs tokens with prmt for the exact cvt.rn.f16x2.e4m3x2, as the direct kernel.
// Row sums are reduced over the 16 warps once per piece. Shared memory: 4 raw stages | Q tile (16 x
// 1152 B) | 4 P planes (16 x 128 f16) | row maxima (16 x 20 floats) | row sums | scale maxima | row
// factors.
// Shared-memory accesses by 32-bit shared address (Fp8WideDecoder).
__device__ __forceinline__ uint4 lds_u32x4(uint32_t address) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(address)
               : "memory");
  return v;
}
__device__ __forceinline__ float4 lds_f32x4(uint32_t address) {
  const uint4 v = lds_u32x4(address);
  return make_float4(__uint_as_float(v.x), __uint_as_float(v.y), __uint_as_float(v.z), __uint_as_float(v.w));
}
__device__ __forceinline__ uint32_t lds_u32(uint32_t address) {
  uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(address) : "memory");
  return v;
}
__device__ __forceinline__ void sts_f32(uint32_t address, float value) {
  asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(address), "f"(value) : "memory");
}

template <bool kFp16>
class Fp8WideDecoder {
  static constexpr int kWarps = 16;
  static constexpr int kQRows = 16;
  static constexpr int kBlocks = 2;
  static constexpr int kRoundTokens = kTileRows * kBlocks;  // 128
  static constexpr int kStages = 4;
  static constexpr int kRoundStages = kStages / kBlocks;  // 2
  static constexpr int kQBytes = kQRows * kRowBytes;
  static constexpr int kPlaneBytes = kQRows * kRoundTokens * 2;
  static constexpr int kRowPitch = 20;  // floats per row of the per-warp maxima / sums (16 used; no bank conflicts)
  static constexpr int kRawOffset = 0;
  static constexpr int kQOffset = kStages * kRawTileBytes;
  static constexpr int kPOffset = kQOffset + kQBytes;
  static constexpr int kMaxOffset = kPOffset + 4 * kPlaneBytes;
  static constexpr int kSumOffset = kMaxOffset + kQRows * kRowPitch * 4;
  static constexpr int kScaleMaxOffset = kSumOffset + kQRows * kRowPitch * 4;  // 2 (parity) x 4 groups
  static constexpr int kFactorOffset = kScaleMaxOffset + 2 * 4 * 4;

 public:
  static constexpr int kCtaThreads = kWarps * 32;
  static constexpr int kSmemBytes = kFactorOffset + kQRows * 4;
  static_assert(kSmemBytes <= 232448, "one CTA must fit the 227 KB of an sm_90 SM");
  static_assert(kRawTileBytes % 128 == 0 && kQOffset % 128 == 0 && kPOffset % 128 == 0, "aligned regions");
  static_assert(kMaxOffset % 16 == 0 && kSumOffset % 16 == 0 && kScaleMaxOffset % 16 == 0, "aligned vectors");

  __device__ Fp8WideDecoder(const DecodeParams& p, char* smem) : p_(p), smem_(smem) {
    raw_ = smem_address(smem + kRawOffset);
    max_address_ = smem_address(smem + kMaxOffset);
    scale_max_address_ = smem_address(smem + kScaleMaxOffset);
    sq_ = smem_address(smem + kQOffset);
    sp_ = smem_address(smem + kPOffset);
    row_sum_ = reinterpret_cast<float*>(smem + kSumOffset);
    row_factor_ = reinterpret_cast<float*>(smem + kFactorOffset);
    block_scale_max_ = reinterpret_cast<int*>(smem + kScaleMaxOffset);
    warp_ = static_cast<int>(threadIdx.x) / 32;
    lane_ = static_cast<int>(threadIdx.x) % 32;
    head_k_ = static_cast<int>(blockIdx.y);
    m_block_ = static_cast<int>(blockIdx.x);
  }

  __device__ void run_piece(const Piece& piece) {
    const int num_kv_blocks =
        piece.token_end > piece.token_begin ? (piece.token_end - piece.token_begin + kTileRows - 1) / kTileRows : 0;
    const int first_block = piece.token_begin / kTileRows;
    const int num_rounds = (num_kv_blocks + kBlocks - 1) / kBlocks;
    const int end_block = first_block + num_kv_blocks;
    const auto round_physical = [&](int round, int b) {
      const int block = first_block + round * kBlocks + b;
      return block < end_block ? physical_block(piece, block) : -1;
    };
    float acc[4][4];
#pragma unroll
    for (int n = 0; n < 4; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    float max_log2[2] = {-INFINITY, -INFINITY}, sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int group = 0; group < 4; ++group) group_max_[group] = 0.0f;
    if (threadIdx.x < 8) block_scale_max_[threadIdx.x] = 0;  // visible after the first barrier below
    // The first position each of this thread's rows (g, g + 8) may not see: the piece's end, and with
    // causal masking the row's own limit (computed once per piece: it holds a division).
    int limit[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = m_block_ * kTileRows + (lane_ >> 2) + 8 * i;
      limit[i] = piece.token_end;
      if (p_.causal) limit[i] = min(limit[i], piece.seqlen - p_.s_q + r / p_.group + 1);
    }

    // Prologue: round 0 (possibly empty), then Q; the block-table entries of round 1 are read ahead.
    if (num_rounds > 0) {
#pragma unroll
      for (int b = 0; b < kBlocks; ++b) load_block(piece, first_block + b, b, round_physical(0, b));
    }
    cp_async_commit();
    int next_physical[kBlocks];
#pragma unroll
    for (int b = 0; b < kBlocks; ++b) next_physical[b] = 1 < num_rounds ? round_physical(1, b) : -1;
    load_q(piece.batch);

    for (int j = 0; j < num_rounds; ++j) {
      cp_async_wait<0>();
      __syncthreads();  // round j (and Q) visible to all; every warp is done with round j - 1's stages
      if (j + 1 < num_rounds) {
#pragma unroll
        for (int b = 0; b < kBlocks; ++b) {
          load_block(piece, first_block + (j + 1) * kBlocks + b, ((j + 1) % kRoundStages) * kBlocks + b,
                     next_physical[b]);
        }
      }
      cp_async_commit();
#pragma unroll
      for (int b = 0; b < kBlocks; ++b) next_physical[b] = j + 2 < num_rounds ? round_physical(j + 2, b) : -1;
      if (!p_.probe_loads_only) {
        compute_round(raw_ + (j % kRoundStages) * kBlocks * kRawTileBytes, (first_block + j * kBlocks) * kTileRows,
                      j & 1, limit, acc, max_log2, sum);
      }
    }
    cp_async_wait<0>();
    finish_piece(piece, acc, max_log2, sum);
    __syncthreads();  // the next piece reuses every buffer
  }

 private:
  __device__ static __forceinline__ int raw_chunk(int token, int chunk) {
    return chunk < kDimV / 16 ? chunk ^ (((token >> 3) & 1) << 1) : chunk;
  }

  // As Fp8Decoder::load_q, 16 rows over 16 warps.
  __device__ void load_q(int batch) {
    const int row = warp_;
    uint4 latents[1][2], ropes[1];
    load_query_rows(p_, batch, m_block_ * kTileRows + row, head_k_, lane_, latents, ropes);
    const uint4& rope = ropes[0];
    float values[16], factor;
    const float up = query_row_scale<kFp16>(latents[0], values, factor);
    if (lane_ == 0) row_factor_[row] = factor;
    const int j = lane_ >> 2, qq = lane_ & 3;
#pragma unroll
    for (int s = 0; s < 4; ++s) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int c = 4 * s + 2 * half;
        const __half2 h = __floats2half2_rn(values[c] * up, values[c + 1] * up);
        const uint32_t word = *reinterpret_cast<const uint32_t*>(&h);
        const uint32_t address = sq_ + tile_offset(row, 8 * j + 2 * s + half) + 4 * qq;
        asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(address), "r"(word) : "memory");
      }
    }
    if (lane_ < 8) {
      const int h = lane_ >> 2;
      const uint32_t rope_words[4] = {rope.x, rope.y, rope.z, rope.w};
#pragma unroll
      for (int s = 0; s < 2; ++s) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const uint32_t address = sq_ + tile_offset(row, 64 + 2 * (2 * h + s) + half) + 4 * qq;
          asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(address), "r"(rope_words[2 * s + half]) : "memory");
        }
      }
    }
  }

  __device__ int physical_block(const Piece& piece, int block) const {
    return block < p_.max_blocks
               ? p_.block_table[piece.batch * p_.block_table_batch_stride + block * p_.block_table_column_stride]
               : -1;
  }

  // KV block `block` into raw stage `stage` (as Fp8Decoder::load_block, 512 threads: thread t copies
  // chunk t % 64 (if < 41) of tokens t / 64 + 8 i, i < 8, whose swizzle is 2 (i & 1)).
  __device__ void load_block(const Piece& piece, int block, int stage, int physical) {
    const bool block_ok = physical >= 0 && physical < p_.num_blocks;
    const int valid_tokens = block_ok ? min(kTileRows, piece.token_end - block * kTileRows) : 0;
    const auto* cache = static_cast<const uint8_t*>(p_.k_cache);
    const uint8_t* base = cache + (block_ok ? physical * p_.k_block_stride + head_k_ * p_.k_head_stride : 0);
    const uint32_t destination = smem_address(smem_ + kRawOffset + stage * kRawTileBytes);
    const int chunk = static_cast<int>(threadIdx.x) & 63, token0 = static_cast<int>(threadIdx.x) >> 6;
    static_assert(kCtaThreads == 512 && kTileRows == 64, "8 tokens x 64 chunk lanes per round");
    if (chunk < kFp8TokenChunks) {
      const uint8_t* source = base + token0 * p_.k_token_stride + chunk * 16;
      const int64_t step = 8 * p_.k_token_stride;
      const uint32_t first = destination + token0 * kFp8TokenBytes;
      const uint32_t straight = first + chunk * 16, swizzled = first + raw_chunk(8, chunk) * 16;
      if (valid_tokens == kTileRows) {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          cp_async_16_always(((i & 1) ? swizzled : straight) + 8 * i * kFp8TokenBytes, source);
          source += step;
        }
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const bool valid = token0 + 8 * i < valid_tokens;
          cp_async_16(((i & 1) ? swizzled : straight) + 8 * i * kFp8TokenBytes, valid ? source : cache, valid);
          source += step;
        }
      }
    }
  }

  __device__ static __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
  }

  __device__ static __forceinline__ void e4m3x4_to_f16x2x2(uint32_t x, uint32_t& low, uint32_t& high) {
    asm("{\n.reg .b16 l, h;\nmov.b32 {l, h}, %2;\ncvt.rn.f16x2.e4m3x2 %0, l;\ncvt.rn.f16x2.e4m3x2 %1, h;\n}\n"
        : "=r"(low), "=r"(high)
        : "r"(x));
  }

  __device__ static __forceinline__ float component(const float4& v, int group) {
    return group == 0 ? v.x : group == 1 ? v.y : group == 2 ? v.z : v.w;
  }

  // One round (128 tokens from the raw tiles at `raw`): S = Q K^T, online softmax, O += P V.
  __device__ void compute_round(uint32_t raw, int round_start, int parity, const int (&limit)[2], float (&acc)[4][4],
                                float (&max_log2)[2], float (&sum)[2]) {
    const int g = lane_ >> 2, q4 = lane_ & 3;
    const int warp_token0 = 8 * warp_;
    // Scores: element 2 i + e is row g + 8 i, token warp_token0 + q4 + 4 e.
    float s[4];
    float4 scales[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      scales[e] = lds_f32x4(raw + (warp_token0 + q4 + 4 * e) * kFp8TokenBytes + kDimV);
    }
    {
      const int a_row = (lane_ & 7) + ((lane_ >> 3) & 1) * 8;
      uint32_t a_offset[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a_offset[i] = sq_ + a_row * kRowBytes + (((2 * i + (lane_ >> 4)) ^ (a_row & 7)) << 4);
      const auto a_address = [&](int k) { return a_offset[k % 4] + 128 * (k / 4); };
      const int b_token = warp_token0 + (g >> 1) + 4 * (g & 1);
      const uint32_t token_row = raw + b_token * kFp8TokenBytes;
      const float row_factor[2] = {row_factor_[g], row_factor_[g + 8]};
      float rope[2][4], latent[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) latent[e] = rope[0][e] = rope[1][e] = 0.0f;
      {
        const uint4 k_rope[2] = {lds_u32x4(token_row + (33 + q4) * 16), lds_u32x4(token_row + (37 + q4) * 16)};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          uint32_t a[4];
          ldmatrix_x4(a, a_address(32 + k));
          const uint4 words = k_rope[k / 2];
          uint32_t b0 = (k % 2) ? words.z : words.x, b1 = (k % 2) ? words.w : words.y;
          if constexpr (kFp16) {
            b0 = bf16x2_to_f16x2(b0);
            b1 = bf16x2_to_f16x2(b1);
          }
          mma_16816<kFp16>(rope[k % 2], a, b0, b1);
        }
      }
#pragma unroll
      for (int group = 0; group < 4; ++group) {
        float part[2][4];
#pragma unroll
        for (int c = 0; c < 2; ++c) part[c][0] = part[c][1] = part[c][2] = part[c][3] = 0.0f;
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) {
          const int j = 2 * group + jj;
          const uint4 k_bytes = lds_u32x4(token_row + raw_chunk(b_token, 4 * j + q4) * 16);
#pragma unroll
          for (int sub = 0; sub < 4; ++sub) {
            uint32_t a[4];
            ldmatrix_x4(a, a_address(4 * j + sub));
            const uint32_t x = sub == 0 ? k_bytes.x : sub == 1 ? k_bytes.y : sub == 2 ? k_bytes.z : k_bytes.w;
            uint32_t b0, b1;
            e4m3x4_to_f16x2x2(x, b0, b1);
            mma_16816<true>(part[sub % 2], a, b0, b1);
          }
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          latent[e] = fmaf(component(scales[e & 1], group), part[0][e] + part[1][e], latent[e]);
        }
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) s[e] = fmaf(row_factor[e / 2], latent[e], rope[0][e] + rope[1][e]);
    }

    // Scale, mask, this warp's row maxima and largest scales per group.
    float local_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int position = round_start + warp_token0 + q4 + 4 * e;
        float& value = s[2 * i + e];
        value = position < limit[i] ? value * p_.scale_log2 : -INFINITY;
        local_max[i] = fmaxf(local_max[i], value);
      }
      local_max[i] = fmaxf(local_max[i], __shfl_xor_sync(0xffffffffu, local_max[i], 1));
      local_max[i] = fmaxf(local_max[i], __shfl_xor_sync(0xffffffffu, local_max[i], 2));
    }
    float scale_max[4];
#pragma unroll
    for (int group = 0; group < 4; ++group) {
      float m = fmaxf(component(scales[0], group), component(scales[1], group));
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
      scale_max[group] = m;
    }
    if (q4 == 0) {
      sts_f32(max_address_ + (g * kRowPitch + warp_) * 4, local_max[0]);
      sts_f32(max_address_ + ((g + 8) * kRowPitch + warp_) * 4, local_max[1]);
    }
    if (lane_ < 4) {
      const float mine = lane_ == 0   ? scale_max[0]
                         : lane_ == 1 ? scale_max[1]
                         : lane_ == 2 ? scale_max[2]
                                      : scale_max[3];
      asm volatile("red.shared.max.s32 [%0], %1;\n" ::"r"(scale_max_address_ + (4 * parity + lane_) * 4),
                   "r"(__float_as_int(mine))
                   : "memory");
    }
    __syncthreads();

    // The running largest scale per group (see Fp8Decoder); this warp's accumulators are in units of
    // group_max_[warp / 4].
    const int my_group = warp_ >> 2;
    float group_ratio = 1.0f;
    float inverse_group_max[4];
    {
      const uint4 bits = lds_u32x4(scale_max_address_ + 16 * parity);
      const float block_max[4] = {__uint_as_float(bits.x), __uint_as_float(bits.y), __uint_as_float(bits.z),
                                  __uint_as_float(bits.w)};
#pragma unroll
      for (int group = 0; group < 4; ++group) {
        const float old_max = group_max_[group];
        const float new_max = fmaxf(old_max, block_max[group]);
        group_max_[group] = new_max;
        inverse_group_max[group] = new_max > 0.0f ? __fdividef(1.0f, new_max) : 0.0f;
        if (group == my_group) group_ratio = new_max > 0.0f ? __fdividef(old_max, new_max) : 1.0f;
      }
    }
    float rescale[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float new_max = max_log2[i];
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        const float4 m = lds_f32x4(max_address_ + ((g + 8 * i) * kRowPitch + 4 * v) * 4);
        new_max = fmaxf(new_max, fmaxf(fmaxf(m.x, m.y), fmaxf(m.z, m.w)));
      }
      const float base = new_max == -INFINITY ? 0.0f : new_max;
      rescale[i] = fast_exp2(max_log2[i] - base);
      max_log2[i] = new_max;
      float block_sum = 0.0f;
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float& value = s[2 * i + e];
        value = fast_exp2(value - base);
        block_sum += value;
      }
      sum[i] = sum[i] * rescale[i] + block_sum;
    }
#pragma unroll
    for (int n = 0; n < 4; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[n][e] *= rescale[e / 2] * group_ratio;
    }
    // P * scale_g / group_max_g (f16) into plane g, tokens permuted within each 16 as Fp8Decoder does.
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int token = warp_token0 + q4 + 4 * e;
      const int within = token & 15, u = within >> 2, v = within & 3;
      const int place = (token & ~15) + 2 * u + 8 * (v >> 1) + (v & 1);
      const float4 sc = scales[e];
      const float weight[4] = {sc.x * inverse_group_max[0], sc.y * inverse_group_max[1], sc.z * inverse_group_max[2],
                               sc.w * inverse_group_max[3]};
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int row = g + 8 * i;
        const uint32_t offset = row * (kRoundTokens * 2) + (((place >> 3) ^ (row & 7)) << 4) + (place & 7) * 2;
        const float p = s[2 * i + e];
#pragma unroll
        for (int group = 0; group < 4; ++group) {
          const __half value = __float2half_rn(p * weight[group]);
          const uint16_t bits = *reinterpret_cast<const uint16_t*>(&value);
          asm volatile("st.shared.u16 [%0], %1;\n" ::"r"(sp_ + group * kPlaneBytes + offset), "h"(bits) : "memory");
        }
      }
    }
    __syncthreads();
    if (threadIdx.x < 4) block_scale_max_[4 * parity + threadIdx.x] = 0;

    // O += P V over the 8 k-steps of the round: this warp's 32 channels.
    const int p_row = (lane_ & 7) + ((lane_ >> 3) & 1) * 8;
    const int channel_chunk = 8 * my_group + 2 * (warp_ & 3) + (g >> 2);  // 16-byte latent chunk of the 4 bytes
    const int byte_in_chunk = 4 * (g & 3);
#pragma unroll
    for (int k = 0; k < kRoundTokens / 16; ++k) {
      const int chunk = 2 * k + (lane_ >> 4);
      uint32_t a[4];
      ldmatrix_x4(a, sp_ + my_group * kPlaneBytes + p_row * (kRoundTokens * 2) + ((chunk ^ (p_row & 7)) << 4));
      uint32_t w[4];  // tokens 16 k + 4 q4 + t
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        const int token = 16 * k + 4 * q4 + t;
        w[t] = lds_u32(raw + token * kFp8TokenBytes + raw_chunk(token, channel_chunk) * 16 + byte_in_chunk);
      }
      // n-tile i, column g = channel 4 g + i of the warp's 32: byte i of each word. b0 = tokens 0, 1; b1 = 2, 3.
      uint32_t b0[4], b1[4];
      e4m3x4_to_f16x2x2(__byte_perm(w[0], w[1], 0x5140), b0[0], b0[1]);
      e4m3x4_to_f16x2x2(__byte_perm(w[0], w[1], 0x7362), b0[2], b0[3]);
      e4m3x4_to_f16x2x2(__byte_perm(w[2], w[3], 0x5140), b1[0], b1[1]);
      e4m3x4_to_f16x2x2(__byte_perm(w[2], w[3], 0x7362), b1[2], b1[3]);
#pragma unroll
      for (int n = 0; n < 4; ++n) mma_16816<true>(acc[n], a, b0[n], b1[n]);
    }
  }

  // Reduces the row sums over the 16 warps and writes the piece's rows. acc[n][2 r + e] is row g + 8 r,
  // channel 128 G + 32 m + 4 (2 q4 + e) + n (G = warp / 4, m = warp % 4), in units of group_max_[G].
  __device__ void finish_piece(const Piece& piece, float (&acc)[4][4], const float (&max_log2)[2], float (&sum)[2]) {
    const int g = lane_ >> 2, q4 = lane_ & 3;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      sum[i] += __shfl_xor_sync(0xffffffffu, sum[i], 1);
      sum[i] += __shfl_xor_sync(0xffffffffu, sum[i], 2);
    }
    __syncthreads();
    if (q4 == 0) {
      row_sum_[g * kRowPitch + warp_] = sum[0];
      row_sum_[(g + 8) * kRowPitch + warp_] = sum[1];
    }
    __syncthreads();
    const int group = warp_ >> 2;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int tile_row = g + 8 * i;
      const int r = m_block_ * kTileRows + tile_row;
      if (r >= p_.rows) continue;
      const float4* sums = reinterpret_cast<const float4*>(row_sum_ + tile_row * kRowPitch);
      float total = 0.0f;
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        const float4 x = sums[v];
        total += (x.x + x.y) + (x.z + x.w);
      }
      const float inverse = total == 0.0f ? 0.0f : 1.0f / total;
      // NOTE: group_max_ indexed by constants only (a run-time index put it in local memory).
      float group_max = group_max_[0];
#pragma unroll
      for (int other = 1; other < 4; ++other) group_max = group == other ? group_max_[other] : group_max;
      const float factor = inverse * group_max;
      const int token = r / p_.group, head = head_k_ * p_.group + r % p_.group;
      const int channel = 128 * group + 32 * (warp_ & 3) + 8 * q4;  // channels channel .. channel + 7
      float values[8];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
#pragma unroll
        for (int n = 0; n < 4; ++n) values[4 * e + n] = acc[n][2 * i + e] * factor;
      }
      if (piece.only_piece) {
        uint16_t* out = static_cast<uint16_t*>(p_.out) + piece.batch * p_.out_batch_stride +
                        token * p_.out_token_stride + head * p_.out_head_stride;
        // NOTE: two 8-byte stores: out rows need only 4-element alignment (check_alignment).
        *reinterpret_cast<uint2*>(out + channel) =
            make_uint2(pack2<kFp16>(values[0], values[1]), pack2<kFp16>(values[2], values[3]));
        *reinterpret_cast<uint2*>(out + channel + 4) =
            make_uint2(pack2<kFp16>(values[4], values[5]), pack2<kFp16>(values[6], values[7]));
        if (warp_ == 0 && q4 == 0) {
          p_.softmax_lse[piece.batch * p_.lse_batch_stride + head * p_.lse_head_stride + token * p_.lse_token_stride] =
              total == 0.0f ? INFINITY : (log2f(total) + max_log2[i]) / kLog2e;
        }
      } else {
        const int64_t slot_row = (static_cast<int64_t>(piece.slot) * p_.h_kv + head_k_) * p_.rows + r;
        float* out = p_.out_accum + slot_row * kDimV + channel;
        *reinterpret_cast<float4*>(out) = make_float4(values[0], values[1], values[2], values[3]);
        *reinterpret_cast<float4*>(out + 4) = make_float4(values[4], values[5], values[6], values[7]);
        if (warp_ == 0 && q4 == 0) p_.lse_accum[slot_row] = total == 0.0f ? -INFINITY : log2f(total) + max_log2[i];
      }
    }
  }

  const DecodeParams& p_;
  char* smem_ = nullptr;
  // NOTE: shared-memory reads of the round go through 32-bit shared addresses and ld.shared: with
  // generic pointers ptxas emitted generic loads (LD) and atomics here.
  uint32_t raw_ = 0, max_address_ = 0, scale_max_address_ = 0;
  uint32_t sq_ = 0, sp_ = 0;
  // max_address_: (16 rows, kRowPitch) floats, each warp's row maxima of the round.
  float* row_sum_ = nullptr;  // (16 rows, kRowPitch): each warp's row sums of the piece
  float* row_factor_ = nullptr;
  int* block_scale_max_ = nullptr;
  float group_max_[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  int warp_ = 0, lane_ = 0;
  int head_k_ = 0, m_block_ = 0;
};

// ---------------------------------------------------------------------------------------------------
// WGMMA kernels: >= 64 query rows per KV head (the compute-bound shapes). Common to both: 256 threads
// = two warpgroups; tiles (Q, KV) of 9 column blocks of 64 channels, each 64 rows x 128 B with the
// 16-byte chunk c of row r at chunk c ^ (r & 7) (the hardware's 128-byte swizzle; every block 1024-byte
// aligned), so that Q and K are K-major wgmma operands and V (channels of the same tile) an MN-major
// one; P (bf16 / fp16) goes into the RoPE block (channels 512..575) of the KV tile, dead after S, whose
// 64 x 64 layout is exactly that of a K-major A operand; loads are cp.async (as the mma.sync kernel).
//   WgmmaPipelinedDecoder (bf16 / fp16 cache, below): warpgroup roles as FlashMLA, two KV stages.
//   WgmmaFp8Decoder (FP8 cache): dequantizes each block into one 16-bit tile, then, symmetric:
//     S = Q K^T   warpgroup w computes the 64 rows x tokens 32 w .. 32 w + 31 (wgmma m64n32k16, A = the
//                 Q tile, B = the KV tile, both from shared memory, 36 k-steps);
//     softmax     row maxima exchanged between the warpgroups through shared memory, log2 domain; each
//                 warpgroup keeps partial row sums over its tokens (merged once per piece);
//     O += P V    warpgroup w accumulates the 64 rows x value channels 256 w .. 256 w + 255 (wgmma
//                 m64n256k16, A = P, B = the tile read MN-major: 4 k-steps of 16 tokens).
constexpr int kColumnBlockBytes = kTileRows * 128;  // 64 rows x 64 channels of 16 bits
constexpr int kColumnBlocks = kDimQk / 64;          // 9; block 8 holds the RoPE channels (and later P)
static_assert(kColumnBlocks * kColumnBlockBytes == kTileBytes, "the WGMMA tile has the mma.sync tile's size");

__device__ __forceinline__ uint32_t wgmma_tile_offset(int row, int chunk) {
  return static_cast<uint32_t>((chunk >> 3) * kColumnBlockBytes + row * 128 + (((chunk & 7) ^ (row & 7)) << 4));
}

// A shared-memory matrix descriptor with the 128-byte swizzle: start address, leading and stride byte
// offsets (see the PTX ISA, "Matrix Descriptor Format"). K-major operands: rows 128 B apart, groups of
// 8 rows `stride` apart (the leading offset is unused). MN-major: 64 elements per 128-byte row,
// `leading` between 64-element column blocks, `stride` between groups of 8 rows along K.
__device__ __forceinline__ uint64_t gmma_descriptor(uint32_t address, uint32_t leading, uint32_t stride) {
  return static_cast<uint64_t>((address & 0x3FFFF) >> 4) | (static_cast<uint64_t>(leading >> 4) << 16) |
         (static_cast<uint64_t>(stride >> 4) << 32) | (1ull << 62);
}

// The lean kernel (WgmmaPipelinedDecoder<., 0, true, true>) builds descriptors from their lower 32 bits:
// every descriptor of these tiles has the same upper half (stride 1024 B, 128-byte swizzle), and the
// lower half holds the start address (bits 0-13, address >> 4) and the leading offset (bits 16-29), so a
// k-step, column-block or stage offset is one 32-bit add that never carries out of the address field
// (shared addresses are < 232 KB < 256 KB). The 64-bit adds of gmma_descriptor() + offset cost a
// carry chain and register moves per wgmma (ptxas kept all 36 S descriptors in registers).
constexpr uint32_t kGmmaDescriptorHigh = (1024u >> 4) | (1u << 30);
__device__ __forceinline__ uint32_t gmma_descriptor_low(uint32_t address, uint32_t leading) {
  return ((address & 0x3FFFF) >> 4) | ((leading >> 4) << 16);
}
// volatile: computed where it is used, not hoisted into registers that live across the whole loop.
__device__ __forceinline__ uint64_t gmma_descriptor_join(uint32_t low) {
  uint64_t descriptor;
  asm volatile("mov.b64 %0, {%1, %2};\n" : "=l"(descriptor) : "r"(low), "n"(kGmmaDescriptorHigh));
  return descriptor;
}
// 2^x with one MUFU.EX2 (flushes subnormal results to 0; exp2f adds a range fix-up of 3 instructions).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// Keeps the compiler from moving accesses of an accumulator register across the asynchronous MMAs.
__device__ __forceinline__ void fence_operand(float& value) { asm volatile("" : "+f"(value)::"memory"); }
// Generic-proxy writes of shared memory (st.shared, cp.async) before the tensor cores read them.

// d (64 x 32, the m64n32 accumulator layout) = (scale_d ? d : 0) + A (64 x 16, K-major) * B (16 x 32, K-major).
template <bool kFp16>
__device__ __forceinline__ void wgmma_m64n32k16(float (&d)[16], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  if constexpr (kFp16) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
        "%16, %17, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
          "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
        "%16, %17, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
          "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
  }
}

// d (64 x 256) = (scale_d ? d : 0) + A (64 x 16, K-major) * B (16 x 256, MN-major: the V tile's token rows).
// d[n][e] is n8 tile n, element e of the m64n256 accumulator layout (the m16n8 layout per warp).
template <bool kFp16>
__device__ __forceinline__ void wgmma_m64n256k16_mn(float (&d)[32][4], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  if constexpr (kFp16) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
        "%128, %129, p, 1, 1, 0, 1;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]),
          "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]),
          "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]),
          "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]),
          "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]),
          "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]),
          "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]),
          "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]),
          "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]),
          "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3]), "+f"(d[16][0]), "+f"(d[16][1]),
          "+f"(d[16][2]), "+f"(d[16][3]), "+f"(d[17][0]), "+f"(d[17][1]), "+f"(d[17][2]), "+f"(d[17][3]),
          "+f"(d[18][0]), "+f"(d[18][1]), "+f"(d[18][2]), "+f"(d[18][3]), "+f"(d[19][0]), "+f"(d[19][1]),
          "+f"(d[19][2]), "+f"(d[19][3]), "+f"(d[20][0]), "+f"(d[20][1]), "+f"(d[20][2]), "+f"(d[20][3]),
          "+f"(d[21][0]), "+f"(d[21][1]), "+f"(d[21][2]), "+f"(d[21][3]), "+f"(d[22][0]), "+f"(d[22][1]),
          "+f"(d[22][2]), "+f"(d[22][3]), "+f"(d[23][0]), "+f"(d[23][1]), "+f"(d[23][2]), "+f"(d[23][3]),
          "+f"(d[24][0]), "+f"(d[24][1]), "+f"(d[24][2]), "+f"(d[24][3]), "+f"(d[25][0]), "+f"(d[25][1]),
          "+f"(d[25][2]), "+f"(d[25][3]), "+f"(d[26][0]), "+f"(d[26][1]), "+f"(d[26][2]), "+f"(d[26][3]),
          "+f"(d[27][0]), "+f"(d[27][1]), "+f"(d[27][2]), "+f"(d[27][3]), "+f"(d[28][0]), "+f"(d[28][1]),
          "+f"(d[28][2]), "+f"(d[28][3]), "+f"(d[29][0]), "+f"(d[29][1]), "+f"(d[29][2]), "+f"(d[29][3]),
          "+f"(d[30][0]), "+f"(d[30][1]), "+f"(d[30][2]), "+f"(d[30][3]), "+f"(d[31][0]), "+f"(d[31][1]),
          "+f"(d[31][2]), "+f"(d[31][3])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
        "%128, %129, p, 1, 1, 0, 1;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]),
          "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]),
          "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]),
          "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]),
          "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]),
          "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]),
          "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]),
          "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]),
          "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]),
          "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3]), "+f"(d[16][0]), "+f"(d[16][1]),
          "+f"(d[16][2]), "+f"(d[16][3]), "+f"(d[17][0]), "+f"(d[17][1]), "+f"(d[17][2]), "+f"(d[17][3]),
          "+f"(d[18][0]), "+f"(d[18][1]), "+f"(d[18][2]), "+f"(d[18][3]), "+f"(d[19][0]), "+f"(d[19][1]),
          "+f"(d[19][2]), "+f"(d[19][3]), "+f"(d[20][0]), "+f"(d[20][1]), "+f"(d[20][2]), "+f"(d[20][3]),
          "+f"(d[21][0]), "+f"(d[21][1]), "+f"(d[21][2]), "+f"(d[21][3]), "+f"(d[22][0]), "+f"(d[22][1]),
          "+f"(d[22][2]), "+f"(d[22][3]), "+f"(d[23][0]), "+f"(d[23][1]), "+f"(d[23][2]), "+f"(d[23][3]),
          "+f"(d[24][0]), "+f"(d[24][1]), "+f"(d[24][2]), "+f"(d[24][3]), "+f"(d[25][0]), "+f"(d[25][1]),
          "+f"(d[25][2]), "+f"(d[25][3]), "+f"(d[26][0]), "+f"(d[26][1]), "+f"(d[26][2]), "+f"(d[26][3]),
          "+f"(d[27][0]), "+f"(d[27][1]), "+f"(d[27][2]), "+f"(d[27][3]), "+f"(d[28][0]), "+f"(d[28][1]),
          "+f"(d[28][2]), "+f"(d[28][3]), "+f"(d[29][0]), "+f"(d[29][1]), "+f"(d[29][2]), "+f"(d[29][3]),
          "+f"(d[30][0]), "+f"(d[30][1]), "+f"(d[30][2]), "+f"(d[30][3]), "+f"(d[31][0]), "+f"(d[31][1]),
          "+f"(d[31][2]), "+f"(d[31][3])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
  }
}

template <bool kFp16>
class WgmmaFp8Decoder {
  static constexpr int kQOffset = 0;
  static constexpr int kKvOffset = kTileBytes;       // the dequantized 16-bit KV tile
  static constexpr int kRawOffset = 2 * kTileBytes;  // two raw FP8 stages
  static constexpr int kReductionOffset = 2 * kTileBytes + 2 * kRawTileBytes;

 public:
  static constexpr int kSmemBytes = kReductionOffset + kReductionBytes;
  static_assert(kSmemBytes <= 232448, "one CTA must fit the 227 KB of an sm_90 SM");

  __device__ WgmmaFp8Decoder(const DecodeParams& p, char* smem) : p_(p) {
    const uint32_t base = smem_address(smem);
    // No room for alignment slack: the swizzled tiles need the dynamic shared memory to start 1024-byte
    // aligned, which it does on sm_90 (checked here; the bf16 kernel aligns itself).
    const uint32_t pad = (1024 - base % 1024) % 1024;
    if (pad != 0) __trap();
    char* aligned = smem + pad;
    sq_ = base + pad + kQOffset;
    skv_ = base + pad + kKvOffset;
    kv_tile_ = aligned + kKvOffset;
    raw_ = aligned + kRawOffset;
    reduction_ = reinterpret_cast<float*>(aligned + kReductionOffset);
    const int thread = static_cast<int>(threadIdx.x);
    warpgroup_ = thread / 128;
    warp_ = (thread / 32) % 4;
    lane_ = thread % 32;
    head_k_ = static_cast<int>(blockIdx.y);
    m_block_ = static_cast<int>(blockIdx.x);
  }

  __device__ void run_piece(const Piece& piece) {
    const int num_kv_blocks =
        piece.token_end > piece.token_begin ? (piece.token_end - piece.token_begin + kTileRows - 1) / kTileRows : 0;
    const int first_block = piece.token_begin / kTileRows;
    float acc[32][4];
#pragma unroll
    for (int n = 0; n < 32; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    RowState state;
    state.max_log2[0] = state.max_log2[1] = -INFINITY;
    state.sum[0] = state.sum[1] = 0.0f;

    // Prologue: group 0 = Q + block 0, group 1 = block 1 (either may be empty).
    load_q(piece.batch);
    if (num_kv_blocks > 0) load_block(piece, first_block, 0);
    cp_async_commit();
    if (num_kv_blocks > 1) load_block(piece, first_block + 1, 1);
    cp_async_commit();

    for (int j = 0; j < num_kv_blocks; ++j) {
      cp_async_wait<1>();  // block j (and Q) landed; block j + 1 may be in flight
      fence_proxy_async();
      __syncthreads();  // also: both warpgroups are done with block j - 1 (its O += P V waited)
      dequantize(raw_ + (j & 1) * kRawTileBytes);
      fence_proxy_async();
      __syncthreads();  // the raw stage is free again and the KV tile is complete
      if (j + 2 < num_kv_blocks) load_block(piece, first_block + j + 2, j & 1);
      cp_async_commit();
      if (!p_.probe_loads_only) compute_block(skv_, (first_block + j) * kTileRows, piece, acc, state);
    }
    cp_async_wait<0>();
    finish_piece(piece, acc, state);
    __syncthreads();  // the next piece reuses every buffer
  }

 private:
  __device__ void load_q(int batch) {
    const auto* q = static_cast<const uint16_t*>(p_.q);
    for (int task = static_cast<int>(threadIdx.x); task < kTileRows * kChunks; task += kThreads) {
      const int row = task / kChunks, chunk = task % kChunks;
      const int r = m_block_ * kTileRows + row;
      const bool valid = r < p_.rows;
      const uint16_t* source = q;
      if (valid) {
        const int token = r / p_.group, head = head_k_ * p_.group + r % p_.group;
        source = q + batch * p_.q_batch_stride + token * p_.q_token_stride + head * p_.q_head_stride + chunk * 8;
      }
      cp_async_16(sq_ + wgmma_tile_offset(row, chunk), source, valid);
    }
  }

  // As Decoder::load_block for the FP8 cache: raw tokens into a raw stage, tokens at or past the
  // piece's end zero-filled without being read.
  __device__ void load_block(const Piece& piece, int block, int stage) {
    int physical = -1;
    if (block < p_.max_blocks) {
      physical = p_.block_table[piece.batch * p_.block_table_batch_stride + block * p_.block_table_column_stride];
    }
    const bool block_ok = physical >= 0 && physical < p_.num_blocks;
    const int valid_tokens = block_ok ? min(kTileRows, piece.token_end - block * kTileRows) : 0;
    const auto* cache = static_cast<const uint8_t*>(p_.k_cache);
    const uint8_t* base = cache + (block_ok ? physical * p_.k_block_stride + head_k_ * p_.k_head_stride : 0);
    const uint32_t destination = smem_address(raw_ + stage * kRawTileBytes);
    for (int task = static_cast<int>(threadIdx.x); task < kTileRows * kFp8TokenChunks; task += kThreads) {
      const int token = task / kFp8TokenChunks, chunk = task % kFp8TokenChunks;
      const bool valid = token < valid_tokens;
      const uint8_t* source = valid ? base + token * p_.k_token_stride + chunk * 16 : cache;
      cp_async_16(destination + token * kFp8TokenBytes + chunk * 16, source, valid);
    }
  }

  // As Decoder::dequantize, into the swizzled 16-bit KV tile. Zero-filled tokens stay 0.
  __device__ void dequantize(const char* raw) {
    for (int task = static_cast<int>(threadIdx.x); task < kTileRows * kChunks; task += kThreads) {
      const int token = task / kChunks, chunk = task % kChunks;
      const char* source = raw + token * kFp8TokenBytes;
      uint4 packed;
      if (chunk < kDimV / 8) {
        const uint2 bytes = *reinterpret_cast<const uint2*>(source + chunk * 8);
        const float scale = *reinterpret_cast<const float*>(source + kDimV + (chunk / 16) * 4);
        uint32_t words[4];
        dequantize_e4m3<kFp16>({bytes.x, bytes.y}, scale, words);
        packed = make_uint4(words[0], words[1], words[2], words[3]);
      } else {
        packed = *reinterpret_cast<const uint4*>(source + kDimV + 16 + (chunk - kDimV / 8) * 16);
        if constexpr (kFp16) bf16x8_to_f16x8(packed);
      }
      *reinterpret_cast<uint4*>(kv_tile_ + wgmma_tile_offset(token, chunk)) = packed;
    }
  }

  // One 64-token block. The thread holds rows 16 warp + g and + 8 (g = lane / 4) of S (tokens
  // 32 warpgroup + 8 n + 2 q4 + {0, 1}) and of O (channels 256 warpgroup + 8 n + 2 q4 + {0, 1}).
  __device__ void compute_block(uint32_t tile, int block_start, const Piece& piece, float (&acc)[32][4],
                                RowState& state) {
    const int g = lane_ >> 2, q4 = lane_ & 3;
    float s[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) s[i] = 0.0f;
    {
      const uint64_t a_desc = gmma_descriptor(sq_, 16, 1024);
      const uint64_t b_desc = gmma_descriptor(tile + warpgroup_ * 32 * 128, 16, 1024);
#pragma unroll
      for (int i = 0; i < 16; ++i) fence_operand(s[i]);
      wgmma_fence();
#pragma unroll
      for (int k = 0; k < kDimQk / 16; ++k) {
        // k-step k: column block k / 4, bytes 32 (k % 4) of its 128-byte rows (the swizzle is applied
        // by the hardware on the address, so advancing the start address selects the k-slice).
        const uint64_t offset = static_cast<uint64_t>(((k / 4) * kColumnBlockBytes + (k % 4) * 32) >> 4);
        wgmma_m64n32k16<kFp16>(s, a_desc + offset, b_desc + offset, 1);
      }
      wgmma_commit();
      wgmma_wait_all();
#pragma unroll
      for (int i = 0; i < 16; ++i) fence_operand(s[i]);
    }

    // Scale and mask: s[4 n + 2 i + e] is row 16 warp + g + 8 i, token 32 warpgroup + 8 n + 2 q4 + e.
    float local_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = m_block_ * kTileRows + warp_ * 16 + g + 8 * i;
      int limit = piece.token_end;
      if (p_.causal) limit = min(limit, piece.seqlen - p_.s_q + r / p_.group + 1);
#pragma unroll
      for (int n = 0; n < 4; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int position = block_start + warpgroup_ * 32 + n * 8 + 2 * q4 + e;
          float& value = s[4 * n + 2 * i + e];
          value = position < limit ? value * p_.scale_log2 : -INFINITY;
          local_max[i] = fmaxf(local_max[i], value);
        }
      }
      local_max[i] = fmaxf(local_max[i], __shfl_xor_sync(0xffffffffu, local_max[i], 1));
      local_max[i] = fmaxf(local_max[i], __shfl_xor_sync(0xffffffffu, local_max[i], 2));
    }
    if (q4 == 0) {
      reduction_[warpgroup_ * kTileRows + warp_ * 16 + g] = local_max[0];
      reduction_[warpgroup_ * kTileRows + warp_ * 16 + g + 8] = local_max[1];
    }
    __syncthreads();  // also: both warpgroups' S is done, so the RoPE block of the tile is free for P

    const uint32_t p_tile = tile + 8 * kColumnBlockBytes;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = warp_ * 16 + g + 8 * i;
      const float other = reduction_[(1 - warpgroup_) * kTileRows + row];
      const float new_max = fmaxf(state.max_log2[i], fmaxf(local_max[i], other));
      // A row with nothing visible yet keeps max -inf; subtracting 0 instead keeps exp2 from NaN.
      const float base = new_max == -INFINITY ? 0.0f : new_max;
      const float rescale = exp2f(state.max_log2[i] - base);
      state.max_log2[i] = new_max;
      float block_sum = 0.0f;
#pragma unroll
      for (int n = 0; n < 4; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& value = s[4 * n + 2 * i + e];
          value = exp2f(value - base);
          block_sum += value;
        }
        const int token = warpgroup_ * 32 + n * 8 + 2 * q4;
        const uint32_t address = p_tile + row * 128 + ((((token >> 3) ^ (row & 7))) << 4) + (token & 7) * 2;
        asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(address),
                     "r"(pack2<kFp16>(s[4 * n + 2 * i], s[4 * n + 2 * i + 1]))
                     : "memory");
      }
      state.sum[i] = state.sum[i] * rescale + block_sum;
#pragma unroll
      for (int n = 0; n < 32; ++n) {
        acc[n][2 * i] *= rescale;
        acc[n][2 * i + 1] *= rescale;
      }
    }
    fence_proxy_async();
    __syncthreads();  // P complete

    const uint64_t p_desc = gmma_descriptor(p_tile, 16, 1024);
    const uint64_t v_desc = gmma_descriptor(tile + warpgroup_ * 4 * kColumnBlockBytes, kColumnBlockBytes, 1024);
#pragma unroll
    for (int n = 0; n < 32; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) fence_operand(acc[n][e]);
    }
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < kTileRows / 16; ++k) {
      // k-step k: P's tokens 16 k .. (bytes 32 k of its rows), V's token rows 16 k .. (2048 k bytes on).
      wgmma_m64n256k16_mn<kFp16>(acc, p_desc + ((32 * k) >> 4), v_desc + ((16 * k * 128) >> 4), 1);
    }
    wgmma_commit();
    wgmma_wait_all();
#pragma unroll
    for (int n = 0; n < 32; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) fence_operand(acc[n][e]);
    }
  }

  // As Decoder::finish_piece with half = warpgroup, row group = warp: every thread writes.
  __device__ void finish_piece(const Piece& piece, float (&acc)[32][4], RowState& state) {
    const int g = lane_ >> 2, q4 = lane_ & 3;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      state.sum[i] += __shfl_xor_sync(0xffffffffu, state.sum[i], 1);
      state.sum[i] += __shfl_xor_sync(0xffffffffu, state.sum[i], 2);
    }
    __syncthreads();  // the last block's readers of the reduction buffer are done
    if (q4 == 0) {
      reduction_[warpgroup_ * kTileRows + warp_ * 16 + g] = state.sum[0];
      reduction_[warpgroup_ * kTileRows + warp_ * 16 + g + 8] = state.sum[1];
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int tile_row = warp_ * 16 + g + 8 * i;
      const int r = m_block_ * kTileRows + tile_row;
      if (r >= p_.rows) continue;
      const float sum = state.sum[i] + reduction_[(1 - warpgroup_) * kTileRows + tile_row];
      const float inverse = sum == 0.0f ? 0.0f : 1.0f / sum;  // an empty row's output is 0
      const int token = r / p_.group, head = head_k_ * p_.group + r % p_.group;
      if (piece.only_piece) {
        uint16_t* out = static_cast<uint16_t*>(p_.out) + piece.batch * p_.out_batch_stride +
                        token * p_.out_token_stride + head * p_.out_head_stride + warpgroup_ * 256 + 2 * q4;
#pragma unroll
        for (int n = 0; n < 32; ++n) {
          *reinterpret_cast<uint32_t*>(out + n * 8) =
              pack2<kFp16>(acc[n][2 * i] * inverse, acc[n][2 * i + 1] * inverse);
        }
        if (warpgroup_ == 0 && q4 == 0) {
          p_.softmax_lse[piece.batch * p_.lse_batch_stride + head * p_.lse_head_stride + token * p_.lse_token_stride] =
              sum == 0.0f ? INFINITY : (log2f(sum) + state.max_log2[i]) / kLog2e;
        }
      } else {
        const int64_t slot_row = (static_cast<int64_t>(piece.slot) * p_.h_kv + head_k_) * p_.rows + r;
        float* out = p_.out_accum + slot_row * kDimV + warpgroup_ * 256 + 2 * q4;
#pragma unroll
        for (int n = 0; n < 32; ++n) {
          *reinterpret_cast<float2*>(out + n * 8) = make_float2(acc[n][2 * i] * inverse, acc[n][2 * i + 1] * inverse);
        }
        if (warpgroup_ == 0 && q4 == 0) {
          p_.lse_accum[slot_row] = sum == 0.0f ? -INFINITY : log2f(sum) + state.max_log2[i];
        }
      }
    }
  }

  const DecodeParams& p_;
  uint32_t sq_ = 0, skv_ = 0;
  char* kv_tile_ = nullptr;
  char* raw_ = nullptr;
  float* reduction_ = nullptr;
  int warpgroup_ = 0, warp_ = 0, lane_ = 0;
  int head_k_ = 0, m_block_ = 0;
};

// d (64 x 64) = (scale_d ? d : 0) + A (64 x 16, K-major) * B (16 x 64, K-major), both from shared memory.
template <bool kFp16>
__device__ __forceinline__ void wgmma_m64n64k16(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  if constexpr (kFp16) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "%32, %33, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
          "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
          "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
          "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "%32, %33, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
          "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
          "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
          "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
  }
}

// Named barriers between the two warpgroups of WgmmaPipelinedDecoder (0 is __syncthreads): both
// warpgroups pass each once per block, in the same order (P_READY, KV_FULL, STAGE_FREE), so none can
// deadlock; the side that only hands data over seldom waits there.
constexpr int kBarrierKvFull = 1;     // warpgroup 1 -> 0: the next KV block has landed
constexpr int kBarrierPReady = 2;     // warpgroup 0 -> 1: P and the row rescale factors of this block
constexpr int kBarrierStageFree = 3;  // warpgroup 0 -> 1: warpgroup 0's O += P V of this block is done
constexpr int kBarrierLoaders = 4;    // warpgroup 1 alone (128 threads): its cp.async copies are tracked
__device__ __forceinline__ void named_barrier_sync(int id) { asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory"); }
// One warpgroup (128 threads) at named barrier `id`.
__device__ __forceinline__ void group_barrier_sync(int id) { asm volatile("bar.sync %0, 128;\n" ::"r"(id) : "memory"); }
// Arrives without waiting (the lean kernel's warpgroup 0 at STAGE_FREE, see WgmmaPipelinedDecoder).
__device__ __forceinline__ void named_barrier_arrive(int id) {
  asm volatile("bar.arrive %0, 256;\n" ::"r"(id) : "memory");
}
__device__ __forceinline__ void loaders_barrier_sync() {
  asm volatile("bar.sync %0, 128;\n" ::"n"(kBarrierLoaders) : "memory");
}

// Box (c0, c1, c2, c3) of the 4-D tensor map at `map` (a __grid_constant__ parameter) into shared
// memory at `dst`, after one arrival on the mbarrier `bar` that adds the box's `bytes`, which the copy
// then completes. Coordinates outside the tensor are filled with zeros and never read. Only where
// `issue` is nonzero: a predicate rather than a branch, so that the calling warpgroup has no divergent
// path near its wgmma (mbarrier_arrive_if likewise).
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const void* map, uint32_t bar, int c0, int c1, int c2,
                                            int c3, uint32_t bytes, int issue) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %8, 0;\n"
      "@p mbarrier.arrive.expect_tx.shared::cta.b64 _, [%2], %7;\n"
      "@p cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], "
      "[%2];\n}\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bytes), "r"(issue)
      : "memory");
}
// As tma_load_4d without the arrival: the copy only completes its bytes on `bar` (whose phase an
// mbarrier_arrive_expect_tx_if announced them to).
__device__ __forceinline__ void tma_load_4d_tx(uint32_t dst, const void* map, uint32_t bar, int c0, int c1, int c2,
                                               int c3, int issue) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %7, 0;\n"
      "@p cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], "
      "[%2];\n}\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(issue)
      : "memory");
}
// Four 8 x 8 matrices of 16-bit elements from the accumulator-layout registers of a warp into shared
// memory (stmatrix): lanes 8 m .. 8 m + 7 give the row addresses of matrix m, register m of each lane
// holds its row lane / 4, columns 2 (lane % 4) and + 1.
__device__ __forceinline__ void stmatrix_x4(uint32_t address, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(address), "r"(r0), "r"(r1),
               "r"(r2), "r"(r3)
               : "memory");
}

// stmatrix with .trans: register m of each lane holds row lane / 4, columns 2 (lane % 4) and + 1 of matrix
// m; memory row c of matrix m (address from lane 8 m + c) receives the matrix's column c.
__device__ __forceinline__ void stmatrix_x4_trans(uint32_t address, uint32_t r0, uint32_t r1, uint32_t r2,
                                                  uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(address), "r"(r0),
               "r"(r1), "r"(r2), "r"(r3)
               : "memory");
}

// d (64 x kN) = (scale_d ? d : 0) + A (64 x 16, registers: the m16n8k16 A fragment of each warp's 16 rows)
// * B (16 x kN, K-major in shared memory); f16 or bf16 operands, fp32 accumulation.
template <int kN, bool kFp16>
__device__ __forceinline__ void wgmma_register_a(float (&d)[kN / 2], const uint32_t (&a)[4], uint64_t desc_b,
                                                 int scale_d) {
  static_assert(kN == 16 || kN == 32, "the transposed FP8 kernel's query rows");
  if constexpr (kN == 16 && kFp16) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7}, "
        "{%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
  } else if constexpr (kN == 16) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, "
        "{%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
  } else if constexpr (kFp16) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, "
        "%12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
          "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, "
        "%12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
          "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
  }
}

// The FP8 cache with few query rows on WGMMA, transposed: the query rows are WGMMA's N side and the
// tokens / value channels its 64-row M side, so nothing is padded: S^T = K Q^T and O^T = V^T P^T. The A
// operands (K, V^T) come from registers, converted exactly from the raw e4m3 bytes
// (cvt.rn.f16x2.e4m3x2) as the mma.sync FP8 kernels do; the B operands (Q^T, P^T) are K-major
// 128-byte-swizzled tiles of kN rows. Fp8TransposedBase holds what both kernels share:
//   Q^T   kN rows (load_q): latent channels as f16 times 2^k_row, k_row per row as in Fp8Decoder, the
//         RoPE channels in q's dtype. The channels are permuted alike in K and Q: for k-step group J
//         (4 k-steps) thread q4 reads the 16-byte chunk 8 (J / 2) + 2 q4 + J % 2 of its two tokens (the 8
//         lanes of a load phase hit 8 distinct bank groups), word s of it is k-step 4 J + s.
//   S^T   of one 64-token block (block_scores): warp w of the warpgroup takes tokens 16 w .. 16 w + 15,
//         thread (g, q4) tokens g and g + 8; the latent channels per 128-channel group into a fresh
//         accumulator (8 k-steps of m64nNk16), then multiplied by the token's scale_g and added; the
//         RoPE channels in q's dtype.
//   V^T   operands (convert_v): m-tile (group, sub), row g + 8 h of warp w is channel 128 group + 32 w
//         + 4 g + 2 sub + h, so a thread reads 4 consecutive bytes of 4 tokens per group and k-step
//         (conflict-free: the tokens' 656-byte stride spreads the quads), pairs the tokens with prmt,
//         converts, and multiplies by the tokens' f16 weights scale_g / group_max_g (Fp8Decoder's units:
//         the accumulators of a group are in units of the largest scale of the group seen so far).
// Accumulator element e of an m64nN tile: M row 8 ((e >> 1) & 1) + g of the warp's 16, column (query
// row) 8 (e >> 2) + 2 q4 + (e & 1).
template <bool kFp16, int kN>
class Fp8TransposedBase {
 protected:
  static_assert(kN == 16 || kN == 32, "16 or 32 query rows per KV head");
  static constexpr int kAcc = kN / 2;           // fp32 registers of an m64nN accumulator per thread
  static constexpr int kRows = kN / 4;          // query rows per thread
  static constexpr int kBlockBytes = kN * 128;  // a column block: kN rows x 64 16-bit elements

  __device__ Fp8TransposedBase(const DecodeParams& p, char* smem, int factor_offset, int barrier_offset, int stages)
      : p_(p) {
    smem_ = smem + (1024 - smem_address(smem) % 1024) % 1024;
    warp_ = static_cast<int>(threadIdx.x) / 32;
    lane_ = static_cast<int>(threadIdx.x) % 32;
    wg_ = warp_ / 4;
    w_ = warp_ % 4;
    head_k_ = static_cast<int>(blockIdx.y);
    m_block_ = static_cast<int>(blockIdx.x);
    row_factor_ = reinterpret_cast<float*>(smem_ + factor_offset);
    barriers_ = smem_address(smem_ + barrier_offset);
    if (threadIdx.x == 0) {
      for (int stage = 0; stage < stages; ++stage) mbarrier_init(barriers_ + 8 * stage, 1);
      fence_mbarrier_init();
    }
    __syncthreads();
  }

  // The number of 64-token blocks of a piece (its first: token_begin / 64).
  __device__ static __forceinline__ int block_count(const Piece& piece) {
    return piece.token_end > piece.token_begin ? (piece.token_end - piece.token_begin + kTileRows - 1) / kTileRows : 0;
  }
  // A piece's empty state: zero accumulators, no running maxima, zero sums and group maxima.
  template <int kTiles>
  __device__ __forceinline__ void start_piece(float (&acc)[kTiles][kAcc], float (&row_max)[kRows],
                                              float (&row_sum)[kRows]) {
#pragma unroll
    for (int i = 0; i < kTiles; ++i) {
#pragma unroll
      for (int e = 0; e < kAcc; ++e) acc[i][e] = 0.0f;
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      row_max[r] = -INFINITY;
      row_sum[r] = 0.0f;
    }
#pragma unroll
    for (int group = 0; group < 4; ++group) group_max_[group] = 0.0f;
  }

  // The running group maxima take in a block's (scales are >= 0): inverse[g] = 1 / the new maximum (0 while
  // it is 0), ratio[g] = old / new (1 while 0), the factor of the accumulators' units.
  // kLazy: a group's unit moves only when the block's largest scale exceeds it kLazyScaleFactor times (or
  // it is 0), so a token's weight scale / unit is at most kLazyScaleFactor; an unmoved unit has a ratio of
  // exactly 1 (the eager rule's __fdividef(m, m) can be 1 - 2^-24, which rescales for nothing).
  template <bool kLazy = false>
  __device__ __forceinline__ void update_group_maxima(const float4& block_max, float (&inverse)[4], float (&ratio)[4]) {
#pragma unroll
    for (int group = 0; group < 4; ++group) {
      const float old_max = group_max_[group];
      const float block = component(block_max, group);
      if constexpr (kLazy) {
        const bool moves = block > old_max * kLazyScaleFactor || (old_max == 0.0f && block > 0.0f);
        const float new_max = moves ? block : old_max;
        group_max_[group] = new_max;
        inverse[group] = new_max > 0.0f ? __fdividef(1.0f, new_max) : 0.0f;
        ratio[group] = moves && old_max > 0.0f ? __fdividef(old_max, new_max) : 1.0f;
      } else {
        const float new_max = fmaxf(old_max, block);
        group_max_[group] = new_max;
        // NOTE: fast divisions (2 ulp): every warp computes the same values, which is all the units need.
        inverse[group] = new_max > 0.0f ? __fdividef(1.0f, new_max) : 0.0f;
        ratio[group] = new_max > 0.0f ? __fdividef(old_max, new_max) : 1.0f;
      }
    }
  }

  __device__ __forceinline__ void wait_stage(int stage) {
    mbarrier_wait(barriers_ + 8 * stage, (phase_bits_ >> stage) & 1u);
    phase_bits_ ^= 1u << stage;
  }
  __device__ int physical_block(const Piece& piece, int block) const {
    return block < p_.max_blocks
               ? p_.block_table[piece.batch * p_.block_table_batch_stride + block * p_.block_table_column_stride]
               : -1;
  }
  // Byte offset of (row, 16-byte chunk) in a K-major tile of kN rows with the 128-byte swizzle.
  __device__ static __forceinline__ uint32_t tile_offset(int row, int chunk) {
    return static_cast<uint32_t>((chunk >> 3) * kBlockBytes + row * 128 + (((chunk & 7) ^ (row & 7)) << 4));
  }
  // The descriptor of k-step ks of a K-major tile at `base` (64 elements per column block). kJoined: built
  // from its lower half plus the k-step's offset (gmma_descriptor_join, as the lean kernel does: one 32-bit
  // add per wgmma instead of a mask, a shift and moves); the same bits.
  template <bool kJoined = true>
  __device__ static __forceinline__ uint64_t k_step_descriptor(uint32_t base, int ks) {
    const uint32_t offset = (ks >> 2) * kBlockBytes + (ks & 3) * 32;
    if constexpr (kJoined) {
      return gmma_descriptor_join(gmma_descriptor_low(base, 0) + (offset >> 4));
    } else {
      return gmma_descriptor(base + offset, 0, 1024);
    }
  }
  __device__ static __forceinline__ float component(const float4& v, int group) {
    return group == 0 ? v.x : group == 1 ? v.y : group == 2 ? v.z : v.w;
  }
  __device__ static __forceinline__ uint32_t word_of(const uint4& v, int index) {
    return index == 0 ? v.x : index == 1 ? v.y : index == 2 ? v.z : v.w;
  }
  // The query row of accumulator element e (thread quad q4) and of this thread's row ri.
  __device__ static __forceinline__ int element_row(int e, int q4) { return 8 * (e >> 2) + 2 * q4 + (e & 1); }
  __device__ static __forceinline__ int thread_row(int ri, int q4) { return 8 * (ri >> 1) + 2 * q4 + (ri & 1); }

  // kN rows of the query into Q^T's tile at smem_ + q_offset (latent channel 16 c + 4 s + 2 hi + e, chunk c
  // of the token: J = 2 (c / 8) + c % 2, q4 = (c % 8) / 2, at k-step 4 J + s, position 2 q4 + 8 hi + e;
  // RoPE channel 8 l + 2 m + e, chunk 33 + l of the token: q4 = l / 2, R = l % 2, at k-step 32 + 2 R +
  // m / 2, position 2 q4 + 8 (m % 2) + e); the row factors 2^-k_row into row_factor_. All 8 warps take
  // part; rows past p.rows are zero.
  __device__ void load_q(int batch, int q_offset) {
    const uint32_t base = smem_address(smem_ + q_offset);
    constexpr int kWarpRows = kN / 8;
    uint4 latents[kWarpRows][2], ropes[kWarpRows];
    load_query_rows(p_, batch, m_block_ * kTileRows + warp_, head_k_, lane_, latents, ropes);
#pragma unroll
    for (int i = 0; i < kWarpRows; ++i) {
      const int row = warp_ + 8 * i;
      float values[16], factor;
      const float up = query_row_scale<kFp16>(latents[i], values, factor);
      if (lane_ == 0) row_factor_[row] = factor;
      const int c = lane_, block = 2 * (c >> 3) + (c & 1), q4 = (c & 7) >> 1;
#pragma unroll
      for (int s = 0; s < 4; ++s) {
#pragma unroll
        for (int hi = 0; hi < 2; ++hi) {
          const __half2 h = __floats2half2_rn(values[4 * s + 2 * hi] * up, values[4 * s + 2 * hi + 1] * up);
          const uint32_t address = base + tile_offset(row, 8 * block + 2 * s + hi) + 4 * q4;
          asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(address), "r"(*reinterpret_cast<const uint32_t*>(&h))
                       : "memory");
        }
      }
      if (lane_ < 8) {
        const int rq4 = lane_ >> 1, half = lane_ & 1;
        const uint32_t rope_words[4] = {ropes[i].x, ropes[i].y, ropes[i].z, ropes[i].w};
#pragma unroll
        for (int m = 0; m < 4; ++m) {
          const int s = 2 * half + m / 2;  // k-step 32 + s: column block 8, step s within it
          const uint32_t address = base + tile_offset(row, 64 + 2 * s + (m & 1)) + 4 * rq4;
          asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(address), "r"(rope_words[m]) : "memory");
        }
      }
    }
    fence_proxy_async();  // Q (st.shared) before the tensor cores read it; a barrier follows
  }

  // S^T of this warpgroup's 64-token block at `block_raw` (raw tokens 656 bytes apart): total = the latent
  // scores (scale_g applied, row factor not), rope = the RoPE scores; scales: this thread's two tokens'.
  template <bool kJoined = true>
  __device__ void block_scores(const char* block_raw, uint32_t q_base, float4 (&scales)[2], float (&total)[kAcc],
                               float (&rope)[kAcc]) {
    const int g = lane_ >> 2, q4 = lane_ & 3;
    const char* token_rows[2] = {block_raw + (16 * w_ + g) * kFp8TokenBytes,
                                 block_raw + (16 * w_ + g + 8) * kFp8TokenBytes};
    scales[0] = *reinterpret_cast<const float4*>(token_rows[0] + kDimV);
    scales[1] = *reinterpret_cast<const float4*>(token_rows[1] + kDimV);
    float part[2][kAcc];
    {
      uint32_t a[4][4];
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        uint4 words[2];
#pragma unroll
        for (int t = 0; t < 2; ++t) {
          words[t] = *reinterpret_cast<const uint4*>(token_rows[t] + (33 + 2 * q4 + half) * 16);
        }
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          uint32_t(&fragment)[4] = a[2 * half + m];
          fragment[0] = word_of(words[0], 2 * m);
          fragment[1] = word_of(words[1], 2 * m);
          fragment[2] = word_of(words[0], 2 * m + 1);
          fragment[3] = word_of(words[1], 2 * m + 1);
          if constexpr (kFp16) {  // the cache's bf16 RoPE against an fp16 query
#pragma unroll
            for (int r = 0; r < 4; ++r) {
              fragment[r] = bf16x2_to_f16x2(fragment[r]);
            }
          }
        }
      }
      wgmma_fence();
#pragma unroll
      for (int s = 0; s < 4; ++s)
        wgmma_register_a<kN, kFp16>(rope, a[s], k_step_descriptor<kJoined>(q_base, 32 + s), s > 0);
    }
    // NOTE: the next group's bytes are loaded before the wait for the previous group, so the loads'
    // latency hides behind the MMAs.
    const auto load_chunk = [&](int jj, uint4(&x)[2]) {
      const int chunk = 8 * (jj >> 1) + 2 * q4 + (jj & 1);
      x[0] = *reinterpret_cast<const uint4*>(token_rows[0] + 16 * chunk);
      x[1] = *reinterpret_cast<const uint4*>(token_rows[1] + 16 * chunk);
    };
    uint4 x[2];
    load_chunk(0, x);
#pragma unroll
    for (int jj = 0; jj < 8; ++jj) {
      uint32_t a[4][4];
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        e4m3x4_to_f16x2x2(word_of(x[0], s), a[s][0], a[s][2]);
        e4m3x4_to_f16x2x2(word_of(x[1], s), a[s][1], a[s][3]);
      }
      wgmma_fence();
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        wgmma_register_a<kN, true>(part[(jj >> 1) & 1], a[s], k_step_descriptor<kJoined>(q_base, 4 * jj + s),
                                   (jj & 1) || s > 0);
      }
      wgmma_commit();
      if (jj + 1 < 8) load_chunk(jj + 1, x);
      if (jj >= 1) {
        wgmma_wait<1>();  // k-step group jj - 1 (with the RoPE steps at jj = 1) has landed
        if ((jj & 1) == 0) fold_group((jj - 1) >> 1, part[((jj - 1) >> 1) & 1], scales, total);
      }
    }
    wgmma_wait<0>();
    fold_group(3, part[1], scales, total);
#pragma unroll
    for (int e = 0; e < kAcc; ++e) fence_operand(rope[e]);
  }

  // total (+)= scale_group(token) * part, once group `group`'s k-steps have landed.
  __device__ static __forceinline__ void fold_group(int group, float (&part)[kAcc], const float4 (&scales)[2],
                                                    float (&total)[kAcc]) {
#pragma unroll
    for (int e = 0; e < kAcc; ++e) {
      fence_operand(part[e]);
      const float scale = component(scales[(e >> 1) & 1], group);
      total[e] = group == 0 ? scale * part[e] : fmaf(scale, part[e], total[e]);
    }
  }

  // The two m-tiles (sub 0 -> even, 1 -> odd) of channel group `group` for the k-step of tokens t0 + {0, 1,
  // 8, 9} (t0 = 16 k + 2 q4) of the tokens at `raw`, times the tokens' f16 weights (`weights`: the group's
  // row of them, indexed by the same tokens) unless it is null (the weights are then on P).
  __device__ __forceinline__ void convert_v(const char* raw, const char* weights, int t0, int group,
                                            uint32_t (&even)[4], uint32_t (&odd)[4]) const {
    uint32_t x[4];
    load_v(raw, t0, group, x);
    convert_v(x, weights, t0, even, odd);
  }
  // The bytes convert_v converts: 4 channels of tokens t0, t0 + 1, t0 + 8, t0 + 9.
  __device__ __forceinline__ void load_v(const char* raw, int t0, int group, uint32_t (&x)[4]) const {
    const char* column = raw + 128 * group + 32 * w_ + 4 * (lane_ >> 2);
#pragma unroll
    for (int t = 0; t < 4; ++t)
      x[t] = *reinterpret_cast<const uint32_t*>(column + (t0 + (t & 1) + 8 * (t >> 1)) * kFp8TokenBytes);
  }
  __device__ __forceinline__ void convert_v(const uint32_t (&x)[4], const char* weights, int t0, uint32_t (&even)[4],
                                            uint32_t (&odd)[4]) const {
    const uint32_t x0 = x[0], x1 = x[1], x8 = x[2], x9 = x[3];
    e4m3x4_to_f16x2x2(__byte_perm(x0, x1, 0x5140), even[0], even[1]);
    e4m3x4_to_f16x2x2(__byte_perm(x0, x1, 0x7362), odd[0], odd[1]);
    e4m3x4_to_f16x2x2(__byte_perm(x8, x9, 0x5140), even[2], even[3]);
    e4m3x4_to_f16x2x2(__byte_perm(x8, x9, 0x7362), odd[2], odd[3]);
    if (weights == nullptr) return;
    const uint32_t w01 = *reinterpret_cast<const uint32_t*>(weights + t0 * 2);
    const uint32_t w89 = *reinterpret_cast<const uint32_t*>(weights + (t0 + 8) * 2);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const uint32_t weight = r < 2 ? w01 : w89;
      const __half2 scaled_even =
          __hmul2(*reinterpret_cast<const __half2*>(&even[r]), *reinterpret_cast<const __half2*>(&weight));
      const __half2 scaled_odd =
          __hmul2(*reinterpret_cast<const __half2*>(&odd[r]), *reinterpret_cast<const __half2*>(&weight));
      even[r] = *reinterpret_cast<const uint32_t*>(&scaled_even);
      odd[r] = *reinterpret_cast<const uint32_t*>(&scaled_odd);
    }
  }

  // Scores of `total` / `rope` (block_scores) scaled into the log2 domain and masked: tokens at sequence
  // position block_start + 16 w + g + 8 t, this thread's, at or past the row's limit get -inf.
  __device__ void scaled_scores(const Piece& piece, int block_start, const float (&total)[kAcc],
                                const float (&rope)[kAcc], float (&s)[kAcc]) const {
    const int g = lane_ >> 2, q4 = lane_ & 3;
#pragma unroll
    for (int e = 0; e < kAcc; ++e) {
      const int row = element_row(e, q4);
      const int r = m_block_ * kTileRows + row;
      int limit = piece.token_end;
      if (p_.causal) limit = min(limit, piece.seqlen - p_.s_q + r / p_.group + 1);
      const int position = block_start + 16 * w_ + g + 8 * ((e >> 1) & 1);
      const float score = fmaf(row_factor_[row], total[e], rope[e]);
      s[e] = position < limit ? score * p_.scale_log2 : -INFINITY;
    }
  }

  // Row ri's running max takes in the block's maximum; its two scores become P = 2^(s - max) and join the
  // row sum (this thread's tokens). Returns the factor of the row's earlier accumulators.
  template <bool kLazy = false>
  __device__ static __forceinline__ float softmax_row(int ri, float block_max, float (&row_max)[kRows],
                                                      float (&row_sum)[kRows], float (&s)[kAcc]) {
    const float new_max = next_running_max(row_max[ri], block_max, kLazy);
    const float base = new_max == -INFINITY ? 0.0f : new_max;
    const float rescale = fast_exp2(row_max[ri] - base);
    row_max[ri] = new_max;
    const int e = 4 * (ri >> 1) + (ri & 1);
    s[e] = fast_exp2(s[e] - base);
    s[e + 2] = fast_exp2(s[e + 2] - base);
    row_sum[ri] = row_sum[ri] * rescale + (s[e] + s[e + 2]);
    return rescale;
  }
  // Accumulator tile i (of channel group i / 2 in group_ratio's numbering) times its rows' rescale and
  // its group's ratio of old to new units; skipped when nothing moved in the warp.
  template <int kTiles, int kGroups>
  __device__ static __forceinline__ void rescale_accumulators(float (&acc)[kTiles][kAcc], const float (&rescale)[kRows],
                                                              const float (&group_ratio)[kGroups], bool moved) {
    if (!__any_sync(0xffffffffu, moved)) return;
#pragma unroll
    for (int i = 0; i < kTiles; ++i) {
#pragma unroll
      for (int e = 0; e < kAcc; ++e) acc[i][e] *= rescale[2 * (e >> 2) + (e & 1)] * group_ratio[i >> 1];
    }
  }

  // The warp's maxima over its 16 tokens: of each of this thread's rows (row_max[ri]), and for lanes < 4 of
  // group `lane`'s scales (the return value; 0 in the other lanes).
  __device__ float warp_maxima(const float (&s)[kAcc], const float4 (&scales)[2], float (&row_max)[kRows]) const {
#pragma unroll
    for (int ri = 0; ri < kRows; ++ri) {
      const int e = 4 * (ri >> 1) + (ri & 1);
      float local = fmaxf(s[e], s[e + 2]);
#pragma unroll
      for (int offset = 4; offset < 32; offset *= 2) local = fmaxf(local, __shfl_xor_sync(0xffffffffu, local, offset));
      row_max[ri] = local;
    }
    float scale_max[4];
#pragma unroll
    for (int group = 0; group < 4; ++group) {
      float m = fmaxf(component(scales[0], group), component(scales[1], group));
#pragma unroll
      for (int offset = 4; offset < 32; offset *= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
      scale_max[group] = m;
    }
    return lane_ < 4 ? component(make_float4(scale_max[0], scale_max[1], scale_max[2], scale_max[3]), lane_) : 0.0f;
  }

  // P (f16) of this thread's tokens into the plane at p_base (kN rows x 128 tokens, two column blocks):
  // matrix (j, t) is tokens token_base + 8 t .. + 7 of the plane x rows 8 j .. 8 j + 7, stored transposed.
  // weight[t]: the factor of the thread's token t (1 for unscaled P).
  __device__ __forceinline__ void store_p(uint32_t p_base, int token_base, const float (&s)[kAcc],
                                          const float (&weight)[2] = {1.0f, 1.0f}) const {
    const int l = lane_ & 7, matrix = lane_ >> 3;
#pragma unroll
    for (int jp = 0; jp < kN / 16; ++jp) {
      const int j = 2 * jp + (matrix >> 1), t = matrix & 1;
      const uint32_t address = p_base + tile_offset(8 * j + l, (token_base >> 3) + t);
      const int e0 = 8 * jp;  // elements of j = 2 jp: e0 .. e0 + 3; of j = 2 jp + 1: e0 + 4 ..
      stmatrix_x4_trans(address, pack2<true>(s[e0] * weight[0], s[e0 + 1] * weight[0]),
                        pack2<true>(s[e0 + 2] * weight[1], s[e0 + 3] * weight[1]),
                        pack2<true>(s[e0 + 4] * weight[0], s[e0 + 5] * weight[0]),
                        pack2<true>(s[e0 + 6] * weight[1], s[e0 + 7] * weight[1]));
    }
  }

  // Writes channels `channel` .. + 3 of row r (a row of this CTA, < p.rows) of the piece: to out, or to the
  // split's fp32 slot.
  __device__ __forceinline__ void write_four(const Piece& piece, int r, int channel, float v0, float v1, float v2,
                                             float v3) const {
    const int token = r / p_.group, head = head_k_ * p_.group + r % p_.group;
    if (piece.only_piece) {
      uint16_t* out = static_cast<uint16_t*>(p_.out) + piece.batch * p_.out_batch_stride + token * p_.out_token_stride +
                      head * p_.out_head_stride;
      *reinterpret_cast<uint2*>(out + channel) = make_uint2(pack2<kFp16>(v0, v1), pack2<kFp16>(v2, v3));
    } else {
      const int64_t slot_row = (static_cast<int64_t>(piece.slot) * p_.h_kv + head_k_) * p_.rows + r;
      *reinterpret_cast<float4*>(p_.out_accum + slot_row * kDimV + channel) = make_float4(v0, v1, v2, v3);
    }
  }
  // The lse of row r from its sum and running max (log2 domain).
  __device__ __forceinline__ void write_lse(const Piece& piece, int r, float sum, float max_log2) const {
    const int token = r / p_.group, head = head_k_ * p_.group + r % p_.group;
    if (piece.only_piece) {
      p_.softmax_lse[piece.batch * p_.lse_batch_stride + head * p_.lse_head_stride + token * p_.lse_token_stride] =
          sum == 0.0f ? INFINITY : (log2f(sum) + max_log2) / kLog2e;
    } else {
      const int64_t slot_row = (static_cast<int64_t>(piece.slot) * p_.h_kv + head_k_) * p_.rows + r;
      p_.lse_accum[slot_row] = sum == 0.0f ? -INFINITY : log2f(sum) + max_log2;
    }
  }

  const DecodeParams& p_;
  char* smem_ = nullptr;  // 1024-byte aligned
  float* row_factor_ = nullptr;
  uint32_t barriers_ = 0;    // one mbarrier per raw stage
  uint32_t phase_bits_ = 0;  // bit s: the parity of raw stage s's next completion
  // The running largest scale per group in the piece (of the CTA's tokens, or in Fp8TransposedWgDecoder
  // of the warpgroup's): the units of the accumulators.
  float group_max_[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  int warp_ = 0, lane_ = 0, wg_ = 0, w_ = 0, head_k_ = 0, m_block_ = 0;
};

// 'wgmma_fp8_transposed' (FF_MLA_FP8=transposed): kN = 16 (<= 16 rows) or 32 (17..32 rows). A round is
// two 64-token blocks in adjacent raw stages (four stages: two rounds in flight, as Fp8Decoder's
// channel-split mode):
//   S^T   warpgroup wg: block wg of the round (block_scores);
//   softmax  the rows' maxima over the 8 warps through shared memory (every thread then holds the same
//         running max of its kN / 4 rows); P (f16, unscaled) into one plane, kN rows x 128 tokens, by
//         stmatrix.trans (the S^T accumulator of 8 tokens x 8 rows is a transposed 8 x 8 matrix); the
//         tokens' weights beside it;
//   O^T   warpgroup wg: channel groups 2 wg and 2 wg + 1 (4 m-tiles of 64 channels) x kN rows over the
//         round's 128 tokens (8 k-steps of convert_v operands).
// Shared memory: raw stages (4 x 41,984 B) | Q^T (9 column blocks of kN x 128 B) | P (2 column
// blocks) | weights | row maxima | scale maxima | row factors | mbarriers; the tiles 1024-byte aligned.
template <bool kFp16, int kN>
class Fp8TransposedDecoder : Fp8TransposedBase<kFp16, kN> {
  using Base = Fp8TransposedBase<kFp16, kN>;
  using Base::component, Base::thread_row;
  using Base::group_max_;
  using Base::kAcc, Base::kRows, Base::kBlockBytes;
  using Base::p_, Base::smem_, Base::row_factor_, Base::warp_, Base::lane_, Base::wg_, Base::w_, Base::m_block_;
  static constexpr int kStages = 4;
  static constexpr int kRoundTokens = 2 * kTileRows;
  static constexpr int kRoundStages = kStages / 2;
  static constexpr int kRawOffset = 0;
  static constexpr int kQOffset = kStages * kRawTileBytes;
  static constexpr int kPOffset = kQOffset + kColumnBlocks * kBlockBytes;
  static constexpr int kWeightOffset = kPOffset + 2 * kBlockBytes;
  static constexpr int kExchangeOffset = kWeightOffset + 4 * kRoundTokens * 2;
  static constexpr int kScaleMaxOffset = kExchangeOffset + kN * 8 * 4;
  static constexpr int kFactorOffset = kScaleMaxOffset + 2 * 4 * 4;
  static constexpr int kBarrierOffset = kFactorOffset + kN * 4;
  static_assert(kQOffset % 1024 == 0 && kPOffset % 1024 == 0 && kBlockBytes % 1024 == 0, "swizzled tiles");

 public:
  static constexpr int kSmemBytes = kBarrierOffset + kStages * 8 + 1024;  // + alignment slack
  static_assert(kSmemBytes <= 232448, "one CTA must fit the 227 KB of an sm_90 SM");

  __device__ Fp8TransposedDecoder(const DecodeParams& p, char* smem)
      : Base(p, smem, kFactorOffset, kBarrierOffset, kStages) {
    block_scale_max_ = reinterpret_cast<int*>(smem_ + kScaleMaxOffset);
  }

  __device__ void run_piece(const Piece& piece) {
    const int num_kv_blocks = Base::block_count(piece);
    const int first_block = piece.token_begin / kTileRows;
    const int end_block = first_block + num_kv_blocks;
    float acc[4][kAcc], row_max[kRows], row_sum[kRows];
    this->start_piece(acc, row_max, row_sum);
    if (threadIdx.x < 8) block_scale_max_[threadIdx.x] = 0;  // visible after the first loop barrier

    const int num_rounds = (num_kv_blocks + 1) / 2;
    const auto round_physical = [&](int round, int b) {
      const int block = first_block + 2 * round + b;
      return block < end_block ? this->physical_block(piece, block) : -1;
    };
    if (num_rounds > 0) {
#pragma unroll
      for (int b = 0; b < 2; ++b) load_block(piece, first_block + b, b, round_physical(0, b));
    }
    int next_physical[2] = {num_rounds > 1 ? round_physical(1, 0) : -1, num_rounds > 1 ? round_physical(1, 1) : -1};
    this->load_q(piece.batch, kQOffset);

    for (int j = 0; j < num_rounds; ++j) {
      const int stage0 = (j % kRoundStages) * 2;
#pragma unroll
      for (int b = 0; b < 2; ++b) this->wait_stage(stage0 + b);
      __syncthreads();  // Q visible to all; every warp is done with round j - 1's stages
      if (j + 1 < num_rounds) {
        const int stage = ((j + 1) % kRoundStages) * 2;
#pragma unroll
        for (int b = 0; b < 2; ++b) load_block(piece, first_block + 2 * (j + 1) + b, stage + b, next_physical[b]);
      }
#pragma unroll
      for (int b = 0; b < 2; ++b) next_physical[b] = j + 2 < num_rounds ? round_physical(j + 2, b) : -1;
      compute_round(smem_ + kRawOffset + stage0 * kRawTileBytes, (first_block + 2 * j) * kTileRows, j & 1, piece, acc,
                    row_max, row_sum);
    }
    finish_piece(piece, acc, row_max, row_sum);
    __syncthreads();  // the next piece reuses every buffer
  }

 private:
  __device__ __forceinline__ void load_block(const Piece& piece, int block, int stage, int physical) {
    load_fp8_block<0>(p_, this->head_k_, piece, block, smem_address(smem_ + kRawOffset + stage * kRawTileBytes),
                      this->barriers_ + 8 * stage, physical);
  }

  // One round: 128 tokens at `raw` (two stages), the first at sequence position round_start.
  __device__ void compute_round(const char* raw, int round_start, int parity, const Piece& piece, float (&acc)[4][kAcc],
                                float (&row_max)[kRows], float (&row_sum)[kRows]) {
    const int g = lane_ >> 2, q4 = lane_ & 3;
    const int token0 = 64 * wg_ + 16 * w_ + g;  // this thread's tokens of the round: token0, token0 + 8
    float4 scales[2];
    float total[kAcc], rope[kAcc], s[kAcc];
    this->block_scores(raw + 64 * wg_ * kFp8TokenBytes, smem_address(smem_ + kQOffset), scales, total, rope);
    this->scaled_scores(piece, round_start + 64 * wg_, total, rope, s);

    // This warp's row maxima into the exchange (row, warp); the groups' largest scales into the block's.
    float* exchange = reinterpret_cast<float*>(smem_ + kExchangeOffset);
    {
      float local[kRows];
      const float scale_max = this->warp_maxima(s, scales, local);
#pragma unroll
      for (int ri = 0; ri < kRows; ++ri) {
        if (g == 0) exchange[thread_row(ri, q4) * 8 + warp_] = local[ri];
      }
      if (lane_ < 4) atomicMax(block_scale_max_ + 4 * parity + lane_, __float_as_int(scale_max));
    }
    __syncthreads();

    float group_ratio[2];  // old / new group_max of groups 2 wg and 2 wg + 1
    float inverse_group_max[4];
    {
      const int4 bits = *reinterpret_cast<const int4*>(block_scale_max_ + 4 * parity);
      float ratio[4];
      this->update_group_maxima(
          make_float4(__int_as_float(bits.x), __int_as_float(bits.y), __int_as_float(bits.z), __int_as_float(bits.w)),
          inverse_group_max, ratio);
      group_ratio[0] = wg_ == 0 ? ratio[0] : ratio[2];  // selected, not indexed
      group_ratio[1] = wg_ == 0 ? ratio[1] : ratio[3];
    }
    float rescale[kRows];
    bool moved = group_ratio[0] != 1.0f || group_ratio[1] != 1.0f;
#pragma unroll
    for (int ri = 0; ri < kRows; ++ri) {
      const int row = thread_row(ri, q4);
      const float4 low = *reinterpret_cast<const float4*>(exchange + row * 8);
      const float4 high = *reinterpret_cast<const float4*>(exchange + row * 8 + 4);
      const float block_max =
          fmaxf(fmaxf(fmaxf(low.x, low.y), fmaxf(low.z, low.w)), fmaxf(fmaxf(high.x, high.y), fmaxf(high.z, high.w)));
      rescale[ri] = softmax_row(ri, block_max, row_max, row_sum, s);
      moved = moved || rescale[ri] != 1.0f;
    }
    rescale_accumulators(acc, rescale, group_ratio, moved);
    const uint32_t p_base = smem_address(smem_ + kPOffset);
    this->store_p(p_base, token0 - g, s);
    if (q4 == 0) {
      auto* weights = reinterpret_cast<__half*>(smem_ + kWeightOffset);
#pragma unroll
      for (int t = 0; t < 2; ++t) {
#pragma unroll
        for (int group = 0; group < 4; ++group) {
          weights[group * kRoundTokens + token0 + 8 * t] =
              __float2half_rn(component(scales[t], group) * inverse_group_max[group]);
        }
      }
    }
    fence_proxy_async();  // P (stmatrix) before the tensor cores read it
    __syncthreads();
    if (threadIdx.x < 4) block_scale_max_[4 * parity + threadIdx.x] = 0;  // for round j + 2

    // O^T: 8 k-steps of 16 tokens, 4 m-tiles each; the next k-step's operands convert while one runs.
    const char* weights = smem_ + kWeightOffset;
    uint32_t a[2][4][4];
    const auto convert = [&](int k, uint32_t(&fragment)[4][4]) {
#pragma unroll
      for (int gg = 0; gg < 2; ++gg) {
        const int group = 2 * wg_ + gg;
        this->convert_v(raw, weights + group * kRoundTokens * 2, 16 * k + 2 * q4, group, fragment[2 * gg],
                        fragment[2 * gg + 1]);
      }
    };
    convert(0, a[0]);
#pragma unroll
    for (int k = 0; k < kRoundTokens / 16; ++k) {
      wgmma_fence();
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        wgmma_register_a<kN, true>(acc[i], a[k & 1][i], Base::k_step_descriptor(p_base, k), 1);
      }
      wgmma_commit();
      if (k + 1 < kRoundTokens / 16) {
        wgmma_wait<1>();  // k-step k - 1 has landed: its operand registers are free
        convert(k + 1, a[(k + 1) & 1]);
      }
    }
    wgmma_wait<0>();
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int e = 0; e < kAcc; ++e) fence_operand(acc[i][e]);
    }
  }

  // The row sums over the 8 warps, then each thread writes its 4 channels per group of each of its rows.
  __device__ void finish_piece(const Piece& piece, float (&acc)[4][kAcc], const float (&row_max)[kRows],
                               const float (&row_sum)[kRows]) {
    const int g = lane_ >> 2, q4 = lane_ & 3;
    float* exchange = reinterpret_cast<float*>(smem_ + kExchangeOffset);
    __syncthreads();  // everyone is done with the exchange's row maxima
#pragma unroll
    for (int ri = 0; ri < kRows; ++ri) {
      float partial = row_sum[ri];
#pragma unroll
      for (int offset = 4; offset < 32; offset *= 2) partial += __shfl_xor_sync(0xffffffffu, partial, offset);
      if (g == 0) exchange[thread_row(ri, q4) * 8 + warp_] = partial;
    }
    __syncthreads();
    // acc of m-tiles 2 gg, 2 gg + 1 is in units of group_max_[2 wg + gg] (selected, not indexed).
    const float units[2] = {wg_ == 0 ? group_max_[0] : group_max_[2], wg_ == 0 ? group_max_[1] : group_max_[3]};
#pragma unroll
    for (int ri = 0; ri < kRows; ++ri) {
      const int row = thread_row(ri, q4);
      const int r = m_block_ * kTileRows + row;
      if (r >= p_.rows) continue;
      const float4 low = *reinterpret_cast<const float4*>(exchange + row * 8);
      const float4 high = *reinterpret_cast<const float4*>(exchange + row * 8 + 4);
      const float sum = (low.x + low.y) + (low.z + low.w) + (high.x + high.y) + (high.z + high.w);
      const float inverse = sum == 0.0f ? 0.0f : 1.0f / sum;
      const int e = 4 * (ri >> 1) + (ri & 1);
#pragma unroll
      for (int gg = 0; gg < 2; ++gg) {
        const float factor = inverse * units[gg];
        // channels 128 (2 wg + gg) + 32 w + 4 g + {0, 1, 2, 3}: (sub, h) = (0, 0), (0, 1), (1, 0), (1, 1)
        this->write_four(piece, r, 128 * (2 * wg_ + gg) + 32 * w_ + 4 * g, acc[2 * gg][e] * factor,
                         acc[2 * gg][e + 2] * factor, acc[2 * gg + 1][e] * factor, acc[2 * gg + 1][e + 2] * factor);
      }
      if (warp_ == 0 && g == 0) this->write_lse(piece, r, sum, row_max[ri]);
    }
  }

  int* block_scale_max_ = nullptr;  // per round parity, the 4 groups' largest scale (int bits, atomicMax)
};

// 'wgmma_fp8_transposed_wg' (FF_MLA_FP8=transposed_wg), <= 16 rows: the two warpgroups run apart. Warpgroup
// wg takes blocks wg, wg + 2, ... of the piece, each into one of its own two raw stages (wg, wg + 2), with
// its own softmax state, group maxima, loads and 128-thread barriers, so one warpgroup's conversions and
// softmax overlap the other's MMAs (in 'wgmma_fp8_transposed' both wait at three CTA barriers per
// round). Per block:
//   S^T   block_scores of its 64 tokens;
//   softmax  row maxima over the warpgroup's 4 warps; P * scale_g / group_max_g into its own 4 planes
//         (16 rows x 64 tokens, one per group g: the weights on P, not on V);
//   O^T   all 512 channels (8 m-tiles: group i / 2, sub i % 2) x 16 rows over the block's 64 tokens
//         (4 k-steps).
// The two states merge once per piece: warpgroup 1 hands its accumulators, row maxima, row sums and
// group maxima to warpgroup 0 through its own raw stage, idle by then.
// Two 128-thread barriers per block: after the row maxima (the warpgroup's next load goes out there, into
// the stage of the block before) and after P. kFlags (each an A/B knob):
//   kTwgEarlyV   the first k-step's V operands are loaded and converted before the first barrier (while the
//                warpgroup's other warps finish S), not after the second (FF_MLA_FP8_EARLY_V=0 turns it off);
//   kTwgLazy     lazy rescaling: a row's running max as in the lazy mma.sync kernel (kLazyMaxLog2), the channel
//                groups' units by kLazyScaleFactor, so most blocks leave the accumulators alone (FF_MLA_LAZY=0);
//   kTwgJoined   wgmma descriptors as 32-bit adds on their lower halves (FF_MLA_FP8_DESCRIPTORS=full turns it off);
//   kTwgOneBarrier  (with kTwgLazy; FF_MLA_FP8_ONE_BARRIER=0 turns it off) one barrier per block where nothing moves:
//                each warp checks whether any of its scores or scales would move a running max or a unit (the lazy
//                thresholds), posts that flag (and only then its maxima), and stores P with the current maxima and
//                units before the barrier; when a flag is up, all redo the softmax from the flagged warps' maxima (the
//                others' are under the thresholds, so the result is that of kTwgLazy, bit for bit), store P again and
//                meet at a second barrier. The P planes alternate between two sets by block parity, since no barrier
//                now separates one block's P stores from the previous block's P V. A block whose stage got zero fills
//                (a tail, a bad block id) is followed by a barrier: nothing else orders those generic stores before the
//                other warps read the stage (the mbarrier covers the bulk copies only).
// Shared memory: raw stages (4) | Q^T | per warpgroup: 4 P planes, row maxima, scale maxima | row factors |
// mbarriers.
constexpr int kTwgEarlyV = 1;
constexpr int kTwgLazy = 2;
constexpr int kTwgJoined = 4;
constexpr int kTwgOneBarrier = 8;
template <bool kFp16, int kFlags = kTwgEarlyV | kTwgLazy | kTwgJoined | kTwgOneBarrier>
class Fp8TransposedWgDecoder : Fp8TransposedBase<kFp16, 16> {
  static constexpr bool kEarlyV = (kFlags & kTwgEarlyV) != 0;
  static constexpr bool kLazy = (kFlags & kTwgLazy) != 0;
  static constexpr bool kJoined = (kFlags & kTwgJoined) != 0;
  static constexpr bool kOneBarrier = (kFlags & kTwgOneBarrier) != 0;
  static_assert(!kOneBarrier || kLazy, "the one-barrier block checks the lazy thresholds");
  static constexpr int kN = 16;
  using Base = Fp8TransposedBase<kFp16, kN>;
  using Base::component, Base::thread_row;
  using Base::group_max_;
  using Base::kAcc, Base::kRows, Base::kBlockBytes;
  using Base::p_, Base::smem_, Base::warp_, Base::lane_, Base::wg_, Base::w_, Base::m_block_;
  static constexpr int kStages = 4;
  static constexpr int kRawOffset = 0;
  static constexpr int kQOffset = kStages * kRawTileBytes;
  static constexpr int kPSets = kOneBarrier ? 2 : 1;                               // by block parity
  static constexpr int kPOffset = kQOffset + kColumnBlocks * kBlockBytes;          // [wg][set][group] planes
  static constexpr int kExchangeOffset = kPOffset + 2 * kPSets * 4 * kBlockBytes;  // [wg][row][warp] floats
  static constexpr int kScaleMaxOffset = kExchangeOffset + 2 * kN * 4 * 4;         // [wg][warp][group] floats
  static constexpr int kFactorOffset = kScaleMaxOffset + 2 * 4 * 4 * 4;
  static constexpr int kFlagsOffset = kFactorOffset + kN * 4;  // [wg][parity][warp] ints (kOneBarrier)
  static constexpr int kBarrierOffset = kFlagsOffset + 2 * 2 * 4 * 4;
  static constexpr int kAccTiles = 8;  // m-tiles of O^T per warpgroup
  // The hand-off of warpgroup 1's state (floats, thread-minor): accumulators, row maxima, row sums, group maxima.
  static constexpr int kHandoffFloats = (kAccTiles * kAcc + 2 * kRows) * 128 + 4;
  static_assert(kHandoffFloats * 4 <= kRawTileBytes, "the hand-off fits in one raw stage");
  static_assert(kQOffset % 1024 == 0 && kPOffset % 1024 == 0, "swizzled tiles");

 public:
  static constexpr int kSmemBytes = kBarrierOffset + kStages * 8 + 1024;  // + alignment slack
  static_assert(kSmemBytes <= 232448, "one CTA must fit the 227 KB of an sm_90 SM");

  __device__ Fp8TransposedWgDecoder(const DecodeParams& p, char* smem)
      : Base(p, smem, kFactorOffset, kBarrierOffset, kStages) {}

  __device__ void run_piece(const Piece& piece) {
    const int num_kv_blocks = Base::block_count(piece);
    const int first_block = piece.token_begin / kTileRows;
    const int my_blocks = num_kv_blocks > wg_ ? (num_kv_blocks - wg_ + 1) / 2 : 0;
    float acc[kAccTiles][kAcc], row_max[kRows], row_sum[kRows];
    this->start_piece(acc, row_max, row_sum);
#pragma unroll
    for (int group = 0; group < 4; ++group) inverse_units_[group] = 0.0f;
    const auto block_of = [&](int i) { return first_block + wg_ + 2 * i; };
    const auto physical_of = [&](int i) { return i < my_blocks ? this->physical_block(piece, block_of(i)) : -1; };
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      if (i < my_blocks) load_block(piece, block_of(i), wg_ + 2 * i, physical_of(i));
    }
    int next_physical = physical_of(2);  // of block i + 1 at block i >= 1
    this->load_q(piece.batch, kQOffset);
    __syncthreads();  // Q (and the zero fills of the first blocks) visible to both warpgroups

    for (int i = 0; i < my_blocks; ++i) {
      const int stage = wg_ + 2 * (i & 1);
      this->wait_stage(stage);
      // Past the first barrier of block i, every warp of the warpgroup is done with block i - 1: its stage
      // takes block i + 1 (blocks 0 and 1 came before the loop).
      bool zero_filled = false;  // block i + 1's stage got generic stores (a tail or a bad block id)
      const auto load_next = [&] {
        if (i >= 1 && i + 1 < my_blocks) {
          zero_filled = load_block(piece, block_of(i + 1), wg_ + 2 * ((i + 1) & 1), next_physical);
        }
        if (i >= 1) next_physical = physical_of(i + 2);
      };
      compute_block(smem_ + kRawOffset + stage * kRawTileBytes, block_of(i) * kTileRows, i & 1, piece, acc, row_max,
                    row_sum, load_next);
      // With one barrier per block, nothing else orders those stores before the other warps read block i + 1
      // (the mbarrier covers the bulk copies only).
      if (kOneBarrier && zero_filled) group_barrier_sync(1 + wg_);
    }
    group_barrier_sync(1 + wg_);  // every warp of the warpgroup is done with its exchange
    finish_piece(piece, acc, row_max, row_sum);
    __syncthreads();  // the next piece reuses every buffer
  }

 private:
  // The warpgroup's 128 threads load; its first warp copies. True when the stage got zero fills (generic stores).
  __device__ __forceinline__ bool load_block(const Piece& piece, int block, int stage, int physical) {
    return load_fp8_block<0>(p_, this->head_k_, piece, block, smem_address(smem_ + kRawOffset + stage * kRawTileBytes),
                             this->barriers_ + 8 * stage, physical, static_cast<int>(threadIdx.x) % 128, 128);
  }

  // This warp's maxima over its 16 tokens: of each row into `exchange` ([row][warp]), of each group's scales
  // into `scale_slots` ([warp][group]).
  __device__ __forceinline__ void post_maxima(const float (&s)[kAcc], const float4 (&scales)[2], float* exchange,
                                              float* scale_slots) const {
    const int g = lane_ >> 2, q4 = lane_ & 3;
    float local[kRows];
    const float scale_max = this->warp_maxima(s, scales, local);
#pragma unroll
    for (int ri = 0; ri < kRows; ++ri) {
      if (g == 0) exchange[thread_row(ri, q4) * 4 + w_] = local[ri];
    }
    if (lane_ < 4) scale_slots[4 * w_ + lane_] = scale_max;
  }

  // Plane g at p_base: P * scale_g / unit_g (f16, <= 1 under the eager rule), the B operand of group g's m-tiles.
  __device__ __forceinline__ void store_planes(uint32_t p_base, const float4 (&scales)[2],
                                               const float (&p)[kAcc]) const {
#pragma unroll
    for (int group = 0; group < 4; ++group) {
      const float weight[2] = {component(scales[0], group) * inverse_units_[group],
                               component(scales[1], group) * inverse_units_[group]};
      this->store_p(p_base + group * kBlockBytes, 16 * w_, p, weight);
    }
  }

  // The block's softmax from the maxima the warps in `from` posted: new units and running maxima (lazy or eager),
  // the accumulators rescaled where anything moved, P (s becomes it) into the planes at p_base.
  __device__ void settle(float (&acc)[kAccTiles][kAcc], float (&row_max)[kRows], float (&row_sum)[kRows],
                         float (&s)[kAcc], const float4 (&scales)[2], const float* exchange, const float* scale_slots,
                         const bool (&from)[4], uint32_t p_base) {
    const int q4 = lane_ & 3;
    float group_ratio[4];
    {
      const float4 none = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      float4 block_max = from[0] ? *reinterpret_cast<const float4*>(scale_slots) : none;
#pragma unroll
      for (int w = 1; w < 4; ++w) {
        const float4 other = from[w] ? *reinterpret_cast<const float4*>(scale_slots + 4 * w) : none;
        block_max = make_float4(fmaxf(block_max.x, other.x), fmaxf(block_max.y, other.y), fmaxf(block_max.z, other.z),
                                fmaxf(block_max.w, other.w));
      }
      this->template update_group_maxima<kLazy>(block_max, inverse_units_, group_ratio);
    }
    float rescale[kRows];
    bool moved = group_ratio[0] != 1.0f || group_ratio[1] != 1.0f || group_ratio[2] != 1.0f || group_ratio[3] != 1.0f;
#pragma unroll
    for (int ri = 0; ri < kRows; ++ri) {
      const float4 maxima = *reinterpret_cast<const float4*>(exchange + thread_row(ri, q4) * 4);
      const float m0 = from[0] ? maxima.x : -INFINITY, m1 = from[1] ? maxima.y : -INFINITY;
      const float m2 = from[2] ? maxima.z : -INFINITY, m3 = from[3] ? maxima.w : -INFINITY;
      const float block_max = fmaxf(fmaxf(m0, m1), fmaxf(m2, m3));
      rescale[ri] = Base::template softmax_row<kLazy>(ri, block_max, row_max, row_sum, s);
      moved = moved || rescale[ri] != 1.0f;
    }
    rescale_accumulators(acc, rescale, group_ratio, moved);
    store_planes(p_base, scales, s);
  }

  // One 64-token block at `raw`, the first token at sequence position block_start; `after_maxima` runs once
  // every warp of the warpgroup has posted its maxima (so is done with the previous block).
  template <class AfterMaxima>
  __device__ void compute_block(const char* raw, int block_start, int parity, const Piece& piece,
                                float (&acc)[kAccTiles][kAcc], float (&row_max)[kRows], float (&row_sum)[kRows],
                                const AfterMaxima& after_maxima) {
    const int g = lane_ >> 2, q4 = lane_ & 3;
    float4 scales[2];
    float total[kAcc], rope[kAcc], s[kAcc];
    this->template block_scores<kJoined>(raw, smem_address(smem_ + kQOffset), scales, total, rope);
    this->scaled_scores(piece, block_start, total, rope, s);

    // The V operands of O^T (below): half-step h's bytes and their conversion into register fragments.
    constexpr int kHalfSteps = 2 * (kTileRows / 16);
    const auto load = [&](int h, uint32_t(&x)[2][4]) {
#pragma unroll
      for (int gg = 0; gg < 2; ++gg) this->load_v(raw, 16 * (h >> 1) + 2 * q4, 2 * (h & 1) + gg, x[gg]);
    };
    const auto convert = [&](int h, const uint32_t(&x)[2][4], uint32_t(&fragment)[4][4]) {
#pragma unroll
      for (int gg = 0; gg < 2; ++gg) {
        this->convert_v(x[gg], nullptr, 16 * (h >> 1) + 2 * q4, fragment[2 * gg], fragment[2 * gg + 1]);
      }
    };
    uint32_t x[2][4], a[2][4][4];
    if constexpr (kEarlyV) {
      load(0, x);
      convert(0, x, a[0]);
    }

    float* exchange = reinterpret_cast<float*>(smem_ + kExchangeOffset) + wg_ * kN * 4;
    float* scale_slots = reinterpret_cast<float*>(smem_ + kScaleMaxOffset) + wg_ * 16;
    const uint32_t p_base =
        smem_address(smem_ + kPOffset + (wg_ * kPSets + (kOneBarrier ? parity : 0)) * 4 * kBlockBytes);
    if constexpr (kOneBarrier) {
      // Would this warp move a running max (a score more than kLazyMaxLog2 over it) or a unit (a scale more
      // than kLazyScaleFactor times it; any positive scale over a unit of 0)?
      bool exceeds = false;
#pragma unroll
      for (int ri = 0; ri < kRows; ++ri) {
        const int e = 4 * (ri >> 1) + (ri & 1);
        const float limit = row_max[ri] + kLazyMaxLog2;
        exceeds = exceeds || s[e] > limit || s[e + 2] > limit;
      }
#pragma unroll
      for (int group = 0; group < 4; ++group) {
        const float limit = group_max_[group] * kLazyScaleFactor;
        exceeds = exceeds || component(scales[0], group) > limit || component(scales[1], group) > limit;
      }
      const bool warp_moves = __any_sync(0xffffffffu, exceeds);
      int* flags = reinterpret_cast<int*>(smem_ + kFlagsOffset) + (2 * wg_ + parity) * 4;
      if (lane_ == 0) flags[w_] = warp_moves ? 1 : 0;
      if (warp_moves) post_maxima(s, scales, exchange, scale_slots);
      // P with the running maxima and units as they are: what kTwgLazy computes for a block that moves nothing.
      float p[kAcc], increment[kRows];
#pragma unroll
      for (int ri = 0; ri < kRows; ++ri) {
        const int e = 4 * (ri >> 1) + (ri & 1);
        const float base = row_max[ri] == -INFINITY ? 0.0f : row_max[ri];
        p[e] = fast_exp2(s[e] - base);
        p[e + 2] = fast_exp2(s[e + 2] - base);
        increment[ri] = p[e] + p[e + 2];
      }
      store_planes(p_base, scales, p);
      fence_proxy_async();  // P (stmatrix) before the tensor cores read it
      group_barrier_sync(1 + wg_);
      after_maxima();
      const int4 posted = *reinterpret_cast<const int4*>(flags);
      if ((posted.x | posted.y | posted.z | posted.w) == 0) {
#pragma unroll
        for (int ri = 0; ri < kRows; ++ri) row_sum[ri] += increment[ri];
      } else {  // the same for the whole warpgroup: redo the softmax from the flagged warps' maxima
        const bool from[4] = {posted.x != 0, posted.y != 0, posted.z != 0, posted.w != 0};
        settle(acc, row_max, row_sum, s, scales, exchange, scale_slots, from, p_base);
        fence_proxy_async();
        group_barrier_sync(1 + wg_);
      }
    } else {
      post_maxima(s, scales, exchange, scale_slots);
      group_barrier_sync(1 + wg_);
      after_maxima();
      const bool from[4] = {true, true, true, true};
      settle(acc, row_max, row_sum, s, scales, exchange, scale_slots, from, p_base);
      fence_proxy_async();  // P (stmatrix) before the tensor cores read it
      group_barrier_sync(1 + wg_);
    }

    // O^T: 4 k-steps of 16 tokens in half-steps of two groups (4 m-tiles); the next half-step's bytes are
    // loaded before the wait for the previous one and converted after it, while this one runs.
    if constexpr (!kEarlyV) {
      load(0, x);
      convert(0, x, a[0]);
    }
#pragma unroll
    for (int h = 0; h < kHalfSteps; ++h) {
      wgmma_fence();
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        const int i = 4 * (h & 1) + m;  // m-tile: group i / 2
        wgmma_register_a<kN, true>(
            acc[i], a[h & 1][m], Base::template k_step_descriptor<kJoined>(p_base + (i >> 1) * kBlockBytes, h >> 1), 1);
      }
      wgmma_commit();
      if (h + 1 < kHalfSteps) {
        load(h + 1, x);
        wgmma_wait<1>();  // half-step h - 1 has landed: its operand registers are free
        convert(h + 1, x, a[(h + 1) & 1]);
      }
    }
    wgmma_wait<0>();
#pragma unroll
    for (int i = 0; i < kAccTiles; ++i) {
#pragma unroll
      for (int e = 0; e < kAcc; ++e) fence_operand(acc[i][e]);
    }
  }

  // Each warpgroup's row sums over its 4 warps; warpgroup 1's state to warpgroup 0, which merges (m = max
  // of the two maxima, each side weighted by 2^(m_side - m), the accumulators back in absolute units from
  // each side's group maxima) and writes the rows.
  __device__ void finish_piece(const Piece& piece, float (&acc)[kAccTiles][kAcc], const float (&row_max)[kRows],
                               const float (&row_sum)[kRows]) {
    const int g = lane_ >> 2, q4 = lane_ & 3;
    float* exchange = reinterpret_cast<float*>(smem_ + kExchangeOffset) + wg_ * kN * 4;
#pragma unroll
    for (int ri = 0; ri < kRows; ++ri) {
      float partial = row_sum[ri];
#pragma unroll
      for (int offset = 4; offset < 32; offset *= 2) partial += __shfl_xor_sync(0xffffffffu, partial, offset);
      if (g == 0) exchange[thread_row(ri, q4) * 4 + w_] = partial;
    }
    group_barrier_sync(1 + wg_);
    float sums[kRows];
#pragma unroll
    for (int ri = 0; ri < kRows; ++ri) {
      const float4 parts = *reinterpret_cast<const float4*>(exchange + thread_row(ri, q4) * 4);
      sums[ri] = (parts.x + parts.y) + (parts.z + parts.w);
    }
    float* handoff = reinterpret_cast<float*>(smem_ + kRawOffset + 1 * kRawTileBytes);  // warpgroup 1's stage
    const int t = static_cast<int>(threadIdx.x) % 128;
    if (wg_ == 1) {
#pragma unroll
      for (int i = 0; i < kAccTiles; ++i) {
#pragma unroll
        for (int e = 0; e < kAcc; ++e) handoff[(i * kAcc + e) * 128 + t] = acc[i][e];
      }
#pragma unroll
      for (int ri = 0; ri < kRows; ++ri) {
        handoff[(kAccTiles * kAcc + ri) * 128 + t] = row_max[ri];
        handoff[(kAccTiles * kAcc + kRows + ri) * 128 + t] = sums[ri];
      }
      if (t < 4)
        handoff[(kAccTiles * kAcc + 2 * kRows) * 128 + t] =
            component(make_float4(group_max_[0], group_max_[1], group_max_[2], group_max_[3]), t);
      fence_proxy_async();  // these plain stores come before the next piece's bulk copies into the stage
    }
    __syncthreads();
    if (wg_ != 0) return;
    const float* their_units = handoff + (kAccTiles * kAcc + 2 * kRows) * 128;
    float mine[kRows], theirs[kRows], merged_max[kRows], merged_sum[kRows];
#pragma unroll
    for (int ri = 0; ri < kRows; ++ri) {
      const float their_max = handoff[(kAccTiles * kAcc + ri) * 128 + t];
      const float their_sum = handoff[(kAccTiles * kAcc + kRows + ri) * 128 + t];
      const float new_max = fmaxf(row_max[ri], their_max);
      const float base = new_max == -INFINITY ? 0.0f : new_max;
      mine[ri] = exp2f(row_max[ri] - base);
      theirs[ri] = exp2f(their_max - base);
      merged_max[ri] = new_max;
      merged_sum[ri] = sums[ri] * mine[ri] + their_sum * theirs[ri];
    }
#pragma unroll
    for (int i = 0; i < kAccTiles; ++i) {
      const float my_units = group_max_[i >> 1], other_units = their_units[i >> 1];
#pragma unroll
      for (int e = 0; e < kAcc; ++e) {
        const int ri = 2 * (e >> 2) + (e & 1);
        acc[i][e] = acc[i][e] * my_units * mine[ri] + handoff[(i * kAcc + e) * 128 + t] * other_units * theirs[ri];
      }
    }
#pragma unroll
    for (int ri = 0; ri < kRows; ++ri) {
      const int r = m_block_ * kTileRows + thread_row(ri, q4);
      if (r >= p_.rows) continue;
      const float inverse = merged_sum[ri] == 0.0f ? 0.0f : 1.0f / merged_sum[ri];
      const int e = 4 * (ri >> 1) + (ri & 1);
#pragma unroll
      for (int group = 0; group < 4; ++group) {
        // channels 128 group + 32 w + 4 g + {0, 1, 2, 3}: (sub, h) = (0, 0), (0, 1), (1, 0), (1, 1)
        this->write_four(piece, r, 128 * group + 32 * w_ + 4 * g, acc[2 * group][e] * inverse,
                         acc[2 * group][e + 2] * inverse, acc[2 * group + 1][e] * inverse,
                         acc[2 * group + 1][e + 2] * inverse);
      }
      if (w_ == 0 && g == 0) this->write_lse(piece, r, merged_sum[ri], merged_max[ri]);
    }
  }

  float inverse_units_[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // 1 / group_max_ (0 while it is 0), as P's weights use it
};

// bf16 / fp16 cache with >= 64 rows: the two warpgroups take different roles so that the tensor cores
// run one warpgroup's MMAs while the other does its softmax or loads (FlashMLA's split):
//   warpgroup 0  S = Q K^T for all 64 tokens (wgmma m64n64k16, A and B from shared memory); the online
//                softmax on whole rows (no exchange); P (bf16 / fp16) into the RoPE block of the KV tile,
//                the rows' rescale factors beside it; its own O[:, 0:256] += P V (wgmma m64n256k16, both
//                operands from shared memory); then it issues the next block's S right behind that.
//   warpgroup 1  loads (cp.async: Q, every KV block), and O[:, 256:512] += P V with P from shared memory
//                after rescaling by warpgroup 0's factors.
// Per block j (KV stage j % 2), kTma = false (cp.async loads by all of warpgroup 1):
//   wg0: softmax(j) -> P, factors | P_READY | P V(j) | KV_FULL; S(j+1) | P V(j) done | STAGE_FREE |
//        S(j+1) done
//   wg1: P_READY | rescale, P V(j), done | block j+1 landed | KV_FULL | STAGE_FREE | load block j+2
//        into stage j % 2
// There block j+2 is only requested once block j+1 has landed (wg1 waits for it before STAGE_FREE), so
// at most one 72 KB block per SM is in flight: the loads are latency-bound (docs/mla.md).
// kTma = true: full blocks come by TMA (9 boxes of 64 tokens x 64 channels, 128-byte swizzle, issued
// by one thread of wg1), each 64-channel column block with its own mbarrier per stage, so that S(j)
// starts on the first column blocks while the others land; a block that ends inside the piece (the
// tail of a sequence) and Q keep cp.async with zero-fill (nothing past the length is read), tracked on
// the same mbarriers (cp.async.mbarrier.arrive). Stage j % 2 is handed back as soon as both P V(j) are
// done, before anything waits for block j+1, so block j+2 is requested while j+1 is still in flight:
//   wg0: softmax(j) -> P, factors | P_READY | P V(j), done | STAGE_FREE | S(j+1), waiting per column
//        block | S(j+1) done
//   wg1: P_READY | rescale, P V(j), done | STAGE_FREE | request block j+2 into stage j % 2
// kSkip (measurement probes, FF_MLA_PROBE_SKIP; results meaningless): bit 1 leaves out the S MMAs, 2
// the P V MMAs, 4 the softmax arithmetic, so that timings tell where a block's time goes.
// kLean (with kTma; kernel name "wgmma_tma_lean", FF_MLA_SCHEDULE=lean): the same schedule with a
// shorter chain per block, after ncu's per-instruction stall samples of the kTma kernel (H200, h_q 128,
// 8K: warpgroup 0 spent 35% of its loop in the softmax, ~790 instructions per warp and block, a quarter
// of its samples there waiting for instruction fetch; 37% in S, where each wgmma cost ~10 instructions
// of 64-bit descriptor arithmetic; 15% waiting at STAGE_FREE for warpgroup 1's P V):
//   - warpgroup 0 only arrives at STAGE_FREE (bar.arrive; warpgroup 1 still waits there), so it issues
//     S(j+1) as soon as its own P V(j) is done. Safe: its next arrival there follows P_READY(j+1), a
//     bar.sync that warpgroup 1 reaches only after its STAGE_FREE(j);
//   - the softmax masks only where some row of the tile can see a token at or past its limit (the
//     block a piece ends inside, the causal tail; a CTA-uniform test), and uses ex2.approx.ftz;
//   - wgmma descriptors as 32-bit adds on their lower halves (gmma_descriptor_low / _join).
// kLeanFlags (with kLean; docs/mla.md has the measurements), refinements of the lean block chain:
//   kLeanGroupedBarriers  one mbarrier per 3 column blocks (3 per stage): S waits 3 times per block
//                         instead of 9; one arrival per mbarrier announces its 3 boxes' bytes;
//   kLeanFoldedSoftmax    the row max on raw scores and softmax_scale * log2(e) folded into the FFMA
//                         before each 2^x (32 multiplies fewer per thread and block; needs a scale > 0,
//                         the dispatch checks it), P stored with 4 stmatrix.x4 instead of 16 st.shared;
//   kLeanEarlyS           warpgroup 0 issues S(j + 1) right behind its P V(j) and arrives at STAGE_FREE
//                         once P V(j) is done (wgmma.wait_group 1), so the tensor cores get S(j + 1)
//                         without the gap of a wait, an arrival and the first mbarrier wait;
//   kLeanFp8Cache         the FP8 cache (656-byte tokens): warpgroup 1 fills a freed stage by copying the
//                         raw bytes into it (cp.async) and dequantizing them in place (e4m3 x scale,
//                         rounded to q's dtype; RoPE copied) into the 16-bit tile TMA would have loaded;
//                         it does so while warpgroup 0 runs S and the softmax of the other stage, time
//                         warpgroup 1 otherwise spends waiting. The rest of the kernel is unchanged.
//   kLeanFp8Prefetch      (with kLeanFp8Cache) pairs 0 and 1 of block j + 2 (raw bytes and scales) are
//                         loaded into warpgroup 1's registers while its P V(j) runs, a block ahead, and
//                         converted from there once the stage is freed, while the copies of pairs 2 and 3
//                         travel: the load latency leaves the critical path for half of each block;
//   kLeanFp8PrefetchOne   (with kLeanFp8Prefetch) pair 0 only (fewer registers held; the default: 3.5-9.5 %
//                         faster than no prefetch, while two pairs spill and were not faster).
constexpr int kLeanGroupedBarriers = 1;
constexpr int kLeanFoldedSoftmax = 2;
constexpr int kLeanEarlyS = 4;
constexpr int kLeanFp8Cache = 8;
constexpr int kLeanFp8Prefetch = 16;
constexpr int kLeanFp8PrefetchOne = 32;

template <bool kFp16, int kSkip = 0, bool kTma = false, bool kLean = false, int kLeanFlags = 0>
class WgmmaPipelinedDecoder {
  static_assert(!kLean || (kTma && kSkip == 0), "the lean kernel loads by TMA and has no probes");
  static_assert(kLeanFlags == 0 || kLean, "the flags refine the lean kernel");
  static constexpr bool kGroupedBarriers = (kLeanFlags & kLeanGroupedBarriers) != 0;
  static constexpr bool kFoldedSoftmax = (kLeanFlags & kLeanFoldedSoftmax) != 0;
  static constexpr bool kEarlyS = (kLeanFlags & kLeanEarlyS) != 0;
  static constexpr bool kFp8Cache = (kLeanFlags & kLeanFp8Cache) != 0;
  static constexpr bool kFp8Prefetch = (kLeanFlags & kLeanFp8Prefetch) != 0;
  static_assert(!kFp8Prefetch || kFp8Cache, "the prefetch is part of the FP8 fill");
  // Pairs of column blocks a fill takes from registers (kFp8Prefetch).
  static constexpr int kPrefetchPairs = !kFp8Prefetch ? 0 : (kLeanFlags & kLeanFp8PrefetchOne) != 0 ? 1 : 2;
  static_assert(!kFp8Cache || kTma, "the FP8 fill completes the TMA kernel's mbarriers");
  // Column blocks per mbarrier, mbarriers per stage.
  static constexpr int kColumnsPerBarrier = kGroupedBarriers ? 3 : 1;
  static constexpr int kBarriersPerStage = kColumnBlocks / kColumnsPerBarrier;
  static_assert(kBarriersPerStage * kColumnsPerBarrier == kColumnBlocks, "whole groups of column blocks");
  static constexpr int kQOffset = 0;
  static constexpr int kKvOffset = kTileBytes;
  static constexpr int kFactorOffset = 3 * kTileBytes;                     // (2 parities, 64 rows) floats
  static constexpr int kFinishOffset = kFactorOffset + 2 * kTileRows * 4;  // 64 row inverses
  static constexpr int kBarrierOffset = kFinishOffset + kTileRows * 4;     // (2 stages, 9 column blocks) mbarriers
  // kFp8Cache: (2 stages, 64 tokens) x 4 fp32 scales.
  static constexpr int kFp8ScalesOffset = kBarrierOffset + 2 * kColumnBlocks * 8;
  static constexpr int kFp8ScalesBytes = kFp8Cache ? 2 * kTileRows * 16 : 0;

 public:
  static constexpr int kSmemBytes = kFp8ScalesOffset + kFp8ScalesBytes + 1024;  // + alignment slack
  static_assert(kSmemBytes <= 232448, "one CTA must fit the 227 KB of an sm_90 SM");

  __device__ WgmmaPipelinedDecoder(const DecodeParams& p, char* smem) : p_(p) {
    const uint32_t base = smem_address(smem);
    const uint32_t pad = (1024 - base % 1024) % 1024;
    char* aligned = smem + pad;
    sq_ = base + pad + kQOffset;
    skv_ = base + pad + kKvOffset;
    factor_ = reinterpret_cast<float*>(aligned + kFactorOffset);
    finish_ = reinterpret_cast<float*>(aligned + kFinishOffset);
    const int thread = static_cast<int>(threadIdx.x);
    warpgroup_ = thread / 128;
    warp_ = (thread / 32) % 4;
    lane_ = thread % 32;
    head_k_ = static_cast<int>(blockIdx.y);
    m_block_ = static_cast<int>(blockIdx.x);
    full_ = base + pad + kBarrierOffset;
    scales_ = base + pad + kFp8ScalesOffset;
    if constexpr (kTma) {
      if (thread == 0) {
        for (int i = 0; i < 2 * kBarriersPerStage; ++i) mbarrier_init(full_ + 8 * i, 1);
        fence_mbarrier_init();
      }
      __syncthreads();
    }
  }

  __device__ void run_piece(const Piece& piece) {
    const int num_kv_blocks =
        piece.token_end > piece.token_begin ? (piece.token_end - piece.token_begin + kTileRows - 1) / kTileRows : 0;
    const int first_block = piece.token_begin / kTileRows;
    float acc[32][4];
#pragma unroll
    for (int n = 0; n < 32; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    RowState state;  // warpgroup 0: whole rows, reduced over the quad
    state.max_log2[0] = state.max_log2[1] = -INFINITY;
    state.sum[0] = state.sum[1] = 0.0f;
    if (warpgroup_ == 0) {
      run_softmax_warpgroup(piece, num_kv_blocks, first_block, acc, state);
    } else {
      run_load_warpgroup(piece, num_kv_blocks, first_block, acc);
    }
    finish_piece(piece, acc, state);
    __syncthreads();  // the next piece reuses every buffer
  }

 private:
  __device__ void run_softmax_warpgroup(const Piece& piece, int num_kv_blocks, int first_block, float (&acc)[32][4],
                                        RowState& state) {
    if (num_kv_blocks == 0) return;
    float s[32];
    if constexpr (!kTma) named_barrier_sync(kBarrierKvFull);  // Q and block 0
    issue_s(skv_, s, 0);
    wgmma_commit();
    wgmma_wait<0>();
    fence_s(s);
    // NOTE: the last block is peeled off so that no wgmma is issued under a branch while others are in
    // flight (ptxas then serializes every wgmma of the kernel, warning C7520).
    for (int j = 0; j + 1 < num_kv_blocks; ++j) softmax_step<true>(piece, j, first_block, s, acc, state);
    softmax_step<false>(piece, num_kv_blocks - 1, first_block, s, acc, state);
  }

  // Block j: softmax(j), hand P to warpgroup 1, O[:, 0:256] += P V(j) and, when kNext, S(j + 1) behind it.
  template <bool kNext>
  __device__ __forceinline__ void softmax_step(const Piece& piece, int j, int first_block, float (&s)[32],
                                               float (&acc)[32][4], RowState& state) {
    const uint32_t tile = skv_ + (j & 1) * kTileBytes;
    if constexpr (kFoldedSoftmax) {
      softmax_folded(s, tile, (first_block + j) * kTileRows, j & 1, piece, acc, state);
    } else if constexpr (kLean) {
      softmax_lean(s, tile, (first_block + j) * kTileRows, j & 1, piece, acc, state);
    } else {
      softmax(s, tile, (first_block + j) * kTileRows, j & 1, piece, acc, state);
    }
    fence_proxy_async();
    named_barrier_sync(kBarrierPReady);
    fence_acc(acc);
    wgmma_fence();
    // NOTE: P is read back from shared memory rather than kept as register A fragments: 16 registers
    // fewer in the warpgroup that also holds S and O (the kernel is at 255).
    issue_pv(tile, 0, acc);
    wgmma_commit();
    if constexpr (kEarlyS && kNext) {
      // S(j + 1) queues on the tensor cores right behind P V(j) (no gap while this warpgroup waits);
      // STAGE_FREE once P V(j) is done (groups complete in order), which may now follow the wait for
      // block j + 1's column blocks.
      issue_s(skv_ + ((j + 1) & 1) * kTileBytes, s, (j + 1) & 1);
      wgmma_commit();
      wgmma_wait<1>();
      fence_acc(acc);
      named_barrier_arrive(kBarrierStageFree);
      wgmma_wait<0>();
      fence_s(s);
    } else if constexpr (kTma) {
      // Hand stage j % 2 back before waiting for block j + 1, so that block j + 2 is requested now.
      wgmma_wait<0>();
      fence_acc(acc);
      if constexpr (kLean) {
        named_barrier_arrive(kBarrierStageFree);
      } else {
        named_barrier_sync(kBarrierStageFree);
      }
      if constexpr (kNext) {
        issue_s(skv_ + ((j + 1) & 1) * kTileBytes, s, (j + 1) & 1);
        wgmma_commit();
        wgmma_wait<0>();
        fence_s(s);
      }
    } else {
      if constexpr (kNext) {
        named_barrier_sync(kBarrierKvFull);
        issue_s(skv_ + ((j + 1) & 1) * kTileBytes, s, (j + 1) & 1);
        wgmma_commit();
        wgmma_wait<1>();  // P V(j) done (groups complete in order); S(j + 1) may run on
      } else {
        wgmma_wait<0>();
      }
      fence_acc(acc);
      named_barrier_sync(kBarrierStageFree);
      if constexpr (kNext) {
        wgmma_wait<0>();
        fence_s(s);
      }
    }
  }

  __device__ void run_load_warpgroup(const Piece& piece, int num_kv_blocks, int first_block, float (&acc)[32][4]) {
    if constexpr (kTma) {
      if (num_kv_blocks == 0) return;  // nothing to load (Q is not needed either)
      // Prologue: Q + block 0 into stage 0, block 1 into stage 1.
      const int last = first_block + num_kv_blocks - 1;
      const int id0 = block_id(piece, first_block, last), id1 = block_id(piece, first_block + 1, last);
      fill_stage(piece, first_block, 0, true, id0);
      if (num_kv_blocks > 1) fill_stage(piece, first_block + 1, 1, false, id1);
      for (int j = 0; j + 1 < num_kv_blocks; ++j) load_step<true>(piece, j, num_kv_blocks, first_block, acc);
      load_step<false>(piece, num_kv_blocks - 1, num_kv_blocks, first_block, acc);
      return;
    }
    // Prologue: group 0 = Q + block 0, group 1 = block 1 (either may be empty).
    load_q(piece.batch);
    if (num_kv_blocks > 0) load_block(piece, first_block, 0);
    cp_async_commit();
    if (num_kv_blocks > 1) load_block(piece, first_block + 1, 1);
    cp_async_commit();
    if (num_kv_blocks == 0) {
      cp_async_wait<0>();
      return;
    }
    cp_async_wait<1>();
    fence_proxy_async();
    named_barrier_sync(kBarrierKvFull);
    // As in the softmax warpgroup, the last block is peeled off (no wgmma under a branch).
    for (int j = 0; j + 1 < num_kv_blocks; ++j) load_step<true>(piece, j, num_kv_blocks, first_block, acc);
    load_step<false>(piece, num_kv_blocks - 1, num_kv_blocks, first_block, acc);
    cp_async_wait<0>();
  }

  // Block j: O[:, 256:512] += P V(j) after warpgroup 0's rescale factors; when kNext, block j + 1 handed
  // over while it runs; then block j + 2 loaded into the freed stage.
  template <bool kNext>
  __device__ __forceinline__ void load_step(const Piece& piece, int j, int num_kv_blocks, int first_block,
                                            float (&acc)[32][4]) {
    const uint32_t tile = skv_ + (j & 1) * kTileBytes;
    // Block j + 2 is looked up before the waits, so its request goes out right at STAGE_FREE (every
    // thread reads the same entry: no divergent path).
    const int next_id = kTma ? block_id(piece, first_block + j + 2, first_block + num_kv_blocks - 1) : -1;
    named_barrier_sync(kBarrierPReady);
    if constexpr (kTma) {
      // V(j)'s column blocks 4..7 (landed: warpgroup 0 waited for them before S(j)); this thread's own
      // wait makes them visible to its MMAs, the fence covers a tail block that came by cp.async.
      const uint32_t parity = (phase_bits_ >> (j & 1)) & 1;
#pragma unroll
      for (int b = 4 / kColumnsPerBarrier; b <= 7 / kColumnsPerBarrier; ++b) mbarrier_wait(full_bar(j & 1, b), parity);
      phase_bits_ ^= 1u << (j & 1);
      fence_proxy_async();
    }
    const int g = lane_ >> 2;
    const float factor0 = factor_[(j & 1) * kTileRows + warp_ * 16 + g];
    const float factor1 = factor_[(j & 1) * kTileRows + warp_ * 16 + g + 8];
    rescale_rows(acc, factor0, factor1);
    fence_acc(acc);
    wgmma_fence();
    issue_pv(tile, 4, acc);
    wgmma_commit();
    [[maybe_unused]] Fp8Prefetch prefetched;
    if constexpr (kFp8Prefetch) {
      // Block j + 2's first pairs start their way into registers now, a block before their stage is free.
      if (j + 2 < num_kv_blocks) prefetched = fp8_prefetch(piece, first_block + j + 2, next_id);
    }
    if constexpr (kFp8Cache) {
      // Block j + 1's fill (begun at STAGE_FREE(j - 1); blocks 0 and 1 are filled whole up front) ends
      // while this P V runs on the tensor cores.
      if (j >= 1 && j + 1 < num_kv_blocks)
        fp8_fill_end((j + 1) & 1, kFp8Prefetch ? kPrefetchPairs : p_.fp8_early_pairs);
    }
    if constexpr (kTma) {
      wgmma_wait<0>();
      fence_acc(acc);
      named_barrier_sync(kBarrierStageFree);  // both warpgroups are done with stage j % 2
      if (j + 2 < num_kv_blocks) {
        if constexpr (kFp8Prefetch) {
          fp8_fill_begin_prefetched(piece, first_block + j + 2, j & 1, next_id, prefetched);
        } else if constexpr (kFp8Cache) {
          fp8_fill_begin(piece, first_block + j + 2, j & 1, false, next_id, p_.fp8_early_pairs);
        } else {
          fill_stage(piece, first_block + j + 2, j & 1, false, next_id, p_.probe_half_loads && (m_block_ & 1) != 0);
        }
      }
      return;
    }
    if constexpr (kNext) {
      cp_async_wait<0>();  // block j + 1, the only group in flight
      fence_proxy_async();
      named_barrier_sync(kBarrierKvFull);
    }
    wgmma_wait<0>();
    fence_acc(acc);
    named_barrier_sync(kBarrierStageFree);  // both warpgroups are done with stage j % 2
    if (j + 2 < num_kv_blocks) load_block(piece, first_block + j + 2, j & 1);
    cp_async_commit();
  }

  // mbarrier b of stage `stage` (kTma); it tracks column blocks kColumnsPerBarrier b and the next
  // kColumnsPerBarrier - 1.
  __device__ __forceinline__ uint32_t full_bar(int stage, int b) const {
    return full_ + 8 * (stage * kBarriersPerStage + b);
  }

  // The cache block holding logical block `block` of the piece's sequence (an id outside the cache
  // makes TMA fill zeros: the tensor map spans exactly the cache). Past the piece's last block (where
  // the caller discards the value) it reads the last block's column, never a column past the length.
  __device__ __forceinline__ int block_id(const Piece& piece, int block, int last_block) const {
    const int column = min(block, last_block);
    return p_.block_table[piece.batch * p_.block_table_batch_stride + column * p_.block_table_column_stride];
  }

  // kTma: requests logical block `block` (cache block `id`, read by the loader thread) into `stage`,
  // with Q first when `with_q`. Called by all of warpgroup 1 in step (it contains a barrier of its
  // threads). A full block: 9 TMA boxes, each completing its column block's mbarrier. A block that the
  // piece ends inside: cp.async with zero-fill past the end (load_block), like Q; every thread then
  // ties its copies to all 9 mbarriers, and only after all have done so does the loader thread arrive,
  // so no phase can complete before every copy has landed.
  // reuse (the FF_MLA_PROBE_HALF_LOADS probe): a full block is not requested; the loader only arrives, so
  // the stage's previous block is computed on again.
  __device__ void fill_stage(const Piece& piece, int block, int stage, bool with_q, int id, bool reuse = false) {
    if constexpr (kFp8Cache) {
      fill_stage_fp8(piece, block, stage, with_q, id);
      return;
    }
    const bool full = piece.token_end - block * kTileRows >= kTileRows;
    if (with_q) load_q(piece.batch);
    if (!full) load_block(piece, block, stage);
    if (with_q || !full) {
#pragma unroll
      for (int b = 0; b < kBarriersPerStage; ++b) cp_async_mbarrier_arrive(full_bar(stage, b));
      loaders_barrier_sync();
    }
    const int loader = threadIdx.x == 128;  // the first thread of warpgroup 1 issues the TMA copies
    const int issue = loader & (full & !reuse);
    const int arrive_only = loader & (!full | reuse);
    const uint32_t destination = skv_ + stage * kTileBytes;
    if constexpr (kGroupedBarriers) {
      // One arrival per mbarrier announces its 3 boxes' bytes; the boxes complete them.
#pragma unroll
      for (int b = 0; b < kBarriersPerStage; ++b) {
        mbarrier_arrive_expect_tx_if(full_bar(stage, b), kColumnsPerBarrier * kColumnBlockBytes, issue);
#pragma unroll
        for (int c = b * kColumnsPerBarrier; c < (b + 1) * kColumnsPerBarrier; ++c) {
          tma_load_4d_tx(destination + c * kColumnBlockBytes, p_.k_tensor_map, full_bar(stage, b), c * 64, head_k_, 0,
                         id, issue);
        }
        mbarrier_arrive_if(full_bar(stage, b), arrive_only);
      }
    } else {
#pragma unroll
      for (int c = 0; c < kColumnBlocks; ++c) {
        tma_load_4d(destination + c * kColumnBlockBytes, p_.k_tensor_map, full_bar(stage, c), c * 64, head_k_, 0, id,
                    kColumnBlockBytes, issue);
        mbarrier_arrive_if(full_bar(stage, c), arrive_only);
      }
    }
  }

  // kFp8Cache: fill_stage for the FP8 cache, by all of warpgroup 1 (Q by cp.async when `with_q`): the
  // whole fill at once (blocks 0 and 1 of a piece). Later blocks are filled in two parts around the
  // other warpgroup's work: fp8_fill_begin right after STAGE_FREE frees the stage, fp8_fill_end while
  // this warpgroup's P V of the block before runs (load_step).
  __device__ void fill_stage_fp8(const Piece& piece, int block, int stage, bool with_q, int id) {
    fp8_fill_begin(piece, block, stage, with_q, id, 4);
    fp8_fill_end(stage, 4);
  }

  // Tokens at or past the piece's end, and every token of a block id outside the cache, become zeros
  // without being read. Thread (warp w, lane l) takes tokens 8 w + l % 8 and 8 (w + 4) + l % 8, and of
  // each the 16 latent channels at 16 (l / 8) of every 64-channel column block, and 8 RoPE channels at
  // 8 (l / 8) and 32 + 8 (l / 8).
  // 1. Every byte of the block comes by cp.async at once (no registers held while they travel): the raw
  //    latent bytes of column block c into the upper half of the stage's column block c (64 tokens x 64
  //    bytes, chunk q of token t at q ^ ((t >> 1) & 3), so a quarter warp reads 8 distinct bank groups),
  //    the 4 scales of each token into the stage's scale area, the RoPE channels straight into their
  //    place in the tile (column block 8, swizzled; fp16 q: converted in place at the end).
  // 2. The first `pairs` pairs of column blocks are converted (fp8_convert_pair).
  __device__ void fp8_fill_begin(const Piece& piece, int block, int stage, bool with_q, int id, int pairs) {
    if (with_q) load_q(piece.batch);
    fp8_copy_raw(piece, block, stage, id, 0);
    cp_async_wait<0>();
    loaders_barrier_sync();  // every thread's copies have landed
#pragma unroll
    for (int pair = 0; pair < 4; ++pair) {
      if (pair < pairs) fp8_convert_pair(stage, pair);
    }
  }
  // Step 1 for column blocks first_column.. (those not prefetched), the scales and the RoPE channels:
  // issued and committed, not waited for.
  __device__ __forceinline__ void fp8_copy_raw(const Piece& piece, int block, int stage, int id, int first_column) {
    const bool block_ok = id >= 0 && id < p_.num_blocks;
    const int valid_tokens = block_ok ? min(kTileRows, piece.token_end - block * kTileRows) : 0;
    const auto* cache = static_cast<const uint8_t*>(p_.k_cache);
    const uint8_t* base =
        cache + (block_ok ? static_cast<int64_t>(id) * p_.k_block_stride + head_k_ * p_.k_head_stride : 0);
    const uint32_t tile = skv_ + stage * kTileBytes;
    const int quarter = lane_ >> 3;
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      const int token = fp8_token(t);
      const bool valid = token < valid_tokens;
      const uint8_t* row = valid ? base + static_cast<int64_t>(token) * p_.k_token_stride : cache;
#pragma unroll
      for (int c = first_column; c < 8; ++c) {
        cp_async_16(fp8_raw_address(tile, c, token), row + c * 64 + quarter * 16, valid);
      }
      if (quarter == 0) cp_async_16(scales_ + stage * kTileRows * 16 + token * 16, row + kDimV, valid);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int chunk = 4 * h + quarter;
        cp_async_16(tile + 8 * kColumnBlockBytes + token * 128 + ((chunk ^ (token & 7)) << 4),
                    row + kDimV + 16 + chunk * 16, valid);
      }
    }
    cp_async_commit();
  }

  // kFp8Prefetch: this thread's raw chunks of column blocks 0 .. 2 kPrefetchPairs - 1 and their scales, per
  // token t of fp8_token(t); zeros for tokens past the piece's end and blocks outside the cache (as the fill).
  struct Fp8Prefetch {
    uint4 raw[2][2 * (kPrefetchPairs > 0 ? kPrefetchPairs : 1)];
    float2 scale[2];
  };
  __device__ __forceinline__ Fp8Prefetch fp8_prefetch(const Piece& piece, int block, int id) const {
    const bool block_ok = id >= 0 && id < p_.num_blocks;
    const int valid_tokens = block_ok ? min(kTileRows, piece.token_end - block * kTileRows) : 0;
    const uint8_t* base = static_cast<const uint8_t*>(p_.k_cache) +
                          (block_ok ? static_cast<int64_t>(id) * p_.k_block_stride + head_k_ * p_.k_head_stride : 0);
    Fp8Prefetch out;
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      const int token = fp8_token(t);
      const bool valid = token < valid_tokens;
      const uint8_t* row = base + static_cast<int64_t>(valid ? token : 0) * p_.k_token_stride;
#pragma unroll
      for (int c = 0; c < 2 * kPrefetchPairs; ++c) {
        out.raw[t][c] = valid ? ld_global_nc_u32x4(row + c * 64 + (lane_ >> 3) * 16) : make_uint4(0, 0, 0, 0);
      }
      out.scale[t] = valid ? ld_global_nc_f32x2(row + kDimV) : make_float2(0.0f, 0.0f);
    }
    return out;
  }

  // kFp8Prefetch: fp8_fill_begin for a block whose first kPrefetchPairs pairs came ahead (fp8_prefetch): the
  // copies of the other pairs, the scales and the RoPE channels go out, the prefetched pairs are converted
  // from the registers into their column blocks while those travel (none of their raw bytes touches shared
  // memory), then the wait; the other pairs follow in fp8_fill_end.
  __device__ void fp8_fill_begin_prefetched(const Piece& piece, int block, int stage, int id,
                                            const Fp8Prefetch& prefetched) {
    fp8_copy_raw(piece, block, stage, id, 2 * kPrefetchPairs);
#pragma unroll
    for (int pair = 0; pair < kPrefetchPairs; ++pair) {
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        const float scale = pair == 0 ? prefetched.scale[t].x : prefetched.scale[t].y;
#pragma unroll
        for (int k = 0; k < 2; ++k) fp8_store_chunk(stage, 2 * pair + k, t, prefetched.raw[t][2 * pair + k], scale);
      }
    }
    cp_async_wait<0>();
    loaders_barrier_sync();  // every thread's copies have landed
  }

  // 3. Pairs `first_pair`.. of column blocks converted; fp16 q: the RoPE channels converted in place.
  // 4. Fence (generic -> async proxy: the MMAs read the tile), warpgroup 1's barrier, one arrival per
  //    mbarrier by the loader thread.
  __device__ void fp8_fill_end(int stage, int first_pair) {
#pragma unroll
    for (int pair = 0; pair < 4; ++pair) {
      if (pair >= first_pair) fp8_convert_pair(stage, pair);
    }
    if constexpr (kFp16) {
      // RoPE bf16 -> fp16, each thread on the chunks it copied (its own cp.async, waited for).
      const uint32_t tile = skv_ + stage * kTileBytes;
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        const int token = fp8_token(t);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int chunk = 4 * h + (lane_ >> 3);
          const uint32_t address = tile + 8 * kColumnBlockBytes + token * 128 + ((chunk ^ (token & 7)) << 4);
          uint4 packed = lds_u32x4(address);
          bf16x8_to_f16x8(packed);
          st_shared_v4(address, packed.x, packed.y, packed.z, packed.w);
        }
      }
    }
    fence_proxy_async();
    loaders_barrier_sync();
    const int loader = threadIdx.x == 128;
#pragma unroll
    for (int b = 0; b < kBarriersPerStage; ++b) mbarrier_arrive_if(full_bar(stage, b), loader);
  }

  // Column blocks 2 pair and 2 pair + 1 (one 128-channel scale group) of the stage: each thread reads
  // its 4 raw chunks and 2 scales, warpgroup 1's barrier (every raw byte of the pair read: the stores
  // overwrite them), then each converts and stores its chunks (fp8_store_chunk).
  __device__ __forceinline__ void fp8_convert_pair(int stage, int pair) {
    const uint32_t tile = skv_ + stage * kTileBytes;
    uint4 raw[2][2];
    float scale[2];
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      const int token = fp8_token(t);
      scale[t] = __uint_as_float(lds_u32(scales_ + stage * kTileRows * 16 + token * 16 + pair * 4));
#pragma unroll
      for (int k = 0; k < 2; ++k) raw[t][k] = lds_u32x4(fp8_raw_address(tile, 2 * pair + k, token));
    }
    loaders_barrier_sync();
#pragma unroll
    for (int t = 0; t < 2; ++t) {
#pragma unroll
      for (int k = 0; k < 2; ++k) fp8_store_chunk(stage, 2 * pair + k, t, raw[t][k], scale[t]);
    }
  }
  // This thread's 16 raw bytes of column block `column` and token fp8_token(t), converted (e4m3 x scale,
  // rounded to q's dtype) and stored as 2 x 16 bytes, where a quarter warp's 8 rows of one chunk lie in 8
  // distinct bank groups.
  __device__ __forceinline__ void fp8_store_chunk(int stage, int column, int t, const uint4& raw, float scale) {
    const int token = fp8_token(t);
    uint32_t words[8];
    dequantize_e4m3<kFp16>({raw.x, raw.y, raw.z, raw.w}, scale, words);
    const uint32_t row_address = skv_ + stage * kTileBytes + column * kColumnBlockBytes + token * 128;
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int chunk = 2 * (lane_ >> 3) + c;
      st_shared_v4(row_address + ((chunk ^ (token & 7)) << 4), words[4 * c], words[4 * c + 1], words[4 * c + 2],
                   words[4 * c + 3]);
    }
  }
  // Token t (0, 1) of this thread in an FP8 fill, and where its raw chunk of column block c lies.
  __device__ __forceinline__ int fp8_token(int t) const { return (warp_ + 4 * t) * 8 + (lane_ & 7); }
  __device__ __forceinline__ uint32_t fp8_raw_address(uint32_t tile, int c, int token) const {
    return tile + c * kColumnBlockBytes + kColumnBlockBytes / 2 + token * 64 +
           (((lane_ >> 3) ^ ((token >> 1) & 3)) << 4);
  }

  // acc rows g (factor0) and g + 8 (factor1) of the warp; skipped when the whole warp's factors are 1
  // (the running maxima did not move, the common case after the first blocks).
  __device__ __forceinline__ void rescale_rows(float (&acc)[32][4], float factor0, float factor1) {
    if (__all_sync(0xffffffffu, factor0 == 1.0f && factor1 == 1.0f)) return;
#pragma unroll
    for (int n = 0; n < 32; ++n) {
      acc[n][0] *= factor0;
      acc[n][1] *= factor0;
      acc[n][2] *= factor1;
      acc[n][3] *= factor1;
    }
  }

  // O[:, 64 first_column_block ..] += P V of the tile at `tile`: 4 k-steps of 16 tokens, P from the
  // RoPE block, V = column blocks first_column_block .. + 3 read MN-major. Issued, not committed.
  __device__ __forceinline__ void issue_pv(uint32_t tile, int first_column_block, float (&acc)[32][4]) {
    if constexpr ((kSkip & 2) != 0) return;
    const uint32_t p_address = tile + 8 * kColumnBlockBytes;
    const uint32_t v_address = tile + first_column_block * kColumnBlockBytes;
    if constexpr (kLean) {
      const uint32_t p_low = gmma_descriptor_low(p_address, 16);
      const uint32_t v_low = gmma_descriptor_low(v_address, kColumnBlockBytes);
#pragma unroll
      for (int k = 0; k < kTileRows / 16; ++k) {
        wgmma_m64n256k16_mn<kFp16>(acc, gmma_descriptor_join(p_low + ((32 * k) >> 4)),
                                   gmma_descriptor_join(v_low + ((16 * k * 128) >> 4)), 1);
      }
    } else {
      const uint64_t p_desc = gmma_descriptor(p_address, 16, 1024);
      const uint64_t v_desc = gmma_descriptor(v_address, kColumnBlockBytes, 1024);
#pragma unroll
      for (int k = 0; k < kTileRows / 16; ++k) {
        wgmma_m64n256k16_mn<kFp16>(acc, p_desc + ((32 * k) >> 4), v_desc + ((16 * k * 128) >> 4), 1);
      }
    }
  }

  // S = Q K^T of the KV tile at `tile` (stage `stage`, all 64 tokens), issued, not waited for. kTma:
  // the 4 k-steps of each 64-channel column block go out as soon as that block has landed.
  __device__ void issue_s(uint32_t tile, float (&s)[32], int stage) {
    [[maybe_unused]] const uint64_t a_desc = gmma_descriptor(sq_, 16, 1024);
    [[maybe_unused]] const uint64_t b_desc = gmma_descriptor(tile, 16, 1024);
    [[maybe_unused]] const uint32_t a_low = gmma_descriptor_low(sq_, 16);
    [[maybe_unused]] const uint32_t b_low = gmma_descriptor_low(tile, 16);
    const uint32_t parity = (phase_bits_ >> stage) & 1;
    fence_s(s);
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < kDimQk / 16; ++k) {
      if constexpr (kTma) {
        if (k % (4 * kColumnsPerBarrier) == 0) {
          mbarrier_wait(full_bar(stage, k / (4 * kColumnsPerBarrier)), parity);
          // Q and a tail block come by cp.async (generic proxy); column block 0's phase completes only
          // after every such copy of the stage has landed.
          if (k == 0) fence_proxy_async();
        }
      }
      if constexpr (kLean) {
        const uint32_t offset = static_cast<uint32_t>(((k / 4) * kColumnBlockBytes + (k % 4) * 32) >> 4);
        wgmma_m64n64k16<kFp16>(s, gmma_descriptor_join(a_low + offset), gmma_descriptor_join(b_low + offset),
                               k > 0 ? 1 : 0);
      } else if constexpr ((kSkip & 1) == 0) {
        const uint64_t offset = static_cast<uint64_t>(((k / 4) * kColumnBlockBytes + (k % 4) * 32) >> 4);
        wgmma_m64n64k16<kFp16>(s, a_desc + offset, b_desc + offset, k > 0 ? 1 : 0);
      }
    }
    if constexpr (kTma) phase_bits_ ^= 1u << stage;
  }

  // Scale, mask, online softmax of S (s[4 n + 2 i + e]: row 16 warp + g + 8 i, token 8 n + 2 q4 + e);
  // P into registers (A fragments) and into the RoPE block of the tile, the rescale factors into
  // factor_[parity]; warpgroup 0's accumulators rescaled.
  __device__ void softmax(float (&s)[32], uint32_t tile, int block_start, int parity, const Piece& piece,
                          float (&acc)[32][4], RowState& state) {
    const int g = lane_ >> 2, q4 = lane_ & 3;
    const uint32_t p_tile = tile + 8 * kColumnBlockBytes;
    float rescale[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = warp_ * 16 + g + 8 * i;
      const int r = m_block_ * kTileRows + row;
      int limit = piece.token_end;
      if (p_.causal) limit = min(limit, piece.seqlen - p_.s_q + r / p_.group + 1);
      rescale[i] = 1.0f;
      if constexpr ((kSkip & 4) == 0) {
        float local_max = -INFINITY;
#pragma unroll
        for (int n = 0; n < 8; ++n) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int position = block_start + n * 8 + 2 * q4 + e;
            float& value = s[4 * n + 2 * i + e];
            value = position < limit ? value * p_.scale_log2 : -INFINITY;
            local_max = fmaxf(local_max, value);
          }
        }
        local_max = fmaxf(local_max, __shfl_xor_sync(0xffffffffu, local_max, 1));
        local_max = fmaxf(local_max, __shfl_xor_sync(0xffffffffu, local_max, 2));
        const float new_max = fmaxf(state.max_log2[i], local_max);
        const float base = new_max == -INFINITY ? 0.0f : new_max;  // nothing visible yet: no NaN
        rescale[i] = exp2f(state.max_log2[i] - base);
        state.max_log2[i] = new_max;
        float block_sum = 0.0f;
#pragma unroll
        for (int n = 0; n < 8; ++n) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& value = s[4 * n + 2 * i + e];
            value = exp2f(value - base);
            block_sum += value;
          }
        }
        state.sum[i] = state.sum[i] * rescale[i] + block_sum;  // partial over the quad's tokens
      }
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        const uint32_t word = pack2<kFp16>(s[4 * n + 2 * i], s[4 * n + 2 * i + 1]);
        const int token = n * 8 + 2 * q4;
        const uint32_t address = p_tile + row * 128 + (((token >> 3) ^ (row & 7)) << 4) + (token & 7) * 2;
        asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(address), "r"(word) : "memory");
      }
      if (q4 == 0) factor_[parity * kTileRows + row] = rescale[i];
    }
    rescale_rows(acc, rescale[0], rescale[1]);
  }

  // kLean: softmax() with fewer instructions per block (same results up to ex2.approx rounding): the
  // scores are scaled, then masked only where the CTA-uniform test says some row of the tile can see a
  // token at or past its limit (the block a piece ends inside; with causal masking, the blocks past
  // the limit of the tile's first row), so full blocks skip the 32 compares and selects; masked
  // scores (NaN from an unused slot included) become -inf. ex2.approx.ftz for 2^x (a factor whose max
  // did not move is exactly 1, so warps whose rows' maxima all stayed skip the rescale).
  __device__ void softmax_lean(float (&s)[32], uint32_t tile, int block_start, int parity, const Piece& piece,
                               float (&acc)[32][4], RowState& state) {
    const int g = lane_ >> 2, q4 = lane_ & 3;
    const uint32_t p_tile = tile + 8 * kColumnBlockBytes;
    int tile_limit = piece.token_end;  // the smallest limit of the tile's rows: its first row's
    if (p_.causal) tile_limit = min(tile_limit, piece.seqlen - p_.s_q + (m_block_ * kTileRows) / p_.group + 1);
    const float scale = p_.scale_log2;
#pragma unroll
    for (int v = 0; v < 32; ++v) s[v] *= scale;
    if (block_start + kTileRows > tile_limit) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int r = m_block_ * kTileRows + warp_ * 16 + g + 8 * i;
        int limit = piece.token_end;
        if (p_.causal) limit = min(limit, piece.seqlen - p_.s_q + r / p_.group + 1);
        const int visible = limit - block_start - 2 * q4;  // token 8 n + 2 q4 + e is seen iff 8 n + e < visible
#pragma unroll
        for (int n = 0; n < 8; ++n) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            if (n * 8 + e >= visible) s[4 * n + 2 * i + e] = -INFINITY;
          }
        }
      }
    }
    float rescale[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = warp_ * 16 + g + 8 * i;
      float local_max = -INFINITY;
#pragma unroll
      for (int n = 0; n < 8; ++n) local_max = fmaxf(local_max, fmaxf(s[4 * n + 2 * i], s[4 * n + 2 * i + 1]));
      local_max = fmaxf(local_max, __shfl_xor_sync(0xffffffffu, local_max, 1));
      local_max = fmaxf(local_max, __shfl_xor_sync(0xffffffffu, local_max, 2));
      const float new_max = fmaxf(state.max_log2[i], local_max);
      const float base = new_max == -INFINITY ? 0.0f : new_max;  // nothing visible yet: no NaN
      rescale[i] = new_max == state.max_log2[i] ? 1.0f : fast_exp2(state.max_log2[i] - base);
      state.max_log2[i] = new_max;
      float block_sum = 0.0f;
#pragma unroll
      for (int n = 0; n < 8; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& value = s[4 * n + 2 * i + e];
          value = fast_exp2(value - base);
          block_sum += value;
        }
      }
      state.sum[i] = state.sum[i] * rescale[i] + block_sum;  // partial over the quad's tokens
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        const uint32_t word = pack2<kFp16>(s[4 * n + 2 * i], s[4 * n + 2 * i + 1]);
        const uint32_t address = p_tile + row * 128 + ((n ^ (row & 7)) << 4) + q4 * 4;
        asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(address), "r"(word) : "memory");
      }
      if (q4 == 0) factor_[parity * kTileRows + row] = rescale[i];
    }
    rescale_rows(acc, rescale[0], rescale[1]);
  }

  // kFoldedSoftmax: softmax_lean() with the scale folded in (scale_log2 > 0, so the max of the scaled
  // scores is the scaled max of the raw ones, exactly: rounding is monotonic): masked raw scores become
  // -inf, the row max is taken on raw scores and scaled once, and each 2^x takes fma(s, scale, -max);
  // P goes to shared memory by stmatrix (matrix m of a lane's x4: rows 8 (m & 1) .. of its warp's 16,
  // tokens 8 (n + (m >> 1)) .., i.e. 16-byte chunk n + (m >> 1) of the row, swizzled by row & 7).
  __device__ void softmax_folded(float (&s)[32], uint32_t tile, int block_start, int parity, const Piece& piece,
                                 float (&acc)[32][4], RowState& state) {
    const int g = lane_ >> 2, q4 = lane_ & 3;
    const uint32_t p_tile = tile + 8 * kColumnBlockBytes;
    int tile_limit = piece.token_end;  // the smallest limit of the tile's rows: its first row's
    if (p_.causal) tile_limit = min(tile_limit, piece.seqlen - p_.s_q + (m_block_ * kTileRows) / p_.group + 1);
    if (block_start + kTileRows > tile_limit) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int r = m_block_ * kTileRows + warp_ * 16 + g + 8 * i;
        int limit = piece.token_end;
        if (p_.causal) limit = min(limit, piece.seqlen - p_.s_q + r / p_.group + 1);
        const int visible = limit - block_start - 2 * q4;  // token 8 n + 2 q4 + e is seen iff 8 n + e < visible
#pragma unroll
        for (int n = 0; n < 8; ++n) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            if (n * 8 + e >= visible) s[4 * n + 2 * i + e] = -INFINITY;
          }
        }
      }
    }
    const float scale = p_.scale_log2;
    float rescale[2];
    uint32_t words[2][8];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float local_max = -INFINITY;
#pragma unroll
      for (int n = 0; n < 8; ++n) local_max = fmaxf(local_max, fmaxf(s[4 * n + 2 * i], s[4 * n + 2 * i + 1]));
      local_max = fmaxf(local_max, __shfl_xor_sync(0xffffffffu, local_max, 1));
      local_max = fmaxf(local_max, __shfl_xor_sync(0xffffffffu, local_max, 2));
      const float new_max = fmaxf(state.max_log2[i], local_max * scale);  // -inf stays -inf
      const float base = new_max == -INFINITY ? 0.0f : new_max;            // nothing visible yet: no NaN
      rescale[i] = new_max == state.max_log2[i] ? 1.0f : fast_exp2(state.max_log2[i] - base);
      state.max_log2[i] = new_max;
      const float neg_base = -base;
      float block_sum = 0.0f;
#pragma unroll
      for (int n = 0; n < 8; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& value = s[4 * n + 2 * i + e];
          value = fast_exp2(fmaf(value, scale, neg_base));  // a masked -inf gives 0
          block_sum += value;
        }
        words[i][n] = pack2<kFp16>(s[4 * n + 2 * i], s[4 * n + 2 * i + 1]);
      }
      state.sum[i] = state.sum[i] * rescale[i] + block_sum;  // partial over the quad's tokens
      if (q4 == 0) factor_[parity * kTileRows + warp_ * 16 + g + 8 * i] = rescale[i];
    }
    // Lane l addresses row warp * 16 + 8 ((l >> 3) & 1) + (l & 7) of matrix l >> 3, at chunk
    // n + (l >> 4) (n even), swizzled: (n + (l >> 4)) ^ (l & 7) = n ^ ((l >> 4) ^ (l & 7)). The row's
    // offset has its low 7 bits zero (1024-aligned tile), so the chunk goes in by XOR.
    const int row = warp_ * 16 + 8 * ((lane_ >> 3) & 1) + (lane_ & 7);
    const uint32_t row_address = (p_tile + row * 128) | ((((lane_ >> 4) ^ lane_) & 7) << 4);
#pragma unroll
    for (int n = 0; n < 8; n += 2) {
      stmatrix_x4(row_address ^ (n << 4), words[0][n], words[1][n], words[0][n + 1], words[1][n + 1]);
    }
    rescale_rows(acc, rescale[0], rescale[1]);
  }

  __device__ void load_q(int batch) {
    const auto* q = static_cast<const uint16_t*>(p_.q);
    for (int task = static_cast<int>(threadIdx.x) - 128; task < kTileRows * kChunks; task += 128) {
      const int row = task / kChunks, chunk = task % kChunks;
      const int r = m_block_ * kTileRows + row;
      const bool valid = r < p_.rows;
      const uint16_t* source = q;
      if (valid) {
        const int token = r / p_.group, head = head_k_ * p_.group + r % p_.group;
        source = q + batch * p_.q_batch_stride + token * p_.q_token_stride + head * p_.q_head_stride + chunk * 8;
      }
      cp_async_16(sq_ + wgmma_tile_offset(row, chunk), source, valid);
    }
  }

  // As Decoder::load_block (tokens at or past the piece's end zero-filled, not read), by warpgroup 1.
  __device__ void load_block(const Piece& piece, int block, int stage) {
    int physical = -1;
    if (block < p_.max_blocks) {
      physical = p_.block_table[piece.batch * p_.block_table_batch_stride + block * p_.block_table_column_stride];
    }
    const bool block_ok = physical >= 0 && physical < p_.num_blocks;
    const int valid_tokens = block_ok ? min(kTileRows, piece.token_end - block * kTileRows) : 0;
    const auto* cache = static_cast<const uint16_t*>(p_.k_cache);
    const uint16_t* base = cache + (block_ok ? physical * p_.k_block_stride + head_k_ * p_.k_head_stride : 0);
    const uint32_t destination = skv_ + stage * kTileBytes;
    for (int task = static_cast<int>(threadIdx.x) - 128; task < kTileRows * kChunks; task += 128) {
      const int token = task / kChunks, chunk = task % kChunks;
      const bool valid = token < valid_tokens;
      const uint16_t* source = valid ? base + token * p_.k_token_stride + chunk * 8 : cache;
      cp_async_16(destination + wgmma_tile_offset(token, chunk), source, valid);
    }
  }

  // Warpgroup 0 holds the rows' max and partial sums: it writes the lse and hands 1 / sum to
  // warpgroup 1 through shared memory; each warpgroup writes its 256 channels.
  __device__ void finish_piece(const Piece& piece, float (&acc)[32][4], RowState& state) {
    const int g = lane_ >> 2, q4 = lane_ & 3;
    if (warpgroup_ == 0) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        state.sum[i] += __shfl_xor_sync(0xffffffffu, state.sum[i], 1);
        state.sum[i] += __shfl_xor_sync(0xffffffffu, state.sum[i], 2);
        if (q4 == 0) finish_[warp_ * 16 + g + 8 * i] = state.sum[i] == 0.0f ? 0.0f : 1.0f / state.sum[i];
      }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int tile_row = warp_ * 16 + g + 8 * i;
      const int r = m_block_ * kTileRows + tile_row;
      if (r >= p_.rows) continue;
      const float inverse = finish_[tile_row];  // an empty row's output is 0
      const int token = r / p_.group, head = head_k_ * p_.group + r % p_.group;
      if (piece.only_piece) {
        uint16_t* out = static_cast<uint16_t*>(p_.out) + piece.batch * p_.out_batch_stride +
                        token * p_.out_token_stride + head * p_.out_head_stride + warpgroup_ * 256 + 2 * q4;
#pragma unroll
        for (int n = 0; n < 32; ++n) {
          *reinterpret_cast<uint32_t*>(out + n * 8) =
              pack2<kFp16>(acc[n][2 * i] * inverse, acc[n][2 * i + 1] * inverse);
        }
        if (warpgroup_ == 0 && q4 == 0) {
          const float sum = state.sum[i];
          p_.softmax_lse[piece.batch * p_.lse_batch_stride + head * p_.lse_head_stride + token * p_.lse_token_stride] =
              sum == 0.0f ? INFINITY : (log2f(sum) + state.max_log2[i]) / kLog2e;
        }
      } else {
        const int64_t slot_row = (static_cast<int64_t>(piece.slot) * p_.h_kv + head_k_) * p_.rows + r;
        float* out = p_.out_accum + slot_row * kDimV + warpgroup_ * 256 + 2 * q4;
#pragma unroll
        for (int n = 0; n < 32; ++n) {
          *reinterpret_cast<float2*>(out + n * 8) = make_float2(acc[n][2 * i] * inverse, acc[n][2 * i + 1] * inverse);
        }
        if (warpgroup_ == 0 && q4 == 0) {
          const float sum = state.sum[i];
          p_.lse_accum[slot_row] = sum == 0.0f ? -INFINITY : log2f(sum) + state.max_log2[i];
        }
      }
    }
  }

  static __device__ __forceinline__ void fence_s(float (&s)[32]) {
#pragma unroll
    for (int i = 0; i < 32; ++i) fence_operand(s[i]);
  }
  static __device__ __forceinline__ void fence_acc(float (&acc)[32][4]) {
#pragma unroll
    for (int n = 0; n < 32; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) fence_operand(acc[n][e]);
    }
  }
  const DecodeParams& p_;
  uint32_t sq_ = 0, skv_ = 0, full_ = 0;
  uint32_t scales_ = 0;      // kFp8Cache: the stages' scale areas
  uint32_t phase_bits_ = 0;  // kTma: bit s = parity of the next phase of stage s's mbarriers
  float* factor_ = nullptr;
  float* finish_ = nullptr;
  int warpgroup_ = 0, warp_ = 0, lane_ = 0;
  int head_k_ = 0, m_block_ = 0;
};

// Named barriers of WgmmaSeesawDecoder (0 is __syncthreads; the pipelined decoder's ids are not used
// in the same kernel). Per KV stage s (warpgroup s owns it: the stage holds blocks j with j % 2 == s):
//   P_READY + s   owner -> other: P(j), the rows' rescale factors and running max of block j are in
//                 shared memory (owner bar.arrive, other bar.sync: the owner never waits there);
//   EMPTY + s     other -> owner: the other warpgroup's P V(j) is done, the owner may refill stage s
//                 (other bar.arrive, owner bar.sync), only where a block j + 2 follows;
//   GROUP + w     warpgroup w's own 128 threads (its cp.async copies are tied to an mbarrier).
constexpr int kSeesawPReady = 1;
constexpr int kSeesawEmpty = 3;
constexpr int kSeesawGroup = 5;
__device__ __forceinline__ void named_barrier_arrive_if(int id, int issue) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %1, 0;\n"
      "@p bar.arrive %0, 256;\n}\n" ::"r"(id),
      "r"(issue)
      : "memory");
}

// bf16 / fp16 cache with >= 64 rows, TMA loads: the "seesaw" schedule of FlashMLA's newer kernel, so
// that one warpgroup's softmax runs while the other's MMAs keep the tensor cores busy. Correct, but
// measured 3-8% slower than the pipelined schedule on the H200 (docs/mla.md: 255 registers with
// spills, and the wait ptxas adds before O is rescaled), so it runs only with FF_MLA_SCHEDULE=seesaw. Each warpgroup
// w owns O[:, 256 w .. 256 w + 255] (wgmma m64n256k16) and KV stage w, i.e. the blocks j with
// j % 2 == w: it loads them (one thread issues the 9 TMA boxes; a block the piece ends inside comes by
// cp.async with zero-fill, by the warpgroup's 128 threads), computes S(j) = Q K(j)^T (all 64 tokens,
// m64n64k16, waiting per 64-channel column block) and the online softmax of block j, whose running max
// continues the other warpgroup's block j - 1 (read from shared memory). It hands P(j) (bf16 / fp16,
// into the RoPE block of the stage, dead after S), the rows' rescale factors and the new max to the
// other warpgroup, and both accumulate their half of O += P(j) V(j). Per warpgroup, in block order:
//   own block j:   softmax(j) -> P, factors, max | P_READY(j) | O *= factor, P V(j), done |
//                  EMPTY(j): refill stage w with block j + 2
//   other block j: S(j + 1) issued (its block has been requested one block earlier) | P_READY(j) |
//                  O *= factor(j), P V(j) | both done | EMPTY(j) (arrive)
// so S(j + 1) of one warpgroup runs on the tensor cores during softmax(j) of the other, and the
// softmaxes of consecutive blocks alternate between the warpgroups. Each warpgroup keeps partial row
// sums over its own blocks, rescaled by every block's factor; they are added at the end of the piece.
// Q comes by cp.async (warpgroup 0) on its own mbarrier, awaited by both warpgroups.
// NOTE: no wgmma is issued under a branch while another is in flight (ptxas would serialize them all,
// warning C7520): the loops hold whole (other block, own block) pairs and the odd block at the end of
// a piece is peeled off; in an other-block step, where S(j + 1) is in flight, O is rescaled without a
// branch.
template <bool kFp16>
class WgmmaSeesawDecoder {
  static constexpr int kQOffset = 0;
  static constexpr int kKvOffset = kTileBytes;
  static constexpr int kFactorOffset = 3 * kTileBytes;                  // (2 stages, 64 rows) floats
  static constexpr int kMaxOffset = kFactorOffset + 2 * kTileRows * 4;  // (2 stages, 64 rows) running max
  static constexpr int kSumOffset = kMaxOffset + 2 * kTileRows * 4;     // (2 warpgroups, 64 rows) row sums
  static constexpr int kScaleOffset = kSumOffset + 2 * kTileRows * 4;  // scale_log2 (see softmax)
  static constexpr int kBarrierOffset = kScaleOffset + 8;               // (2 stages x 9) + Q mbarriers

 public:
  static constexpr int kSmemBytes = kBarrierOffset + (2 * kColumnBlocks + 1) * 8 + 1024;  // + alignment slack
  static_assert(kSmemBytes <= 232448, "one CTA must fit the 227 KB of an sm_90 SM");

  // NOTE: the one shared-memory base address is the only pointer kept in a register, and thread and
  // block indices are read again where needed: every register counts in a warpgroup that holds S (32)
  // and its half of O (128) at once.
  __device__ WgmmaSeesawDecoder(const DecodeParams& p, char* smem) : p_(p) {
    const uint32_t address = smem_address(smem);
    base_ = address + (1024 - address % 1024) % 1024;
    if (threadIdx.x == 0) {
      st_shared_f32(base_ + kScaleOffset, p.scale_log2);
      st_shared_f32(base_ + kScaleOffset + 4, 0.0f);  // the zero of softmax
      for (int i = 0; i < 2 * kColumnBlocks + 1; ++i) mbarrier_init(base_ + kBarrierOffset + 8 * i, 1);
      fence_mbarrier_init();
    }
    __syncthreads();
  }

  __device__ void run_piece(const Piece& piece) {
    const int n =
        piece.token_end > piece.token_begin ? (piece.token_end - piece.token_begin + kTileRows - 1) / kTileRows : 0;
    const int first_block = piece.token_begin / kTileRows;
    float acc[32][4];
#pragma unroll
    for (int i = 0; i < 32; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
    float sum[2] = {0.0f, 0.0f};  // this thread's partial row sums over its warpgroup's blocks
    if (n > 0) {
      if (warpgroup() == 0) {
        run<0>(piece, n, first_block, acc, sum);
      } else {
        run<1>(piece, n, first_block, acc, sum);
      }
    }
    finish_piece(piece, n, acc, sum);
    __syncthreads();  // the next piece reuses every buffer
  }

 private:
  template <int kW>
  __device__ void run(const Piece& piece, int n, int first_block, float (&acc)[32][4], float (&sum)[2]) {
    const int last = first_block + n - 1;
    // Prologue: warpgroup 0 loads Q and block 0 into stage 0, warpgroup 1 block 1 into stage 1.
    if constexpr (kW == 0) {
      const int id = block_id(piece, first_block, last);
      load_q(piece.batch);
      fill_stage<0>(piece, first_block, id);
    } else {
      const int id = block_id(piece, first_block + 1, last);
      if (n > 1) fill_stage<1>(piece, first_block + 1, id);
    }
    mbarrier_wait(q_bar(), q_phase_);
    q_phase_ ^= 1u;
    fence_proxy_async();  // Q came by cp.async (generic proxy)
    float s[32];
    if constexpr (kW == 0) {
      issue_s(0, s);
      wgmma_commit();
      wgmma_wait<0>();
      fence_s(s);
      own_step<0>(piece, 0, n, first_block, s, acc, sum);
      for (int k = 1; k + 1 < n; k += 2) {
        other_step<0, true>(piece, k, n, s, acc, sum);
        own_step<0>(piece, k + 1, n, first_block, s, acc, sum);
      }
      if (n % 2 == 0) other_step<0, false>(piece, n - 1, n, s, acc, sum);
    } else {
      for (int k = 0; k + 1 < n; k += 2) {
        other_step<1, true>(piece, k, n, s, acc, sum);
        own_step<1>(piece, k + 1, n, first_block, s, acc, sum);
      }
      if (n % 2 == 1) other_step<1, false>(piece, n - 1, n, s, acc, sum);
    }
  }

  // Block k of the piece, k % 2 == this warpgroup: S(k) has completed (in s).
  template <int kW>
  __device__ __forceinline__ void own_step(const Piece& piece, int k, int n, int first_block, float (&s)[32],
                                           float (&acc)[32][4], float (&sum)[2]) {
    constexpr int stage = kW;
    const uint32_t tile = skv(stage);
    const int next_id = block_id(piece, first_block + k + 2, first_block + n - 1);  // read early
    float rescale[2];
    softmax(s, tile, (first_block + k) * kTileRows, stage, k == 0, piece, sum, rescale);
    fence_proxy_async();  // P (st.shared) before the tensor cores of both warpgroups read it
    named_barrier_arrive_if(kSeesawPReady + stage, 1);
    rescale_rows(acc, rescale[0], rescale[1]);  // nothing in flight: the branch inside is harmless
    issue_pv<kW>(tile, acc);
    wgmma_commit();
    wgmma_wait<0>();
    fence_acc(acc);
    if (k + 2 < n) {
      named_barrier_sync(kSeesawEmpty + stage);  // the other warpgroup's P V(k) is done too
      fill_stage<kW>(piece, first_block + k + 2, next_id);
    }
  }

  // Block k, k % 2 != this warpgroup; when kNextS, S(k + 1) (this warpgroup's next block) goes out first.
  template <int kW, bool kNextS>
  __device__ __forceinline__ void other_step(const Piece& piece, int k, int n, float (&s)[32], float (&acc)[32][4],
                                             float (&sum)[2]) {
    constexpr int stage = 1 - kW;
    const uint32_t tile = skv(stage);
    if constexpr (kNextS) {
      issue_s(kW, s);
      wgmma_commit();
    }
    named_barrier_sync(kSeesawPReady + stage);
    // This warpgroup's V(k) column blocks: its own wait makes the copies (TMA, or cp.async for a tail
    // block) visible to its MMAs.
    const uint32_t parity = (phase_bits_ >> stage) & 1;
#pragma unroll
    for (int c = 0; c < 4; ++c) mbarrier_wait(full_bar(stage, 4 * kW + c), parity);
    phase_bits_ ^= 1u << stage;
    fence_proxy_async();
    const int row = warp() * 16 + (lane() >> 2);
    const float factor0 = ld_shared_f32(base_ + kFactorOffset + 4 * (stage * kTileRows + row));
    const float factor1 = ld_shared_f32(base_ + kFactorOffset + 4 * (stage * kTileRows + row + 8));
    sum[0] *= factor0;
    sum[1] *= factor1;
    // NOTE: ptxas waits for S(k + 1) before any instruction that writes O while it is in flight
    // (C7517, "to allow use of registers defined by GMMA"); the rescale is skipped when every factor
    // of the warp is 1 (the running max did not move: most blocks), so the wait is taken only then.
    rescale_rows(acc, factor0, factor1);
    issue_pv<kW>(tile, acc);
    wgmma_commit();
    wgmma_wait<0>();
    fence_acc(acc);
    if constexpr (kNextS) fence_s(s);
    named_barrier_arrive_if(kSeesawEmpty + stage, k + 2 < n);
  }

  // O[:, 256 w .. 256 w + 255] += P V of the tile at `tile` (P from its RoPE block), issued.
  template <int kW>
  __device__ __forceinline__ void issue_pv(uint32_t tile, float (&acc)[32][4]) {
    fence_acc(acc);
    wgmma_fence();
    const uint64_t p_desc = gmma_descriptor(tile + 8 * kColumnBlockBytes, 16, 1024);
    const uint64_t v_desc = gmma_descriptor(tile + kW * 4 * kColumnBlockBytes, kColumnBlockBytes, 1024);
#pragma unroll
    for (int k = 0; k < kTileRows / 16; ++k) {
      wgmma_m64n256k16_mn<kFp16>(acc, p_desc + ((32 * k) >> 4), v_desc + ((16 * k * 128) >> 4), 1);
    }
  }

  // S = Q K^T of stage `stage` (all 64 tokens), issued, not waited for; the 4 k-steps of each
  // 64-channel column block go out as soon as that block has landed.
  __device__ __forceinline__ void issue_s(int stage, float (&s)[32]) {
    const uint32_t tile = skv(stage);
    const uint64_t a_desc = gmma_descriptor(base_ + kQOffset, 16, 1024);
    const uint64_t b_desc = gmma_descriptor(tile, 16, 1024);
    const uint32_t parity = (phase_bits_ >> stage) & 1;
    fence_s(s);
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < kDimQk / 16; ++k) {
      if (k % 4 == 0) {
        mbarrier_wait(full_bar(stage, k / 4), parity);
        if (k == 0) fence_proxy_async();  // a tail block comes by cp.async (generic proxy)
      }
      const uint64_t offset = static_cast<uint64_t>(((k / 4) * kColumnBlockBytes + (k % 4) * 32) >> 4);
      wgmma_m64n64k16<kFp16>(s, a_desc + offset, b_desc + offset, k > 0 ? 1 : 0);
    }
    phase_bits_ ^= 1u << stage;
  }

  // Scale, mask, online softmax of S (s[4 n + 2 i + e]: row 16 warp + g + 8 i, token 8 n + 2 q4 + e),
  // continuing the running max of the previous block (the other warpgroup's, in max_; none when
  // `first`); P into the RoPE block of the tile; the factors and the new max into shared memory.
  __device__ __forceinline__ void softmax(float (&s)[32], uint32_t tile, int block_start, int stage, bool first,
                                          const Piece& piece, float (&sum)[2], float (&rescale)[2]) {
    const int g = lane() >> 2, q4 = lane() & 3;
    const uint32_t p_tile = tile + 8 * kColumnBlockBytes;
    // NOTE: the scale and a zero added to the mask bound come from shared memory, read here: a load
    // cannot move above the barrier before this step, so ptxas cannot hoist the scaling and masking
    // of S into the previous step, where S is still in flight (with the kernel parameter it did, ran
    // out of registers there and waited for S early: C7517).
    const float scale_log2 = ld_shared_f32(base_ + kScaleOffset);
    const int zero = __float_as_int(ld_shared_f32(base_ + kScaleOffset + 4));
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = warp() * 16 + g + 8 * i;
      const int r = static_cast<int>(blockIdx.x) * kTileRows + row;
      int limit = piece.token_end;
      if (p_.causal) limit = min(limit, piece.seqlen - p_.s_q + r / p_.group + 1);
      const int bound = limit - block_start - 2 * q4 + zero;  // token 8 n + e of the quad is visible below it
      const float stored = ld_shared_f32(base_ + kMaxOffset + 4 * ((1 - stage) * kTileRows + row));
      const float previous = first ? -INFINITY : stored;
      float local_max = -INFINITY;
#pragma unroll
      for (int n = 0; n < 8; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& value = s[4 * n + 2 * i + e];
          value = n * 8 + e < bound ? value * scale_log2 : -INFINITY;
          local_max = fmaxf(local_max, value);
        }
      }
      local_max = fmaxf(local_max, __shfl_xor_sync(0xffffffffu, local_max, 1));
      local_max = fmaxf(local_max, __shfl_xor_sync(0xffffffffu, local_max, 2));
      const float new_max = fmaxf(previous, local_max);
      const float base = new_max == -INFINITY ? 0.0f : new_max;  // nothing visible yet: no NaN
      rescale[i] = fast_exp2(previous - base);
      float block_sum = 0.0f;
#pragma unroll
      for (int n = 0; n < 8; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& value = s[4 * n + 2 * i + e];
          value = fast_exp2(value - base);
          block_sum += value;
        }
      }
      sum[i] = sum[i] * rescale[i] + block_sum;
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        const uint32_t word = pack2<kFp16>(s[4 * n + 2 * i], s[4 * n + 2 * i + 1]);
        const int token = n * 8 + 2 * q4;
        const uint32_t address = p_tile + row * 128 + (((token >> 3) ^ (row & 7)) << 4) + (token & 7) * 2;
        asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(address), "r"(word) : "memory");
      }
      if (q4 == 0) {
        st_shared_f32(base_ + kFactorOffset + 4 * (stage * kTileRows + row), rescale[i]);
        st_shared_f32(base_ + kMaxOffset + 4 * (stage * kTileRows + row), new_max);
      }
    }
  }

  // Requests logical block `block` (cache block `id`) into `stage`, by the owning warpgroup (all its
  // threads, in step). A full block: 9 TMA boxes by its first thread, each completing its column
  // block's mbarrier. A block the piece ends inside: cp.async with zero-fill past the end by all 128
  // threads, tied to the 9 mbarriers, then the first thread's arrival (after a barrier of the
  // warpgroup, so no phase completes before every copy has landed).
  template <int kW>
  __device__ void fill_stage(const Piece& piece, int block, int id) {
    constexpr int stage = kW;
    const bool full = piece.token_end - block * kTileRows >= kTileRows;
    if (!full) {
      load_block(piece, block, stage);
#pragma unroll
      for (int c = 0; c < kColumnBlocks; ++c) cp_async_mbarrier_arrive(full_bar(stage, c));
      group_barrier_sync(kSeesawGroup + kW);
    }
    const int loader = threadIdx.x % 128 == 0;
    const uint32_t destination = skv(stage);
#pragma unroll
    for (int c = 0; c < kColumnBlocks; ++c) {
      tma_load_4d(destination + c * kColumnBlockBytes, p_.k_tensor_map, full_bar(stage, c), c * 64,
                  static_cast<int>(blockIdx.y), 0, id,
                  kColumnBlockBytes, loader & full);
      mbarrier_arrive_if(full_bar(stage, c), loader & !full);
    }
  }

  // Q by warpgroup 0's cp.async (zero rows past `rows`), completing q_bar_.
  __device__ void load_q(int batch) {
    const auto* q = static_cast<const uint16_t*>(p_.q);
    for (int task = static_cast<int>(threadIdx.x % 128); task < kTileRows * kChunks; task += 128) {
      const int row = task / kChunks, chunk = task % kChunks;
      const int r = static_cast<int>(blockIdx.x) * kTileRows + row;
      const bool valid = r < p_.rows;
      const uint16_t* source = q;
      if (valid) {
        const int token = r / p_.group, head = static_cast<int>(blockIdx.y) * p_.group + r % p_.group;
        source = q + batch * p_.q_batch_stride + token * p_.q_token_stride + head * p_.q_head_stride + chunk * 8;
      }
      cp_async_16(base_ + kQOffset + wgmma_tile_offset(row, chunk), source, valid);
    }
    cp_async_mbarrier_arrive(q_bar());
    group_barrier_sync(kSeesawGroup);  // warpgroup 0
    mbarrier_arrive_if(q_bar(), threadIdx.x == 0);
  }

  // A block the piece ends inside (tokens at or past the end zero-filled, never read), by the
  // calling warpgroup; a block id outside the cache or a column past the table loads zeros.
  __device__ void load_block(const Piece& piece, int block, int stage) {
    int physical = -1;
    if (block < p_.max_blocks) {
      physical = p_.block_table[piece.batch * p_.block_table_batch_stride + block * p_.block_table_column_stride];
    }
    const bool block_ok = physical >= 0 && physical < p_.num_blocks;
    const int valid_tokens = block_ok ? min(kTileRows, piece.token_end - block * kTileRows) : 0;
    const auto* cache = static_cast<const uint16_t*>(p_.k_cache);
    const uint16_t* base =
        cache + (block_ok ? physical * p_.k_block_stride + static_cast<int>(blockIdx.y) * p_.k_head_stride : 0);
    const uint32_t destination = skv(stage);
    for (int task = static_cast<int>(threadIdx.x % 128); task < kTileRows * kChunks; task += 128) {
      const int token = task / kChunks, chunk = task % kChunks;
      const bool valid = token < valid_tokens;
      const uint16_t* source = valid ? base + token * p_.k_token_stride + chunk * 8 : cache;
      cp_async_16(destination + wgmma_tile_offset(token, chunk), source, valid);
    }
  }

  __device__ __forceinline__ uint32_t full_bar(int stage, int c) const {
    return base_ + kBarrierOffset + 8 * (stage * kColumnBlocks + c);
  }
  __device__ __forceinline__ uint32_t q_bar() const { return base_ + kBarrierOffset + 8 * 2 * kColumnBlocks; }
  __device__ __forceinline__ uint32_t skv(int stage) const { return base_ + kKvOffset + stage * kTileBytes; }
  static __device__ __forceinline__ int warpgroup() { return static_cast<int>(threadIdx.x) / 128; }
  static __device__ __forceinline__ int warp() { return static_cast<int>(threadIdx.x / 32) % 4; }
  static __device__ __forceinline__ int lane() { return static_cast<int>(threadIdx.x) % 32; }
  // 2^x (ex2.approx.ftz: 2 ulp, -inf -> 0), as Fp8Decoder and flash attention kernels use it.
  static __device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
  }
  static __device__ __forceinline__ float ld_shared_f32(uint32_t address) {
    float value;
    asm volatile("ld.shared.f32 %0, [%1];\n" : "=f"(value) : "r"(address) : "memory");
    return value;
  }
  static __device__ __forceinline__ void st_shared_f32(uint32_t address, float value) {
    asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(address), "f"(value) : "memory");
  }

  // As WgmmaPipelinedDecoder::block_id: past the piece's last block it reads the last block's column.
  __device__ __forceinline__ int block_id(const Piece& piece, int block, int last_block) const {
    const int column = min(block, last_block);
    return p_.block_table[piece.batch * p_.block_table_batch_stride + column * p_.block_table_column_stride];
  }

  __device__ __forceinline__ void rescale_rows(float (&acc)[32][4], float factor0, float factor1) {
    if (__all_sync(0xffffffffu, factor0 == 1.0f && factor1 == 1.0f)) return;
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      acc[i][0] *= factor0;
      acc[i][1] *= factor0;
      acc[i][2] *= factor1;
      acc[i][3] *= factor1;
    }
  }

  // Both warpgroups' partial row sums are added; the row max is that of the piece's last block (the
  // warpgroup owning it stored it). Each warpgroup writes its 256 channels; warpgroup 0 the lse.
  __device__ void finish_piece(const Piece& piece, int n, float (&acc)[32][4], float (&sum)[2]) {
    const int g = lane() >> 2, q4 = lane() & 3, w = warpgroup();
    const int head_k = static_cast<int>(blockIdx.y);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      sum[i] += __shfl_xor_sync(0xffffffffu, sum[i], 1);
      sum[i] += __shfl_xor_sync(0xffffffffu, sum[i], 2);
      if (q4 == 0) st_shared_f32(base_ + kSumOffset + 4 * (w * kTileRows + warp() * 16 + g + 8 * i), sum[i]);
    }
    __syncthreads();
    const int last_stage = n > 0 ? (n - 1) % 2 : 0;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int tile_row = warp() * 16 + g + 8 * i;
      const int r = static_cast<int>(blockIdx.x) * kTileRows + tile_row;
      if (r >= p_.rows) continue;
      const float total = ld_shared_f32(base_ + kSumOffset + 4 * tile_row) +
                          ld_shared_f32(base_ + kSumOffset + 4 * (kTileRows + tile_row));
      const float inverse = total == 0.0f ? 0.0f : 1.0f / total;  // an empty row's output is 0
      const float row_max = ld_shared_f32(base_ + kMaxOffset + 4 * (last_stage * kTileRows + tile_row));
      const int token = r / p_.group, head = head_k * p_.group + r % p_.group;
      if (piece.only_piece) {
        uint16_t* out = static_cast<uint16_t*>(p_.out) + piece.batch * p_.out_batch_stride +
                        token * p_.out_token_stride + head * p_.out_head_stride + w * 256 + 2 * q4;
#pragma unroll
        for (int c = 0; c < 32; ++c) {
          *reinterpret_cast<uint32_t*>(out + c * 8) =
              pack2<kFp16>(acc[c][2 * i] * inverse, acc[c][2 * i + 1] * inverse);
        }
        if (w == 0 && q4 == 0) {
          p_.softmax_lse[piece.batch * p_.lse_batch_stride + head * p_.lse_head_stride + token * p_.lse_token_stride] =
              total == 0.0f ? INFINITY : (log2f(total) + row_max) / kLog2e;
        }
      } else {
        const int64_t slot_row = (static_cast<int64_t>(piece.slot) * p_.h_kv + head_k) * p_.rows + r;
        float* out = p_.out_accum + slot_row * kDimV + w * 256 + 2 * q4;
#pragma unroll
        for (int c = 0; c < 32; ++c) {
          *reinterpret_cast<float2*>(out + c * 8) = make_float2(acc[c][2 * i] * inverse, acc[c][2 * i + 1] * inverse);
        }
        if (w == 0 && q4 == 0) {
          p_.lse_accum[slot_row] = total == 0.0f ? -INFINITY : log2f(total) + row_max;
        }
      }
    }
  }

  static __device__ __forceinline__ void fence_s(float (&s)[32]) {
#pragma unroll
    for (int i = 0; i < 32; ++i) fence_operand(s[i]);
  }
  static __device__ __forceinline__ void fence_acc(float (&acc)[32][4]) {
#pragma unroll
    for (int i = 0; i < 32; ++i) {
#pragma unroll
      for (int e = 0; e < 4; ++e) fence_operand(acc[i][e]);
    }
  }
  const DecodeParams& p_;
  uint32_t base_ = 0;        // shared memory, 1024-byte aligned
  uint32_t phase_bits_ = 0;  // bit s: parity of the next phase of stage s's mbarriers (this thread's view)
  uint32_t q_phase_ = 0;
};

// The CTA's scheduler part, piece by piece.
template <class DecoderType>
__device__ __forceinline__ void decode_part(const DecodeParams& params, char* smem) {
  DecoderType decoder(params, smem);
  const int part = static_cast<int>(blockIdx.z);
  const int32_t* row = params.tile_scheduler_metadata + part * params.metadata_row_stride;
  const int begin_batch = row[0], begin_token = row[params.metadata_column_stride];
  const int end_batch = row[2 * params.metadata_column_stride], end_token = row[3 * params.metadata_column_stride];
  const int begin_split = row[4 * params.metadata_column_stride];
  for (int batch = max(begin_batch, 0); batch <= end_batch && batch < params.batch_size; ++batch) {
    Piece piece;
    piece.batch = batch;
    piece.seqlen = params.cache_seqlens[batch * params.cache_seqlens_stride];
    // Never past the length nor past the block table's columns, whatever the metadata says.
    const int limit = min(piece.seqlen, params.max_blocks * kTileRows);
    piece.token_begin = batch == begin_batch ? begin_token : 0;
    piece.token_end = min(batch == end_batch ? end_token : piece.seqlen, limit);
    piece.token_begin = max(piece.token_begin - piece.token_begin % kTileRows, 0);
    const int first_split = params.num_splits[batch * params.num_splits_stride];
    const int count = params.num_splits[(batch + 1) * params.num_splits_stride] - first_split;
    piece.slot = first_split + (batch == begin_batch ? begin_split : 0);
    piece.only_piece = count <= 1;
    decoder.run_piece(piece);
  }
}

template <class DecoderType>
__global__ void __launch_bounds__(kThreads, 1) mla_decode_kernel(const __grid_constant__ DecodeParams params) {
  extern __shared__ __align__(128) char smem[];
  decode_part<DecoderType>(params, smem);
}

// Fp8WideDecoder: 16 warps, so at most 128 registers per thread.
template <class DecoderType>
__global__ void __launch_bounds__(512, 1) mla_decode_wide_kernel(const __grid_constant__ DecodeParams params) {
  extern __shared__ __align__(128) char smem[];
  decode_part<DecoderType>(params, smem);
}

// Merges the split partials of each sequence with more than one split: one warp per (KV head, row),
// each lane 16 of the 512 channels. lse = log2 sum_s 2^(lse_s - max) + max, out = sum_s 2^(lse_s - lse) out_s.
template <bool kFp16>
__global__ void __launch_bounds__(256) mla_combine_kernel(const __grid_constant__ DecodeParams params) {
  const int batch = static_cast<int>(blockIdx.x);
  const int first = params.num_splits[batch * params.num_splits_stride];
  const int count = params.num_splits[(batch + 1) * params.num_splits_stride] - first;
  if (count <= 1) return;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int index = static_cast<int>(blockIdx.y) * 8 + warp;  // (head_k, r) flattened
  if (index >= params.h_kv * params.rows) return;
  const int head_k = index / params.rows, r = index % params.rows;
  const auto slot_row = [&](int split) {
    return (static_cast<int64_t>(first + split) * params.h_kv + head_k) * params.rows + r;
  };
  float max_lse = -INFINITY;
  for (int s = 0; s < count; ++s) max_lse = fmaxf(max_lse, params.lse_accum[slot_row(s)]);
  if (max_lse == -INFINITY) max_lse = 0.0f;  // every split empty: keeps exp2 finite
  float sum = 0.0f;
  for (int s = 0; s < count; ++s) sum += exp2f(params.lse_accum[slot_row(s)] - max_lse);
  const float global_lse = sum == 0.0f ? INFINITY : log2f(sum) + max_lse;
  float value[16];
#pragma unroll
  for (int c = 0; c < 16; ++c) value[c] = 0.0f;
  for (int s = 0; s < count; ++s) {
    const float weight = exp2f(params.lse_accum[slot_row(s)] - global_lse);
    if (weight == 0.0f) continue;
    const float4* partial = reinterpret_cast<const float4*>(params.out_accum + slot_row(s) * kDimV) + lane;
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      const float4 x = partial[v * 32];
      value[4 * v] += weight * x.x;
      value[4 * v + 1] += weight * x.y;
      value[4 * v + 2] += weight * x.z;
      value[4 * v + 3] += weight * x.w;
    }
  }
  const int token = r / params.group, head = head_k * params.group + r % params.group;
  uint16_t* out = static_cast<uint16_t*>(params.out) + batch * params.out_batch_stride +
                  token * params.out_token_stride + head * params.out_head_stride;
#pragma unroll
  for (int v = 0; v < 4; ++v) {
    const int channel = (v * 32 + lane) * 4;
    const uint2 packed =
        make_uint2(pack2<kFp16>(value[4 * v], value[4 * v + 1]), pack2<kFp16>(value[4 * v + 2], value[4 * v + 3]));
    *reinterpret_cast<uint2*>(out + channel) = packed;
  }
  if (lane == 0) {
    params.softmax_lse[batch * params.lse_batch_stride + head * params.lse_head_stride +
                       token * params.lse_token_stride] = global_lse / kLog2e;
  }
}

template <class DecoderType, bool kFp16, bool kWide = false>
cudaError_t launch(const DecodeParams& params, cudaStream_t stream) {
  constexpr int smem_bytes = DecoderType::kSmemBytes;
  constexpr int threads = kWide ? 512 : kThreads;
  const auto kernel = [] {
    if constexpr (kWide) {
      return mla_decode_wide_kernel<DecoderType>;
    } else {
      return mla_decode_kernel<DecoderType>;
    }
  }();
  // NOTE: a function-local static sets the attribute once per instantiation (thread-safe init).
  static const cudaError_t attribute_status =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
  if (attribute_status != cudaSuccess) return attribute_status;
  const dim3 grid(params.num_m_blocks, params.h_kv, params.num_sm_parts);
  kernel<<<grid, threads, smem_bytes, stream>>>(params);
  cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) return status;
  const dim3 combine_grid(params.batch_size, (params.h_kv * params.rows + 7) / 8);
  mla_combine_kernel<kFp16><<<combine_grid, 256, 0, stream>>>(params);
  return cudaGetLastError();
}

// Token slices per block from the query rows per KV head: every warp pair busy where rows are few.
// The FP8 cache with at most 32 rows (the memory-bound shapes) takes Fp8Decoder, whose MMAs read the
// raw FP8 tiles; with more rows every block's K/V feeds 4 row groups, and dequantizing it once into
// a 16-bit tile (Decoder<., true, 1>) costs less than four conversions in registers. The WGMMA
// kernels (WgmmaPipelinedDecoder, WgmmaFp8Decoder) take every case with >= 64 rows unless the caller
// forces mma.sync.
template <bool kFp16, bool kFp8>
cudaError_t launch_split(const DecodeParams& params, KernelKind kind, cudaStream_t stream) {
  if (kind == KernelKind::kWgmma) {
    if constexpr (kFp8) {
      return launch<WgmmaFp8Decoder<kFp16>, kFp16>(params, stream);
    } else {
      return launch<WgmmaPipelinedDecoder<kFp16, 0, false>, kFp16>(params, stream);
    }
  }
  if (kind == KernelKind::kWgmmaSeesaw) {
    if constexpr (!kFp8) return launch<WgmmaSeesawDecoder<kFp16>, kFp16>(params, stream);
  }
  if constexpr (!kFp8) {
    switch (kind) {
      case KernelKind::kWgmmaTmaLean: return launch<WgmmaPipelinedDecoder<kFp16, 0, true, true>, kFp16>(params, stream);
      case KernelKind::kWgmmaTmaLeanBar3:
        return launch<WgmmaPipelinedDecoder<kFp16, 0, true, true, kLeanGroupedBarriers>, kFp16>(params, stream);
      case KernelKind::kWgmmaTmaLeanFold:
        return launch<WgmmaPipelinedDecoder<kFp16, 0, true, true, kLeanFoldedSoftmax>, kFp16>(params, stream);
      case KernelKind::kWgmmaTmaLean2:
        return launch<WgmmaPipelinedDecoder<kFp16, 0, true, true, kLeanGroupedBarriers | kLeanFoldedSoftmax>, kFp16>(
            params, stream);
      case KernelKind::kWgmmaTmaLean2Early:
        return launch<WgmmaPipelinedDecoder<kFp16, 0, true, true,
                                            kLeanGroupedBarriers | kLeanFoldedSoftmax | kLeanEarlyS>,
                      kFp16>(params, stream);
      default: break;
    }
  }
  if (kind == KernelKind::kWgmmaTma) {
    if constexpr (!kFp8) {
      if constexpr (!kFp16) {  // the probes, of the TMA kernel only
        switch (params.probe_skip) {
          case 1: return launch<WgmmaPipelinedDecoder<false, 1, true>, false>(params, stream);
          case 2: return launch<WgmmaPipelinedDecoder<false, 2, true>, false>(params, stream);
          case 4: return launch<WgmmaPipelinedDecoder<false, 4, true>, false>(params, stream);
          case 7: return launch<WgmmaPipelinedDecoder<false, 7, true>, false>(params, stream);
          default: break;
        }
      }
      return launch<WgmmaPipelinedDecoder<kFp16, 0, true>, kFp16>(params, stream);
    }
  }
  if constexpr (kFp8) {
    if (kind == KernelKind::kWgmmaFp8Lean) {
      constexpr int kFlags = kLeanGroupedBarriers | kLeanFoldedSoftmax | kLeanFp8Cache;
      if (params.fp8_prefetch_pairs == 1) {
        constexpr int kPrefetchOne = kFlags | kLeanFp8Prefetch | kLeanFp8PrefetchOne;
        return launch<WgmmaPipelinedDecoder<kFp16, 0, true, true, kPrefetchOne>, kFp16>(params, stream);
      }
      if (params.fp8_prefetch_pairs == 2) {
        return launch<WgmmaPipelinedDecoder<kFp16, 0, true, true, kFlags | kLeanFp8Prefetch>, kFp16>(params, stream);
      }
      return launch<WgmmaPipelinedDecoder<kFp16, 0, true, true, kFlags>, kFp16>(params, stream);
    }
    if (kind == KernelKind::kWgmmaFp8TransposedWg && params.rows <= 16) {
      // The default, and for A/B runs each knob off alone (FF_MLA_FP8_EARLY_V=0 keeps the kernel of 2026-12-02).
      if (!params.fp8_early_v) return launch<Fp8TransposedWgDecoder<kFp16, 0>, kFp16>(params, stream);
      if (!params.lazy_rescale && !params.fp8_joined_descriptors) {
        return launch<Fp8TransposedWgDecoder<kFp16, kTwgEarlyV>, kFp16>(params, stream);
      }
      if (!params.lazy_rescale)
        return launch<Fp8TransposedWgDecoder<kFp16, kTwgEarlyV | kTwgJoined>, kFp16>(params, stream);
      if (!params.fp8_joined_descriptors) {
        return launch<Fp8TransposedWgDecoder<kFp16, kTwgEarlyV | kTwgLazy>, kFp16>(params, stream);
      }
      if (!params.fp8_one_barrier) {
        return launch<Fp8TransposedWgDecoder<kFp16, kTwgEarlyV | kTwgLazy | kTwgJoined>, kFp16>(params, stream);
      }
      return launch<Fp8TransposedWgDecoder<kFp16>, kFp16>(params, stream);
    }
    if (kind == KernelKind::kWgmmaFp8Transposed) {
      if (params.rows <= 16) return launch<Fp8TransposedDecoder<kFp16, 16>, kFp16>(params, stream);
      if (params.rows <= 32) return launch<Fp8TransposedDecoder<kFp16, 32>, kFp16>(params, stream);
    }
    // Two blocks per round with <= 16 rows only: with 32 the Q tile and the P planes double, and four
    // raw stages no longer fit beside them.
    if (kind == KernelKind::kMmaSyncFp8Pair && params.rows <= 16) {
      return launch<Fp8Decoder<kFp16, 4, 2>, kFp16>(params, stream);
    }
    if (kind == KernelKind::kMmaSyncFp8Channels) {
      if (params.rows <= 16) return launch<Fp8Decoder<kFp16, 4, 2, true>, kFp16>(params, stream);
      if (params.rows <= 32) return launch<Fp8Decoder<kFp16, 2, 2, true>, kFp16>(params, stream);
    }
    if (kind == KernelKind::kMmaSyncFp8ChannelsSplitS) {
      if (params.rows <= 16) return launch<Fp8Decoder<kFp16, 4, 2, true, true>, kFp16>(params, stream);
      if (params.rows <= 32) return launch<Fp8Decoder<kFp16, 2, 2, true, true>, kFp16>(params, stream);
    }
    if (kind == KernelKind::kMmaSyncFp8Wide && params.rows <= 16) {
      static_assert(Fp8WideDecoder<kFp16>::kCtaThreads == 512, "the wide kernel's launch bounds");
      return launch<Fp8WideDecoder<kFp16>, kFp16, true>(params, stream);
    }
    if (params.rows <= 16) return launch<Fp8Decoder<kFp16, 4>, kFp16>(params, stream);
    if (params.rows <= 32) return launch<Fp8Decoder<kFp16, 2>, kFp16>(params, stream);
    return launch<Decoder<kFp16, true, 1>, kFp16>(params, stream);
  } else {
    if (params.rows <= 16) return launch<Decoder<kFp16, false, 4>, kFp16>(params, stream);
    if (params.rows <= 32) return launch<Decoder<kFp16, false, 2>, kFp16>(params, stream);
    return launch<Decoder<kFp16, false, 1>, kFp16>(params, stream);
  }
}

// cuTensorMapEncodeTiled, from the driver through the runtime (no link against libcuda).
using EncodeTiledFunction = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                         const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                         CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeTiledFunction encode_tiled_function() {
  // NOTE: a function-local static resolves the entry point once per process (thread-safe init).
  static const EncodeTiledFunction function = [] {
    void* pointer = nullptr;
    cudaDriverEntryPointQueryResult query = cudaDriverEntryPointSymbolNotFound;
    const cudaError_t error =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &pointer, 12000, cudaEnableDefault, &query);
    return error == cudaSuccess && query == cudaDriverEntryPointSuccess ? reinterpret_cast<EncodeTiledFunction>(pointer)
                                                                        : nullptr;
  }();
  return function;
}

// The bf16 / fp16 cache (num_blocks, 64, h_kv, 576) as a 4-D tensor map, innermost first: channels,
// KV heads, tokens, blocks, strides as given; boxes of 64 channels x 1 head x 64 tokens x 1 block
// (8 KB, one 64-channel column block of a KV tile), 128-byte swizzle, which is the tile layout the
// kernel's wgmma descriptors expect. Out-of-range coordinates (a bad block id) read nothing and fill
// zeros. False when the driver has no encoder or rejects the layout (the caller then keeps cp.async).
bool encode_k_tensor_map(DecodeParams& params) {
  static_assert(sizeof(CUtensorMap) == sizeof(params.k_tensor_map), "CUtensorMap is 128 bytes");
  const EncodeTiledFunction encode = encode_tiled_function();
  if (encode == nullptr) return false;
  const auto bytes = [](int64_t elements) { return static_cast<cuuint64_t>(elements) * 2; };
  // A stride of an extent-1 dimension is never used; any multiple of 16 bytes keeps the encoder content.
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(kDimQk), static_cast<cuuint64_t>(params.h_kv),
                              static_cast<cuuint64_t>(kTileRows), static_cast<cuuint64_t>(params.num_blocks)};
  const cuuint64_t strides[3] = {params.h_kv > 1 ? bytes(params.k_head_stride) : bytes(kDimQk),
                                 bytes(params.k_token_stride),
                                 params.num_blocks > 1 ? bytes(params.k_block_stride) : bytes(kTileRows * kDimQk)};
  const cuuint32_t box[4] = {64, 1, static_cast<cuuint32_t>(kTileRows), 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  CUtensorMap map;
  const CUresult result =
      encode(&map, params.fp16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4,
             const_cast<void*>(params.k_cache), dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
             CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (result != CUDA_SUCCESS) return false;
  std::memcpy(params.k_tensor_map, &map, sizeof(map));
  return true;
}

}  // namespace

KernelKind select_kernel(const DecodeParams& params) {
  // A bf16 / fp16 cache takes the WGMMA kernels at any row count (the tile's rows past `rows` zero): on
  // the H200 the lean2 kernel ran h_q 16 at 3.9-4.1 TB/s (s_q 1 and 2, 8K-32K) against mma.sync's
  // 2.3-3.1 (bench/results/anchors_h200_few_rows.json, docs/mla.md). The FP8 cache keeps its few-row
  // kernels below kWgmmaMinRows (the transposed WGMMA one or mma.sync, kDefaultFp8FewRows16 / 32): its
  // 64-row WGMMA path dequantizes into a 16-bit tile first and ran at a third of their speed there (the
  // older kernel, WgmmaFp8Decoder; wgmma_fp8_lean, which replaced it from 64 rows, was not measured below).
  const bool wgmma_rows = params.rows >= kWgmmaMinRows || !params.fp8_cache || params.force_wgmma;
  if (!params.force_mma_sync && wgmma_rows) {
    // The FP8 cache: lean2 with warpgroup 1 dequantizing (its folded softmax needs a positive scale);
    // it loads without TMA, so FF_MLA_LOADS does not apply.
    if (params.fp8_cache) {
      return params.fp8_lean && params.scale_log2 > 0.0f ? KernelKind::kWgmmaFp8Lean : KernelKind::kWgmma;
    }
    if (!params.tma_loads) return KernelKind::kWgmma;
    // The probes exist for the pipelined schedule only (without the lean changes).
    Schedule schedule = params.schedule;
    if (schedule == Schedule::kDefault) schedule = params.probe_skip != 0 ? Schedule::kPipelined : kDefaultSchedule;
    // The folded softmax takes the row max on raw scores, which needs a positive scale.
    const bool positive_scale = params.scale_log2 > 0.0f;
    switch (schedule) {
      case Schedule::kSeesaw: return KernelKind::kWgmmaSeesaw;
      case Schedule::kLean: return KernelKind::kWgmmaTmaLean;
      case Schedule::kLeanBar3: return KernelKind::kWgmmaTmaLeanBar3;
      case Schedule::kLeanFold: return positive_scale ? KernelKind::kWgmmaTmaLeanFold : KernelKind::kWgmmaTmaLean;
      case Schedule::kLean2: return positive_scale ? KernelKind::kWgmmaTmaLean2 : KernelKind::kWgmmaTmaLean;
      case Schedule::kLean2Early: return positive_scale ? KernelKind::kWgmmaTmaLean2Early : KernelKind::kWgmmaTmaLean;
      default: return KernelKind::kWgmmaTma;
    }
  }
  if (params.fp8_cache && params.rows <= 32) {
    Fp8Kernel fp8_kernel = params.fp8_kernel;
    // FF_MLA_KERNEL=mma_sync keeps the mma.sync kernels: the channel-split one for <= 16 rows.
    if (fp8_kernel == Fp8Kernel::kDefault) {
      fp8_kernel = params.rows > 16        ? kDefaultFp8FewRows32
                   : params.force_mma_sync ? Fp8Kernel::kChannels
                                           : kDefaultFp8FewRows16;
    }
    // The pair and wide kernels exist for <= 16 rows only (shared memory; Fp8Decoder, Fp8WideDecoder).
    if (params.rows <= 16 && fp8_kernel == Fp8Kernel::kPair) return KernelKind::kMmaSyncFp8Pair;
    if (params.rows <= 16 && fp8_kernel == Fp8Kernel::kWide) return KernelKind::kMmaSyncFp8Wide;
    if (fp8_kernel == Fp8Kernel::kTransposedWg && params.rows <= 16) return KernelKind::kWgmmaFp8TransposedWg;
    if (fp8_kernel == Fp8Kernel::kTransposed || fp8_kernel == Fp8Kernel::kTransposedWg) {
      return KernelKind::kWgmmaFp8Transposed;  // transposed_wg exists for <= 16 rows only
    }
    if (fp8_kernel == Fp8Kernel::kChannels) return KernelKind::kMmaSyncFp8Channels;
    if (fp8_kernel == Fp8Kernel::kChannelsSplitS) return KernelKind::kMmaSyncFp8ChannelsSplitS;
    return KernelKind::kMmaSyncFp8Direct;
  }
  return KernelKind::kMmaSync;
}

const char* kernel_name(KernelKind kind) {
  switch (kind) {
    case KernelKind::kWgmmaSeesaw: return "wgmma_seesaw";
    case KernelKind::kWgmmaTmaLean: return "wgmma_tma_lean";
    case KernelKind::kWgmmaTmaLeanBar3: return "wgmma_tma_lean_bar3";
    case KernelKind::kWgmmaTmaLeanFold: return "wgmma_tma_lean_fold";
    case KernelKind::kWgmmaTmaLean2: return "wgmma_tma_lean2";
    case KernelKind::kWgmmaTmaLean2Early: return "wgmma_tma_lean2_early";
    case KernelKind::kWgmmaTma: return "wgmma_tma";
    case KernelKind::kWgmma: return "wgmma";
    case KernelKind::kMmaSyncFp8Direct: return "mma_sync_fp8_direct";
    case KernelKind::kMmaSyncFp8Pair: return "mma_sync_fp8_pair";
    case KernelKind::kMmaSyncFp8Wide: return "mma_sync_fp8_wide";
    case KernelKind::kMmaSyncFp8Channels: return "mma_sync_fp8_channels";
    case KernelKind::kMmaSyncFp8ChannelsSplitS: return "mma_sync_fp8_channels_split_s";
    case KernelKind::kWgmmaFp8Transposed: return "wgmma_fp8_transposed";
    case KernelKind::kWgmmaFp8TransposedWg: return "wgmma_fp8_transposed_wg";
    case KernelKind::kWgmmaFp8Lean: return "wgmma_fp8_lean";
    case KernelKind::kMmaSync: return "mma_sync";
  }
  return "";
}

int launch_decode(const DecodeParams& params, void* stream, KernelKind* launched) {
  const auto cuda_stream = static_cast<cudaStream_t>(stream);
  KernelKind kind = select_kernel(params);
  DecodeParams local = params;
  if ((kind == KernelKind::kWgmmaTma || is_lean_tma_kernel(kind) || kind == KernelKind::kWgmmaSeesaw) &&
      !encode_k_tensor_map(local)) {
    local.tma_loads = false;
    kind = select_kernel(local);
  }
  if (launched != nullptr) *launched = kind;
  cudaError_t status;
  if (local.fp16) {
    status = local.fp8_cache ? launch_split<true, true>(local, kind, cuda_stream)
                             : launch_split<true, false>(local, kind, cuda_stream);
  } else {
    status = local.fp8_cache ? launch_split<false, true>(local, kind, cuda_stream)
                             : launch_split<false, false>(local, kind, cuda_stream);
  }
  return static_cast<int>(status);
}

}  // namespace ff::mla::cuda
