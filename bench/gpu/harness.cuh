// What the standalone CUDA harnesses of bench/gpu (attention_sm90_bench.cu, attention_sm90_bwd_bench.cu)
// share: a CUDA-call check that exits with the failing call, a seeded uniform bf16 fill, device copies, the
// tensor maps of the TMA kernels (encoded as host/src/kernels/tensor_map.rs does), and the median
// event-timed milliseconds of a launch sequence. Link with -lcuda.
#pragma once
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "../../host/kernels/tma.cuh"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK(x)                                                                         \
  do {                                                                                   \
    cudaError_t e = (x);                                                                 \
    if (e != cudaSuccess) {                                                              \
      fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e)); \
      exit(1);                                                                           \
    }                                                                                    \
  } while (0)

// n bf16 values uniform in [−amplitude, amplitude) from a 64-bit LCG seeded with `seed`.
static std::vector<__nv_bfloat16> uniform_bf16(size_t n, unsigned seed, float amplitude) {
  std::vector<__nv_bfloat16> x(n);
  unsigned long long s = seed * 6364136223846793005ull + 1442695040888963407ull;
  for (size_t i = 0; i < n; i++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    float u = ((s >> 40) & 0xFFFFFF) / 16777216.0f;  // [0, 1)
    x[i] = __float2bfloat16(amplitude * (2.f * u - 1.f));
  }
  return x;
}
template <class T> static T* dev_alloc(size_t n) {
  T* p;
  CHECK(cudaMalloc(&p, n * sizeof(T)));
  return p;
}
static __nv_bfloat16* upload(const std::vector<__nv_bfloat16>& x) {
  __nv_bfloat16* d = dev_alloc<__nv_bfloat16>(x.size());
  CHECK(cudaMemcpy(d, x.data(), x.size() * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice));
  return d;
}
static std::vector<float> download(const __nv_bfloat16* d, size_t n) {
  std::vector<__nv_bfloat16> h(n);
  CHECK(cudaMemcpy(h.data(), d, n * sizeof(__nv_bfloat16), cudaMemcpyDeviceToHost));
  std::vector<float> f(n);
  for (size_t i = 0; i < n; i++) f[i] = __bfloat162float(h[i]);
  return f;
}
// The tensor map of a [B, T, heads, D] tensor at p (bf16, or f32 when `f32`) whose boxes are `rows` rows ×
// 128 bytes of columns of one head (dims innermost first: column, head, row, batch), 128-byte swizzled as
// sm90.cuh's tiles; exits on a driver error.
static TmaDesc head_rows_map(const void* p, bool f32, int B, int T, int heads, int D, int rows) {
  static_assert(sizeof(TmaDesc) == sizeof(CUtensorMap), "TmaDesc is a CUtensorMap");
  const cuuint64_t elem = f32 ? 4 : 2;
  TmaDesc m;
  cuuint64_t dims[4] = {(cuuint64_t)D, (cuuint64_t)heads, (cuuint64_t)T, (cuuint64_t)B};
  cuuint64_t strides[3] = {D * elem, (cuuint64_t)heads * D * elem, (cuuint64_t)T * heads * D * elem};
  cuuint32_t box[4] = {(cuuint32_t)(128 / elem), 1, (cuuint32_t)rows, 1}, unit[4] = {1, 1, 1, 1};
  CUresult r = cuTensorMapEncodeTiled(
      reinterpret_cast<CUtensorMap*>(&m), f32 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
      4, const_cast<void*>(p), dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    fprintf(stderr, "cuTensorMapEncodeTiled: error %d\n", (int)r);
    exit(1);
  }
  return m;
}

// The median over `iters` timed runs of `launch` (after one untimed run), in milliseconds.
template <class F> static float median_ms(int iters, F launch) {
  launch();
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  std::vector<float> ts;
  for (int i = 0; i < iters; i++) {
    CHECK(cudaEventRecord(a));
    launch();
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    float t;
    CHECK(cudaEventElapsedTime(&t, a, b));
    ts.push_back(t);
  }
  CHECK(cudaEventDestroy(a));
  CHECK(cudaEventDestroy(b));
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}
