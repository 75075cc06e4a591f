// Hopper (sm_90a) helpers shared by the wgmma attention kernels (attention_sm90.cu forward,
// attention_sm90_bwd.cuh backward): shared-memory descriptors with the 128-byte swizzle, the wgmma
// fence/commit/wait instructions, the register-A product by head dim, the async-proxy fence, the 1024-byte
// alignment of a shared-memory carve, and the cp.async copy of a tile into the swizzled layout wgmma reads.
//
// Swizzled tiles: a tile of R rows × D bf16 columns is stored as D/64 column halves of R rows × 128 bytes;
// the 16-byte chunk c of row r sits at chunk c ^ (r mod 8); tiles start 1024-byte aligned. Descriptors:
// K-major (the reduction runs along the row): stride 1024 B between 8-row groups, a k-step of 16 columns
// is +32 B inside the row, +R·128 B past column 64; MN-major (the reduction runs down the rows): a k-step
// of 16 rows is +16·128 B, stride 1024 B between 8-row groups, R·128 B between the column halves.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

#include "async_copy.cuh"
#include "wgmma.cuh"

// A wgmma shared-memory descriptor with the 128-byte swizzle: address, leading and stride byte offsets.
__device__ __forceinline__ uint64_t sw128_desc(const void* p, uint32_t lead, uint32_t stride) {
  uint64_t a = (uint32_t)__cvta_generic_to_shared(p);
  return ((a & 0x3FFFF) >> 4) | ((uint64_t)((lead >> 4) & 0x3FFF) << 16) |
         ((uint64_t)((stride >> 4) & 0x3FFF) << 32) | (1ull << 62);
}
// Descriptor d moved on by `bytes` (a multiple of 16; the address stays below 256 KiB): a 32-bit add to the
// start-address field, which cannot carry into the offsets. A k-step's descriptor as base + constant costs
// one add instead of sw128_desc's five (ptxas does not fold them: ~60 uniform instructions a tile).
__device__ __forceinline__ uint64_t desc_plus(uint64_t d, uint32_t bytes) {
  return (d & 0xFFFFFFFF00000000ull) | (uint32_t)((uint32_t)d + (bytes >> 4));
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving reads of wgmma accumulators across the wait.
template <int N> __device__ __forceinline__ void fence_regs(float* r) {
#pragma unroll
  for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i])::"memory");
}
// Keeps registers that an in-flight wgmma reads as its A operand (bf16 fragments) alive and unchanged up
// to this point — call it after the wgmma_wait that covers that wgmma. ptxas does not hold them for the
// asynchronous read: without it, it may put new values (the next tile's P) into them while the product
// still runs (seen: P·V at 160 registers a thread read half-overwritten P, o wrong, lse right).
template <int N> __device__ __forceinline__ void hold_regs(uint32_t (*r)[4]) {
#pragma unroll
  for (int i = 0; i < N; i++)
#pragma unroll
    for (int e = 0; e < 4; e++) asm volatile("" : "+r"(r[i][e])::"memory");
}
// Makes this thread's completed cp.async writes visible to wgmma's (async proxy) reads.
__device__ __forceinline__ void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Queues rows [row0, row0+R) of head h of a [B, T, heads, D] tensor into a swizzled tile (rows past T: 0).
template <int D, int R>
__device__ __forceinline__ void tile_sw128(unsigned char* s, const bf16* g, int b, int row0, int h, int T,
                                           int heads) {
  const int chunks = D / 8;
  for (int i = threadIdx.x; i < R * chunks; i += blockDim.x) {
    int r = i / chunks, c = i % chunks;
    int t = row0 + r;
    const bf16* src = g + (((long)b * T + min(t, T - 1)) * heads + h) * D + c * 8;
    cp16(s + (c >> 3) * (R * 128) + r * 128 + (((c & 7) ^ (r & 7)) << 4), src, t < T);
  }
}

// D[64×N] += A·B with A [64×16] bf16 from registers and B [16×N] an MN-major tile in shared memory, N = the
// head dim (64 or 128): the forward's O += P·V, the backward's dV += Pᵀ·dO and dK += dSᵀ·Q.
template <int N> __device__ __forceinline__ void wgmma_rs_tb(float* d, const uint32_t* a, uint64_t b);
template <> __device__ __forceinline__ void wgmma_rs_tb<64>(float* d, const uint32_t* a, uint64_t b) {
  wgmma_rs_n64_tb(d, a, b);
}
template <> __device__ __forceinline__ void wgmma_rs_tb<128>(float* d, const uint32_t* a, uint64_t b) {
  wgmma_rs_n128_tb(d, a, b);
}

// The first 1024-byte-aligned address at or after `raw` in shared memory (swizzled tiles start there).
__device__ __forceinline__ unsigned char* align1024(unsigned char* raw) {
  const uint32_t base = (uint32_t)__cvta_generic_to_shared(raw);
  return raw + ((1024 - (base & 1023)) & 1023);
}
