// wmtp's fused CUDA kernels (compiled to PTX by host/build.rs with nvcc when the `cuda` feature is on).
// Each has a plain-candle twin it is tested against (host/src/kernels/*.rs, tests/gpu_kernels.rs):
//   RMSNorm   y = bf(bf(x·r)·w),  r = 1/√(mean(x²)+ε)          forward + backward (dx, and dw when trained)
//   RoPE      interleaved pairs (x0,x1) → (x0c − x1s, x0s + x1c); backward = rotation by −θ
//   SwiGLU    y = silu(a)·b                                       forward + backward (da, db)
//   softmax-CE per row: lse, CE = lse − z[target]; backward dz = c·(softmax − onehot)
//   attention causal, grouped-query, flash-style tiles (attention.cuh: bf16 mma.sync, f32 statistics)
//   AdamW     one launch for many tensors (pointer table), f32 master weights and moments
//   dropout   mask[i] = 0 if u(key, i) < p else 1/(1−p), u a SplitMix64 hash of (key, i) (same bits on the CPU)
//   sampling  a token per row from softmax(z/T) cut to top-k and top-p, drawn with a host-given uniform
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16(x); }

// ------------------------------------------------------------------------------ 16-byte vector access
// Elementwise kernels move 8 elements per thread with 16-byte (bf16) or 2×16-byte (f32) loads and stores
// when every pointer is 16-byte aligned and the 8 are in range (else element by element): scalar bf16
// accesses reach about a third of the H200's memory bandwidth.
__device__ __forceinline__ bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }
__device__ __forceinline__ void load8(const float* p, float* v) {
  float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}
__device__ __forceinline__ void load8(const bf16* p, float* v) {
  uint4 u = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int k = 0; k < 4; k++) {
    float2 f = __bfloat1622float2(h[k]);
    v[2 * k] = f.x;
    v[2 * k + 1] = f.y;
  }
}
__device__ __forceinline__ void store8(float* p, const float* v) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ void store8(bf16* p, const float* v) {
  uint4 u;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
  for (int k = 0; k < 4; k++) h[k] = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
  *reinterpret_cast<uint4*>(p) = u;
}
// Elements [i0, i0 + 8) of n as floats into v (missing ones 0): vector load when `vec`.
template <typename T>
__device__ __forceinline__ void get8(const T* p, long i0, long n, bool vec, float* v) {
  if (vec) {
    load8(p + i0, v);
  } else {
#pragma unroll
    for (int k = 0; k < 8; k++) v[k] = i0 + k < n ? to_f(p[i0 + k]) : 0.f;
  }
}
template <typename T>
__device__ __forceinline__ void put8(T* p, long i0, long n, bool vec, const float* v) {
  if (vec) {
    store8(p + i0, v);
  } else {
#pragma unroll
    for (int k = 0; k < 8; k++)
      if (i0 + k < n) p[i0 + k] = from_f<T>(v[k]);
  }
}

// Sum over a block of `blockDim.x` (≤ 1024, multiple of 32) threads; every thread gets the total.
__device__ float block_sum(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float t = 0.f;
  for (int i = 0; i < (int)(blockDim.x >> 5); i++) t += scratch[i];
  return t;
}

// Max over a block of `blockDim.x` (≤ 1024, multiple of 32) threads; every thread gets it.
__device__ float block_max(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float t = -INFINITY;
  for (int i = 0; i < (int)(blockDim.x >> 5); i++) t = fmaxf(t, scratch[i]);
  return t;
}

// ---------------------------------------------------------------------------------------------- RMSNorm
// One block per row (the backward recomputes r: one more read of the row, no saved state).
template <typename T>
__device__ void rmsnorm_fwd(const T* x, const T* w, T* y, int dim, float eps) {
  __shared__ float scratch[32];
  const long row = blockIdx.x;
  const T* xr = x + row * dim;
  T* yr = y + row * dim;
  const bool vec = dim % 8 == 0 && aligned16(xr) && aligned16(yr) && aligned16(w);
  float ss = 0.f, v[8];
  for (int i = threadIdx.x * 8; i < dim; i += blockDim.x * 8) {
    get8(xr, i, dim, vec, v);
#pragma unroll
    for (int k = 0; k < 8; k++) ss += v[k] * v[k];
  }
  ss = block_sum(ss, scratch);
  float r = 1.0f / sqrtf(ss / dim + eps);
  for (int i = threadIdx.x * 8; i < dim; i += blockDim.x * 8) {
    float g[8];
    get8(xr, i, dim, vec, v);
    get8(w, i, dim, vec, g);
#pragma unroll
    for (int k = 0; k < 8; k++) v[k] = to_f(from_f<T>(v[k] * r)) * g[k];  // normalised in f32, cast (Meta)
    put8(yr, i, dim, vec, v);
  }
}

// dx = r·(g − n·mean(g·n)) (+ resid when given), g = dy·w, n = x·r. `rows_per_block` rows per block; when dw != 0 the block adds
// Σ_rows dy·bf(n) to dw (f32) once per column.
template <typename T>
__device__ void rmsnorm_bwd(const T* dy, const T* x, const T* w, const T* resid, T* dx, float* dw, int rows,
                            int dim, float eps, int rows_per_block) {
  __shared__ float scratch[32];
  extern __shared__ float dw_part[];  // [dim] when dw != 0
  if (dw)
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dw_part[i] = 0.f;
  __syncthreads();
  int r0 = blockIdx.x * rows_per_block;
  for (int row = r0; row < min(rows, r0 + rows_per_block); row++) {
    const T* xr = x + (long)row * dim;
    const T* dyr = dy + (long)row * dim;
    T* dxr = dx + (long)row * dim;
    const T* rr = resid ? resid + (long)row * dim : nullptr;  // added to dx when given
    const bool vec = dim % 8 == 0 && aligned16(xr) && aligned16(dyr) && aligned16(dxr) && aligned16(w) &&
                     (!rr || aligned16(rr));
    float ss = 0.f, xv[8], gv[8], wv[8];
    for (int i = threadIdx.x * 8; i < dim; i += blockDim.x * 8) {
      get8(xr, i, dim, vec, xv);
#pragma unroll
      for (int k = 0; k < 8; k++) ss += xv[k] * xv[k];
    }
    float r = 1.0f / sqrtf(block_sum(ss, scratch) / dim + eps);
    float dot = 0.f;
    for (int i = threadIdx.x * 8; i < dim; i += blockDim.x * 8) {
      get8(xr, i, dim, vec, xv);
      get8(dyr, i, dim, vec, gv);
      get8(w, i, dim, vec, wv);
#pragma unroll
      for (int k = 0; k < 8; k++) {
        float n = xv[k] * r;
        dot += gv[k] * wv[k] * n;
        if (dw && i + k < dim) dw_part[i + k] += gv[k] * to_f(from_f<T>(n));
      }
    }
    dot = block_sum(dot, scratch) / dim;
    for (int i = threadIdx.x * 8; i < dim; i += blockDim.x * 8) {
      get8(xr, i, dim, vec, xv);
      get8(dyr, i, dim, vec, gv);
      get8(w, i, dim, vec, wv);
      float rv[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      if (rr) get8(rr, i, dim, vec, rv);
#pragma unroll
      for (int k = 0; k < 8; k++) {
        float n = xv[k] * r;
        xv[k] = r * (gv[k] * wv[k] - n * dot) + rv[k];
      }
      put8(dxr, i, dim, vec, xv);
    }
  }
  if (dw) {
    __syncthreads();
    for (int i = threadIdx.x; i < dim; i += blockDim.x) atomicAdd(dw + i, dw_part[i]);
  }
}

// ------------------------------------------------------------------------------------------------- RoPE
// x [B, T, H, D] contiguous, cos/sin [T, D/2]; one thread per 4 pairs (8 elements); sign = +1 forward,
// −1 backward.
template <typename T>
__device__ void rope(const T* x, const float* cos_t, const float* sin_t, T* y, long pairs, int t_len,
                     int heads, int half, float sign) {
  long i0 = ((long)blockIdx.x * blockDim.x + threadIdx.x) * 4;  // first pair
  if (i0 >= pairs) return;
  const long n = 2 * pairs;
  const bool vec = i0 + 4 <= pairs && aligned16(x) && aligned16(y);
  float v[8], o[8];
  get8(x, 2 * i0, n, vec, v);
  // the row (b, t, head) and pair of i0, divided once: the 4 pairs share the row when half % 4 == 0
  long row = i0 / half;
  int p0 = (int)(i0 - row * half);
  int t0 = (int)((row / heads) % t_len);
#pragma unroll
  for (int k = 0; k < 4; k++) {
    long i = i0 + k;
    if (i < pairs) {
      int p = p0 + k, t = t0;
      if (p >= half) {  // only when half % 4 != 0
        p = i % half;
        t = (i / half / heads) % t_len;
      }
      float c = cos_t[t * half + p], s = sign * sin_t[t * half + p];
      o[2 * k] = v[2 * k] * c - v[2 * k + 1] * s;
      o[2 * k + 1] = v[2 * k] * s + v[2 * k + 1] * c;
    } else {
      o[2 * k] = o[2 * k + 1] = 0.f;
    }
  }
  put8(y, 2 * i0, n, vec, o);
}

// ------------------------------------------------------------------------------ SwiGLU, sums
// y = f(a, b) elementwise, one thread per 8 elements (vector access when aligned), f32 maths, one rounding.
template <typename T, typename F>
__device__ void binary8(const T* a, const T* b, T* y, long n, F f) {
  long i0 = ((long)blockIdx.x * blockDim.x + threadIdx.x) * 8;
  if (i0 >= n) return;
  const bool vec = i0 + 8 <= n && aligned16(a) && aligned16(b) && aligned16(y);
  float av[8], bv[8];
  get8(a, i0, n, vec, av);
  get8(b, i0, n, vec, bv);
#pragma unroll
  for (int k = 0; k < 8; k++) av[k] = f(av[k], bv[k]);
  put8(y, i0, n, vec, av);
}
struct SiluMul {
  __device__ float operator()(float a, float b) const { return a / (1.f + __expf(-a)) * b; }
};
struct Sum {
  __device__ float operator()(float a, float b) const { return a + b; }
};

template <typename T>
__device__ void swiglu_fwd(const T* a, const T* b, T* y, long n) { binary8(a, b, y, n, SiluMul()); }

// da = dy·b·σ(a)(1 + a(1 − σ(a))), db = dy·silu(a)
template <typename T>
__device__ void swiglu_bwd(const T* dy, const T* a, const T* b, T* da, T* db, long n) {
  long i0 = ((long)blockIdx.x * blockDim.x + threadIdx.x) * 8;
  if (i0 >= n) return;
  const bool vec = i0 + 8 <= n && aligned16(dy) && aligned16(a) && aligned16(b) && aligned16(da) &&
                   aligned16(db);
  float av[8], bv[8], g[8];
  get8(a, i0, n, vec, av);
  get8(b, i0, n, vec, bv);
  get8(dy, i0, n, vec, g);
#pragma unroll
  for (int k = 0; k < 8; k++) {
    float s = 1.f / (1.f + __expf(-av[k]));
    bv[k] = g[k] * bv[k] * s * (1.f + av[k] * (1.f - s));  // da
    av[k] = g[k] * av[k] * s;                              // db
  }
  put8(da, i0, n, vec, bv);
  put8(db, i0, n, vec, av);
}

// y = a + b: candle's bf16 add moves about a third of the memory bandwidth.
template <typename T>
__device__ void add(const T* a, const T* b, T* y, long n) { binary8(a, b, y, n, Sum()); }

// ------------------------------------------------------------------------------------------ softmax-CE
// One block per row of z [rows, V]: lse = log Σ exp z, ce = lse − z[target] (f32).
template <typename T>
__device__ void ce_fwd(const T* z, const uint32_t* target, float* ce, float* lse, int v) {
  __shared__ float scratch[32];
  const long row = blockIdx.x;
  const T* zr = z + row * v;
  float m = -INFINITY;
  for (int i = threadIdx.x; i < v; i += blockDim.x) m = fmaxf(m, to_f(zr[i]));
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, o));
  __shared__ float mx[32];
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) mx[warp] = m;
  __syncthreads();
  m = -INFINITY;
  for (int i = 0; i < (int)(blockDim.x >> 5); i++) m = fmaxf(m, mx[i]);
  float s = 0.f;
  for (int i = threadIdx.x; i < v; i += blockDim.x) s += __expf(to_f(zr[i]) - m);
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) {
    float l = m + logf(s);
    lse[row] = l;
    ce[row] = l - to_f(zr[target[row]]);
  }
}

// dz[row] = coef[row]·(softmax(z[row]) − onehot(target[row])), written over z (in place) or into dz.
template <typename T>
__device__ void ce_bwd(const T* z, const uint32_t* target, const float* lse, const float* coef, T* dz, int v) {
  const long row = blockIdx.x;
  const T* zr = z + row * v;
  T* dr = dz + row * v;
  float l = lse[row], c = coef[row];
  uint32_t tg = target[row];
  for (int i = threadIdx.x; i < v; i += blockDim.x) {
    float p = __expf(to_f(zr[i]) - l);
    dr[i] = from_f<T>(c * (p - (i == (int)tg ? 1.f : 0.f)));
  }
}

// ---------------------------------------------------------------------------------------------- AdamW
// One launch for many tensors: table[i] = {master f32*, grad (f32 or bf16)*, m*, v*, copy (bf16 or 0)*,
// n, lr, weight decay, grad dtype (0 f32, 1 bf16)}; blockIdx.y picks the tensor, blocks stride over it.
// p ← p − lr·(m̂/(√v̂ + ε) + wd·p); the compute copy (bf16) is rewritten from the master.
struct AdamEntry {
  float* p;
  const void* g;
  float* m;
  float* v;
  bf16* copy;
  long n;
  float lr;
  float wd;
  int g_bf16;
  int pad;
};

extern "C" __global__ void adamw_multi(const AdamEntry* table, float b1, float b2, float eps, float c1,
                                       float c2, float gscale) {
  AdamEntry e = table[blockIdx.y];
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < e.n; i += (long)gridDim.x * blockDim.x) {
    float g = (e.g_bf16 ? __bfloat162float(((const bf16*)e.g)[i]) : ((const float*)e.g)[i]) * gscale;
    float m = b1 * e.m[i] + (1.f - b1) * g;
    float v = b2 * e.v[i] + (1.f - b2) * g * g;
    e.m[i] = m;
    e.v[i] = v;
    float p = e.p[i];
    p = p - e.lr * ((m / c1) / (sqrtf(v / c2) + eps) + e.wd * p);
    e.p[i] = p;
    if (e.copy) e.copy[i] = __float2bfloat16(p);
  }
}

// Σ g² over many tensors into out[0] (f32), same table layout (only g, n, g_bf16 are read).
extern "C" __global__ void sumsq_multi(const AdamEntry* table, float* out) {
  __shared__ float scratch[32];
  AdamEntry e = table[blockIdx.y];
  float s = 0.f;
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < e.n; i += (long)gridDim.x * blockDim.x) {
    float g = e.g_bf16 ? __bfloat162float(((const bf16*)e.g)[i]) : ((const float*)e.g)[i];
    s += g * g;
  }
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) atomicAdd(out, s);
}

// ------------------------------------------------------------------------------------------- attention
#include "attention.cuh"

// dst[idx[r], :] = src[r, :] for unique row indices (dst zeroed beforehand); one thread per 16-byte piece
// when dim·sizeof(T) is a multiple of 16, else per element. Replaces candle's index_add (8.7 ms for a
// [16k, 2048] bf16 scatter on the H200, vs ~0.05 ms here).
template <typename T>
__device__ void scatter_rows(const T* src, const uint32_t* idx, T* dst, long rows, int dim) {
  const int per = 16 / sizeof(T);
  if (dim % per == 0) {
    long pieces = rows * (dim / per);
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= pieces) return;
    long r = i / (dim / per), c = (i % (dim / per)) * per;
    *reinterpret_cast<uint4*>(dst + (long)idx[r] * dim + c) = *reinterpret_cast<const uint4*>(src + r * dim + c);
  } else {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * dim) return;
    long r = i / dim, c = i % dim;
    dst[(long)idx[r] * dim + c] = src[i];
  }
}

// The dropout mask's uniform number for element i under `key`: SplitMix64's finaliser of key + (i+1)·φ,
// top 24 bits as a float in [0, 1). host/src/kernels/dropout.rs computes the same bits on the CPU.
__device__ __forceinline__ float dropout_uniform(unsigned long long key, unsigned long long i) {
  unsigned long long z = key + (i + 1ull) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (float)(z >> 40) * (1.0f / 16777216.0f);
}

template <typename T>
__device__ void dropout_mask(T* mask, long n, unsigned long long key, float p, float keep) {
  long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) mask[i] = from_f<T>(dropout_uniform(key, (unsigned long long)i) < p ? 0.f : keep);
}

extern "C" __global__ void f32_to_bf16(const float* x, bf16* y, long n) {
  long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = __float2bfloat16(x[i]);
}

// ------------------------------------------------------------------------------------------- sampling
// One block of 1024 threads per row of logits z [rows, V]: a token drawn from softmax(z / temperature)
// cut to the top-k tokens and to the top-p nucleus, with the row's uniform number u[row] ∈ [0, 1) (drawn
// on the host from the row's seeded generator; only B floats go in and B ids come out). With weights
// w_i = exp((z_i − max)/temperature), the kept set is {i : z_i ≥ t}, t the larger of
//   t_p = the largest logit whose tokens {z ≥ t_p} hold Σw ≥ top_p·Σ_all w   (top_p ≥ 1: every token)
//   t_k = the largest logit with #{z ≥ t_k} ≥ top_k                           (top_k = 0: every token)
// each found by bisection over the order-preserving bit patterns of f32 (≤ 32 block reductions, no sort;
// ties at the threshold are all kept). The draw walks the kept tokens in id order to where their
// cumulative weight passes u·Σ_kept w: each thread owns a contiguous chunk of ids, thread 0 scans the
// chunk sums, and the one thread whose interval holds the target walks its chunk.
__device__ __forceinline__ unsigned int order_key(float x) {
  unsigned int b = __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// The largest key k in [lo, hi] with keep(k) true (keep is monotone: true at lo, false above the answer);
// `measure(k)` is a block reduction over the row, identical on every thread, so every thread agrees.
template <typename F>
__device__ unsigned int largest_key(unsigned int lo, unsigned int hi, F keep) {
  while (lo < hi) {
    unsigned int mid = lo + (unsigned int)(((unsigned long long)hi - lo + 1) / 2);
    if (keep(mid)) lo = mid; else hi = mid - 1;
  }
  return lo;
}

template <typename T>
__device__ void sample_rows(const T* z, const float* u, uint32_t* out, int v, float inv_t, float top_p, int top_k) {
  __shared__ float scratch[32];
  __shared__ float part[1024];
  __shared__ int pick, last_kept;
  const long row = blockIdx.x;
  const T* zr = z + row * v;
  const int nt = blockDim.x;
  float m = -INFINITY;
  for (int i = threadIdx.x; i < v; i += nt) m = fmaxf(m, to_f(zr[i]));
  m = block_max(m, scratch);
  float total = 0.f;
  for (int i = threadIdx.x; i < v; i += nt) total += expf((to_f(zr[i]) - m) * inv_t);
  total = block_sum(total, scratch);
  unsigned int t = 0;
  if (top_p < 1.f) {
    const float need = top_p * total;
    t = largest_key(0u, order_key(m), [&](unsigned int k) {
      float s = 0.f;
      for (int i = threadIdx.x; i < v; i += nt) {
        float x = to_f(zr[i]);
        if (order_key(x) >= k) s += expf((x - m) * inv_t);
      }
      return block_sum(s, scratch) >= need;
    });
  }
  if (top_k > 0 && top_k < v) {
    unsigned int tk = largest_key(0u, order_key(m), [&](unsigned int k) {
      float c = 0.f;
      for (int i = threadIdx.x; i < v; i += nt) c += order_key(to_f(zr[i])) >= k ? 1.f : 0.f;
      return block_sum(c, scratch) >= (float)top_k;
    });
    t = max(t, tk);
  }
  const int chunk = (v + nt - 1) / nt, b0 = min(threadIdx.x * chunk, v), b1 = min(b0 + chunk, v);
  float s = 0.f;
  int last = -1;
  for (int i = b0; i < b1; i++) {
    float x = to_f(zr[i]);
    if (order_key(x) >= t) {
      s += expf((x - m) * inv_t);
      last = i;
    }
  }
  part[threadIdx.x] = s;
  if (threadIdx.x == 0) { pick = -1; last_kept = -1; }
  __syncthreads();
  if (last >= 0) atomicMax(&last_kept, last);
  if (threadIdx.x == 0) {
    float c = 0.f;
    for (int k = 0; k < nt; k++) { float p = part[k]; part[k] = c; c += p; }
    scratch[0] = c;
  }
  __syncthreads();
  const float target = u[row] * scratch[0];
  const float c0 = part[threadIdx.x], c1 = threadIdx.x + 1 < nt ? part[threadIdx.x + 1] : scratch[0];
  if (last >= 0 && target >= c0 && target < c1) {
    float c = c0;
    int chosen = last;
    for (int i = b0; i < b1; i++) {
      float x = to_f(zr[i]);
      if (order_key(x) >= t) {
        c += expf((x - m) * inv_t);
        if (target < c) { chosen = i; break; }
      }
    }
    pick = chosen;
  }
  __syncthreads();
  if (threadIdx.x == 0) out[row] = (uint32_t)(pick >= 0 ? pick : last_kept);
}

// ------------------------------------------------------------------------------------- entry points
#define FOR_TYPES(M) M(f32, float) M(bf16, bf16)
#define ENTRIES(NAME, T)                                                                                    \
  extern "C" __global__ void rmsnorm_fwd_##NAME(const T* x, const T* w, T* y, int dim, float eps) {       \
    rmsnorm_fwd<T>(x, w, y, dim, eps);                                                                    \
  }                                                                                                       \
  extern "C" __global__ void rmsnorm_bwd_##NAME(const T* dy, const T* x, const T* w, const T* resid, T* dx, \
                                                float* dw, int rows, int dim, float eps, int rpb) {       \
    rmsnorm_bwd<T>(dy, x, w, resid, dx, dw, rows, dim, eps, rpb);                                         \
  }                                                                                                       \
  extern "C" __global__ void rope_##NAME(const T* x, const float* c, const float* s, T* y, long pairs,     \
                                         int t_len, int heads, int half, float sign) {                    \
    rope<T>(x, c, s, y, pairs, t_len, heads, half, sign);                                                 \
  }                                                                                                       \
  extern "C" __global__ void swiglu_fwd_##NAME(const T* a, const T* b, T* y, long n) {                     \
    swiglu_fwd<T>(a, b, y, n);                                                                            \
  }                                                                                                       \
  extern "C" __global__ void add_##NAME(const T* a, const T* b, T* y, long n) { add<T>(a, b, y, n); }      \
  extern "C" __global__ void swiglu_bwd_##NAME(const T* dy, const T* a, const T* b, T* da, T* db, long n) { \
    swiglu_bwd<T>(dy, a, b, da, db, n);                                                                   \
  }                                                                                                       \
  extern "C" __global__ void ce_fwd_##NAME(const T* z, const uint32_t* tg, float* ce, float* lse, int v) { \
    ce_fwd<T>(z, tg, ce, lse, v);                                                                         \
  }                                                                                                       \
  extern "C" __global__ void scatter_rows_##NAME(const T* src, const uint32_t* idx, T* dst, long rows,      \
                                                 int dim) {                                                \
    scatter_rows<T>(src, idx, dst, rows, dim);                                                            \
  }                                                                                                       \
  extern "C" __global__ void dropout_mask_##NAME(T* mask, long n, unsigned long long key, float p,       \
                                                 float keep) {                                             \
    dropout_mask<T>(mask, n, key, p, keep);                                                               \
  }                                                                                                       \
  extern "C" __global__ void ce_bwd_##NAME(const T* z, const uint32_t* tg, const float* lse,               \
                                           const float* coef, T* dz, int v) {                             \
    ce_bwd<T>(z, tg, lse, coef, dz, v);                                                                   \
  }                                                                                                       \
  extern "C" __global__ void sample_rows_##NAME(const T* z, const float* u, uint32_t* out, int v,          \
                                                float inv_t, float top_p, int top_k) {                    \
    sample_rows<T>(z, u, out, v, inv_t, top_p, top_k);                                                    \
  }
FOR_TYPES(ENTRIES)
