// Helpers shared by the attention kernels (attention.cuh, attention_sm90.cu): cp.async copies of 16 bytes
// (and 4) global → shared (zero-filled when invalid), their commit/wait groups, packing two floats to bf16x2, and
// the one-instruction 2^x of the softmax.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
// 2^x by the special-function unit with subnormals flushed to zero (one MUFU.EX2; exp2f without fast math
// adds a range fix-up around it). Inputs −∞ give 0; results below 2^−126 (probabilities far under bf16's
// resolution of the row's largest) give 0.
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ void cp16(void* s, const void* g, bool valid) {
  uint32_t a = (uint32_t)__cvta_generic_to_shared(s);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(g), "r"(valid ? 16 : 0));
}
// 4 bytes global → shared (zero-filled when invalid; `g` must still be a valid address).
__device__ __forceinline__ void cp4(void* s, const void* g, bool valid) {
  uint32_t a = (uint32_t)__cvta_generic_to_shared(s);
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(a), "l"(g), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
