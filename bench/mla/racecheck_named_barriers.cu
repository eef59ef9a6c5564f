// Does compute-sanitizer racecheck order shared-memory accesses across a __syncthreads when the two
// warpgroups of the CTA met at different numbers of their own named barriers before it?
//
// The pattern of Fp8TransposedWgDecoder at a piece boundary: each warpgroup syncs on its own named barrier
// (1 + wg, 128 threads) once per KV block it took, and the warpgroups take different numbers of blocks when
// a piece has an odd count. Then warpgroup 0 reads what warpgroup 1 handed over, all 256 threads meet at
// __syncthreads, and warpgroup 1 overwrites that buffer (the next piece's loads).
//
// Run: nvcc -gencode=arch=compute_90a,code=sm_90a -o probe racecheck_named_barriers.cu &&
//      compute-sanitizer --tool racecheck ./probe unequal; compute-sanitizer --tool racecheck ./probe equal
// Each accesses shared memory only in ways a __syncthreads orders; a hazard reported for one is the tool's.
#include <cstdio>
#include <cstring>

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

int main(int argc, char** argv) {
  const bool unequal = argc > 1 && std::strcmp(argv[1], "unequal") == 0;
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
