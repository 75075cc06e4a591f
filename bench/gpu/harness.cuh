// What the standalone CUDA harnesses of bench/gpu (attention_sm90_bench.cu, attention_sm90_bwd_bench.cu)
// share: a CUDA-call check that exits with the failing call, a seeded uniform bf16 fill, device copies, and
// the median event-timed milliseconds of a launch sequence.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

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
