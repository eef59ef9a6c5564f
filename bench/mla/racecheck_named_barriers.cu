// Does compute-sanitizer racecheck order shared-memory accesses across a __syncthreads when the two
// warpgroups of the CTA met at different numbers of their own named barriers before it?
//
// The pattern of Fp8TransposedWgDecoder at a piece boundary: each warpgroup syncs on its own named barrier
// (1 + wg, 128 threads) once per KV block it took, and the warpgroups take different numbers of blocks when
// a piece has an odd count. Then warpgroup 0 reads what warpgroup 1 handed over, all 256 threads meet at
// __syncthreads, and warpgroup 1 overwrites that buffer (the next piece's loads).
//
// Modes: `equal` / `unequal` (named barriers and plain shared stores only), `pieces` (the kernel's whole piece
// loop in small: per warpgroup two raw stages filled by bulk copies on mbarriers, the tail of a short block
// zero-filled by plain stores, reads of each stage, the hand-off in warpgroup 1's stage at the end of a piece,
// pieces of 0 to 5 blocks one after the other).
//
// Run: nvcc -gencode=arch=compute_90a,code=sm_90a -o probe racecheck_named_barriers.cu &&
//      for m in equal unequal pieces; do compute-sanitizer --tool racecheck ./probe $m; done
// Each accesses shared memory only in ways a barrier orders; a hazard reported for one is the tool's.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

__device__ __forceinline__ void group_barrier(int id) { asm volatile("bar.sync %0, 128;\n" ::"r"(id) : "memory"); }

__global__ void __launch_bounds__(256) probe(float* out, int extra_barriers_wg0) {
  __shared__ float buffer[128];
  const int t = static_cast<int>(threadIdx.x), wg = t / 128;
  for (int piece = 0; piece < 2; ++piece) {
    // Warpgroup 0 meets at its barrier 1 + extra times, warpgroup 1 at its barrier once.
    const int meetings = wg == 0 ? 1 + extra_barriers_wg0 : 1;
    for (int i = 0; i < meetings; ++i) group_barrier(1 + wg);
    if (wg == 1) buffer[t - 128] = static_cast<float>(piece + t);  // the hand-off
    __syncthreads();
    if (wg == 0) out[piece * 128 + t] = buffer[127 - t];  // read by other threads than wrote it
    __syncthreads();                                      // the next piece overwrites the buffer
  }
}

// ---- `pieces` ----
constexpr int kBlockWords = 512;  // 2 KiB blocks
constexpr int kPieces = 7;
struct Pieces {
  int blocks[kPieces];
};
constexpr Pieces kPieceBlocks = {{3, 1, 4, 0, 5, 2, 1}};  // blocks per piece, one after the other

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void wait_parity(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\nAGAIN:\nmbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra.uni AGAIN;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}

// Block `block` of the input into `stage`: its valid words (all, or half for a piece's last block) by one bulk copy
// of warp 0 of the warpgroup, the rest zeroed by the warpgroup's 128 threads. True when it zeroed anything.
__device__ bool load_block(const float* input, int block, bool short_block, float* stage, uint32_t bar, int t) {
  const int valid = short_block ? kBlockWords / 2 : kBlockWords;
  if (t == 0) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(valid * 4) : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                     shared_address(stage)),
                 "l"(input + static_cast<int64_t>(block) * kBlockWords), "r"(valid * 4), "r"(bar)
                 : "memory");
  }
  if (short_block) {
    for (int w = valid + t; w < kBlockWords; w += 128) stage[w] = 0.0f;
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  }
  return short_block;
}

__global__ void __launch_bounds__(256) probe_pieces(const float* input, float* out, Pieces pieces) {
  __shared__ alignas(128) float stages[4][kBlockWords];
  __shared__ alignas(8) uint64_t bars[4];
  const int thread = static_cast<int>(threadIdx.x), wg = thread / 128, t = thread % 128;
  if (thread == 0) {
    for (int s = 0; s < 4; ++s)
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(shared_address(&bars[s])));
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  uint32_t phases = 0;  // bit s: the parity of stage s's next completion
  int first_block = 0;
  for (int piece = 0; piece < kPieces; ++piece) {
    const int blocks = pieces.blocks[piece];
    const int mine = blocks > wg ? (blocks - wg + 1) / 2 : 0;  // blocks wg, wg + 2, ...
    const auto global_block = [&](int i) { return first_block + wg + 2 * i; };
    const auto is_short = [&](int i) { return wg + 2 * i == blocks - 1; };
    for (int i = 0; i < 2 && i < mine; ++i) {
      load_block(input, global_block(i), is_short(i), stages[wg + 2 * i], shared_address(&bars[wg + 2 * i]), t);
    }
    __syncthreads();  // the prologue's zero fills
    float sum = 0.0f;
    for (int i = 0; i < mine; ++i) {
      const int s = wg + 2 * (i & 1);
      wait_parity(shared_address(&bars[s]), (phases >> s) & 1u);
      phases ^= 1u << s;
      for (int w = t; w < kBlockWords; w += 128) sum += stages[s][w];
      group_barrier(1 + wg);  // every warp of the warpgroup is done with stage s
      bool zeroed = false;
      if (i + 2 < mine) {
        zeroed = load_block(input, global_block(i + 2), is_short(i + 2), stages[s], shared_address(&bars[s]), t);
      }
      if (zeroed) group_barrier(1 + wg);  // (the kernel's tail barrier; here the next read of s is two blocks on)
    }
    group_barrier(1 + wg);
    float* handoff = stages[1];  // warpgroup 1's stage
    if (wg == 1) {
      handoff[t] = sum;
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    }
    __syncthreads();
    if (wg == 0) out[piece * 128 + t] = sum + handoff[127 - t];
    __syncthreads();  // the next piece reuses every stage
    first_block += blocks;
  }
}

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "equal";
  if (std::strcmp(mode, "pieces") == 0) {
    int total = 0;
    for (int b : kPieceBlocks.blocks) total += b;
    std::vector<float> input(static_cast<size_t>(total) * kBlockWords);
    for (size_t w = 0; w < input.size(); ++w) input[w] = static_cast<float>(w % 7);
    float *input_d = nullptr, *out_d = nullptr;
    cudaMalloc(&input_d, input.size() * sizeof(float));
    cudaMalloc(&out_d, kPieces * 128 * sizeof(float));
    cudaMemcpy(input_d, input.data(), input.size() * sizeof(float), cudaMemcpyHostToDevice);
    probe_pieces<<<1, 256>>>(input_d, out_d, kPieceBlocks);
    const cudaError_t status = cudaDeviceSynchronize();
    std::vector<float> out(kPieces * 128);
    cudaMemcpy(out.data(), out_d, out.size() * sizeof(float), cudaMemcpyDeviceToHost);
    // Expected: per piece, thread t of warpgroup 0 sums words t, t + 128, ... of its blocks, plus what thread
    // 127 - t of warpgroup 1 summed of its blocks (a short block's second half is zero).
    bool right = status == cudaSuccess;
    int first = 0;
    for (int piece = 0; piece < kPieces; ++piece) {
      const int blocks = kPieceBlocks.blocks[piece];
      const auto partial = [&](int wg, int t) {
        float sum = 0.0f;
        for (int b = wg; b < blocks; b += 2) {
          const int valid = b == blocks - 1 ? kBlockWords / 2 : kBlockWords;
          for (int w = t; w < valid; w += 128) sum += input[static_cast<size_t>(first + b) * kBlockWords + w];
        }
        return sum;
      };
      for (int t = 0; t < 128; ++t) right = right && out[piece * 128 + t] == partial(0, t) + partial(1, 127 - t);
      first += blocks;
    }
    std::printf("pieces: %s (%s)\n", right ? "values right" : "values WRONG", cudaGetErrorString(status));
    cudaFree(input_d);
    cudaFree(out_d);
    return right ? 0 : 1;
  }
  const bool unequal = std::strcmp(mode, "unequal") == 0;
  float* out = nullptr;
  cudaMalloc(&out, 2 * 128 * sizeof(float));
  probe<<<1, 256>>>(out, unequal ? 2 : 0);
  const cudaError_t status = cudaDeviceSynchronize();
  float host[256];
  cudaMemcpy(host, out, sizeof(host), cudaMemcpyDeviceToHost);
  bool right = status == cudaSuccess;
  for (int piece = 0; piece < 2; ++piece) {
    for (int t = 0; t < 128; ++t) right = right && host[piece * 128 + t] == static_cast<float>(piece + 255 - t);
  }
  std::printf("%s barrier counts: %s (%s)\n", unequal ? "unequal" : "equal", right ? "values right" : "values WRONG",
              cudaGetErrorString(status));
  cudaFree(out);
  return right ? 0 : 1;
}
