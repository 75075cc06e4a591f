// wmtp's fused CUDA kernels (compiled to PTX by host/build.rs with nvcc when the `cuda` feature is on).
// Each has a plain-candle twin it is tested against (host/src/kernels/*.rs, tests/gpu_kernels.rs):
//   RMSNorm   y = bf(bf(x·r)·w),  r = 1/√(mean(x²)+ε)          forward + backward (dx, and dw when trained)
//   RoPE      interleaved pairs (x0,x1) → (x0c − x1s, x0s + x1c); backward = rotation by −θ
//   SwiGLU    y = silu(a)·b                                       forward + backward (da, db)
//   softmax-CE per row: lse, CE = lse − z[target]; backward dz = c·(softmax − onehot)
//   attention causal, grouped-query, flash-style tiles (bf16 mma.sync, f32 statistics), log-sum-exp kept
//   AdamW     one launch for many tensors (pointer table), f32 master weights and moments
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16(x); }

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

// ---------------------------------------------------------------------------------------------- RMSNorm
// One block per row (the backward recomputes r: one more read of the row, no saved state).
template <typename T>
__device__ void rmsnorm_fwd(const T* x, const T* w, T* y, int dim, float eps) {
  __shared__ float scratch[32];
  const long row = blockIdx.x;
  const T* xr = x + row * dim;
  T* yr = y + row * dim;
  float ss = 0.f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    float v = to_f(xr[i]);
    ss += v * v;
  }
  ss = block_sum(ss, scratch);
  float r = 1.0f / sqrtf(ss / dim + eps);
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    float n = to_f(from_f<T>(to_f(xr[i]) * r));  // normalised in f32, cast to the compute dtype (Meta)
    yr[i] = from_f<T>(n * to_f(w[i]));
  }
}

// dx = r·(g − n·mean(g·n)), g = dy·w, n = x·r. `rows_per_block` rows per block; when dw != 0 the block adds
// Σ_rows dy·bf(n) to dw (f32) once per column.
template <typename T>
__device__ void rmsnorm_bwd(const T* dy, const T* x, const T* w, T* dx, float* dw, int rows, int dim,
                            float eps, int rows_per_block) {
  __shared__ float scratch[32];
  extern __shared__ float dw_part[];  // [dim] when dw != 0
  if (dw)
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dw_part[i] = 0.f;
  int r0 = blockIdx.x * rows_per_block;
  for (int row = r0; row < min(rows, r0 + rows_per_block); row++) {
    const T* xr = x + (long)row * dim;
    const T* dyr = dy + (long)row * dim;
    T* dxr = dx + (long)row * dim;
    float ss = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
      float v = to_f(xr[i]);
      ss += v * v;
    }
    float r = 1.0f / sqrtf(block_sum(ss, scratch) / dim + eps);
    float dot = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
      float n = to_f(xr[i]) * r;
      float g = to_f(dyr[i]) * to_f(w[i]);
      dot += g * n;
      if (dw) dw_part[i] += to_f(dyr[i]) * to_f(from_f<T>(n));
    }
    dot = block_sum(dot, scratch) / dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
      float n = to_f(xr[i]) * r;
      float g = to_f(dyr[i]) * to_f(w[i]);
      dxr[i] = from_f<T>(r * (g - n * dot));
    }
  }
  if (dw)
    for (int i = threadIdx.x; i < dim; i += blockDim.x) atomicAdd(dw + i, dw_part[i]);
}

// ------------------------------------------------------------------------------------------------- RoPE
// x [B, T, H, D] contiguous, cos/sin [T, D/2]; one thread per pair; sign = +1 forward, −1 backward.
template <typename T>
__device__ void rope(const T* x, const float* cos_t, const float* sin_t, T* y, long pairs, int t_len,
                     int heads, int half, float sign) {
  long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= pairs) return;
  int p = i % half;
  int t = (i / half / heads) % t_len;
  float c = cos_t[t * half + p], s = sign * sin_t[t * half + p];
  float x0 = to_f(x[2 * i]), x1 = to_f(x[2 * i + 1]);
  y[2 * i] = from_f<T>(x0 * c - x1 * s);
  y[2 * i + 1] = from_f<T>(x0 * s + x1 * c);
}

// ----------------------------------------------------------------------------------------------- SwiGLU
template <typename T>
__device__ void swiglu_fwd(const T* a, const T* b, T* y, long n) {
  long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float av = to_f(a[i]);
  y[i] = from_f<T>(av / (1.f + __expf(-av)) * to_f(b[i]));
}

// da = dy·b·σ(a)(1 + a(1 − σ(a))), db = dy·silu(a)
template <typename T>
__device__ void swiglu_bwd(const T* dy, const T* a, const T* b, T* da, T* db, long n) {
  long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float av = to_f(a[i]), g = to_f(dy[i]);
  float s = 1.f / (1.f + __expf(-av));
  da[i] = from_f<T>(g * to_f(b[i]) * s * (1.f + av * (1.f - s)));
  db[i] = from_f<T>(g * av * s);
}

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
// mma.sync m16n8k16 bf16 → f32. Fragment layout (g = lane/4, t = lane%4):
//   A (16×16, row): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B (16×8, col):  b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//   C (16×8):       c0,c1 = (g, 2t..2t+1), c2,c3 = (g+8, 2t..2t+1)
__device__ __forceinline__ void mma16816(float* c, const uint32_t* a, const uint32_t* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
__device__ __forceinline__ uint32_t pack_bf(bf16 lo, bf16 hi) {
  return (uint32_t)(*reinterpret_cast<uint16_t*>(&lo)) | ((uint32_t)(*reinterpret_cast<uint16_t*>(&hi)) << 16);
}
__device__ __forceinline__ uint32_t ld32(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }

#define BR 64
#define BC 64
#define PAD 8

// Copies rows [row0, row0+64) of a [B, T, heads, D] tensor (head `h`, batch `b`) into smem [64][D+PAD];
// rows past T are zero.
template <int D>
__device__ __forceinline__ void load_tile(bf16* s, const bf16* g, int b, int row0, int h, int T, int heads) {
  const int chunks = D / 8;  // 16-byte pieces per row
  for (int i = threadIdx.x; i < 64 * chunks; i += blockDim.x) {
    int r = i / chunks, c = (i % chunks) * 8;
    int t = row0 + r;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (t < T) val = *reinterpret_cast<const uint4*>(g + (((long)b * T + t) * heads + h) * D + c);
    *reinterpret_cast<uint4*>(s + r * (D + PAD) + c) = val;
  }
}

// Forward: grid (ceil(T/64), n_heads, B), 128 threads (4 warps × 16 query rows). q/o [B, T, NH, D],
// k/v [B, T, NKV, D]; lse [B, NH, T] in units of log2 of the scaled scores (scale_log2 = log2(e)/√D).
template <int D>
__device__ void flash_fwd(const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, int T, int NH,
                          int NKV, float scale_log2) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* Vs = Ks + 64 * (D + PAD);
  const int qt = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int kvh = h / (NH / NKV);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int row_a = qt * BR + warp * 16 + g, row_b = row_a + 8;  // this thread's two query rows
  // Q fragments in registers (rows past T read as zero)
  uint32_t qf[D / 16][4];
  {
    const bf16* qa = q + (((long)b * T + min(row_a, T - 1)) * NH + h) * D;
    const bf16* qb = q + (((long)b * T + min(row_b, T - 1)) * NH + h) * D;
    for (int kk = 0; kk < D / 16; kk++) {
      qf[kk][0] = row_a < T ? ld32(qa + 16 * kk + 2 * tq) : 0;
      qf[kk][1] = row_b < T ? ld32(qb + 16 * kk + 2 * tq) : 0;
      qf[kk][2] = row_a < T ? ld32(qa + 16 * kk + 8 + 2 * tq) : 0;
      qf[kk][3] = row_b < T ? ld32(qb + 16 * kk + 8 + 2 * tq) : 0;
    }
  }
  float acc[D / 8][4];
  for (int i = 0; i < D / 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;
  const int last = min(qt, (T - 1) / BC);  // causal: key tiles up to the diagonal
  for (int kt = 0; kt <= last; kt++) {
    __syncthreads();
    load_tile<D>(Ks, k, b, kt * BC, kvh, T, NKV);
    load_tile<D>(Vs, v, b, kt * BC, kvh, T, NKV);
    __syncthreads();
    float s[BC / 8][4];
    for (int nt = 0; nt < BC / 8; nt++) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
      const bf16* kr = Ks + (nt * 8 + g) * (D + PAD);
      for (int kk = 0; kk < D / 16; kk++) {
        uint32_t bf[2] = {ld32(kr + 16 * kk + 2 * tq), ld32(kr + 16 * kk + 8 + 2 * tq)};
        mma16816(s[nt], qf[kk], bf);
      }
    }
    // scale, causal mask, online softmax (rows a and b of this thread)
    float mx_a = -INFINITY, mx_b = -INFINITY;
    for (int nt = 0; nt < BC / 8; nt++) {
      for (int e = 0; e < 4; e++) {
        int key = kt * BC + nt * 8 + 2 * tq + (e & 1);
        int row = e < 2 ? row_a : row_b;
        float val = s[nt][e] * scale_log2;
        if (key > row || key >= T) val = -INFINITY;
        s[nt][e] = val;
      }
      mx_a = fmaxf(mx_a, fmaxf(s[nt][0], s[nt][1]));
      mx_b = fmaxf(mx_b, fmaxf(s[nt][2], s[nt][3]));
    }
    for (int o2 = 1; o2 <= 2; o2 <<= 1) {
      mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffff, mx_a, o2));
      mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffff, mx_b, o2));
    }
    float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
    float base_a = mn_a == -INFINITY ? 0.f : mn_a, base_b = mn_b == -INFINITY ? 0.f : mn_b;
    float al_a = exp2f(m_a - base_a), al_b = exp2f(m_b - base_b);
    m_a = mn_a;
    m_b = mn_b;
    float rs_a = 0.f, rs_b = 0.f;
    uint32_t pf[BC / 16][4];
    for (int nt = 0; nt < BC / 8; nt++) {
      float p0 = exp2f(s[nt][0] - base_a), p1 = exp2f(s[nt][1] - base_a);
      float p2 = exp2f(s[nt][2] - base_b), p3 = exp2f(s[nt][3] - base_b);
      rs_a += p0 + p1;
      rs_b += p2 + p3;
      pf[nt / 2][(nt & 1) * 2 + 0] = pack2(p0, p1);
      pf[nt / 2][(nt & 1) * 2 + 1] = pack2(p2, p3);
    }
    l_a = l_a * al_a + rs_a;
    l_b = l_b * al_b + rs_b;
    for (int nd = 0; nd < D / 8; nd++) {
      acc[nd][0] *= al_a;
      acc[nd][1] *= al_a;
      acc[nd][2] *= al_b;
      acc[nd][3] *= al_b;
    }
    // O += P·V: k = key (16 per step), n = feature
    for (int kk = 0; kk < BC / 16; kk++) {
      const bf16* v0 = Vs + (kk * 16 + 2 * tq) * (D + PAD);
      for (int nd = 0; nd < D / 8; nd++) {
        int col = nd * 8 + g;
        uint32_t bf[2] = {pack_bf(v0[col], v0[(D + PAD) + col]),
                          pack_bf(v0[8 * (D + PAD) + col], v0[9 * (D + PAD) + col])};
        mma16816(acc[nd], pf[kk], bf);
      }
    }
  }
  for (int o2 = 1; o2 <= 2; o2 <<= 1) {
    l_a += __shfl_xor_sync(0xffffffff, l_a, o2);
    l_b += __shfl_xor_sync(0xffffffff, l_b, o2);
  }
  float inv_a = l_a > 0.f ? 1.f / l_a : 0.f, inv_b = l_b > 0.f ? 1.f / l_b : 0.f;
  if (row_a < T) {
    bf16* oa = o + (((long)b * T + row_a) * NH + h) * D;
    for (int nd = 0; nd < D / 8; nd++)
      *reinterpret_cast<uint32_t*>(oa + nd * 8 + 2 * tq) = pack2(acc[nd][0] * inv_a, acc[nd][1] * inv_a);
    if (tq == 0) lse[((long)b * NH + h) * T + row_a] = m_a + log2f(l_a);
  }
  if (row_b < T) {
    bf16* ob = o + (((long)b * T + row_b) * NH + h) * D;
    for (int nd = 0; nd < D / 8; nd++)
      *reinterpret_cast<uint32_t*>(ob + nd * 8 + 2 * tq) = pack2(acc[nd][2] * inv_b, acc[nd][3] * inv_b);
    if (tq == 0) lse[((long)b * NH + h) * T + row_b] = m_b + log2f(l_b);
  }
}

// delta[b, h, t] = Σ_d o·do (f32); one warp per (b, t, h) row of o/do [B, T, NH, D].
__device__ void flash_bwd_delta(const bf16* o, const bf16* dout, float* delta, long rows, int T, int NH, int D) {
  long row = ((long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const bf16* orow = o + row * D;
  const bf16* drow = dout + row * D;
  float s = 0.f;
  for (int i = lane; i < D; i += 32) s += __bfloat162float(orow[i]) * __bfloat162float(drow[i]);
  for (int o2 = 16; o2 > 0; o2 >>= 1) s += __shfl_xor_sync(0xffffffff, s, o2);
  if (lane == 0) {
    int h = row % NH;
    long bt = row / NH;
    int t = bt % T;
    long b = bt / T;
    delta[(b * NH + h) * T + t] = s;
  }
}

// Backward: grid (ceil(T/64) key tiles, NKV, B), 128 threads (4 warps × 16 keys). For every query head of
// the group and every query tile from the diagonal on: Sᵀ = K·Qᵀ, Pᵀ = 2^(Sᵀ·scale_log2 − lse),
// dPᵀ = V·dOᵀ, dSᵀ = Pᵀ ⊙ (dPᵀ − delta); dV += Pᵀ·dO, dK += dSᵀ·Q (registers), dQ += dS·K (f32 atomics
// into dq_acc [B, T, NH, D]). dk/dv [B, T, NKV, D] are written once; `scale` = 1/√D.
template <int D>
__device__ void flash_bwd(const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse,
                          const float* delta, float* dq_acc, bf16* dk, bf16* dv, int T, int NH, int NKV,
                          float scale_log2, float scale) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int LD = D + PAD;
  bf16* Ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* Vs = Ks + 64 * LD;
  bf16* Qs = Vs + 64 * LD;
  bf16* Ds = Qs + 64 * LD;        // dO tile
  bf16* St = Ds + 64 * LD;        // dSᵀ tile [64 keys][64 + PAD queries]
  float* Ls = reinterpret_cast<float*>(St + 64 * (64 + PAD));  // lse of the query tile
  float* Dl = Ls + 64;                                          // delta of the query tile
  const int kt = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
  const int rep = NH / NKV;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int key_a = kt * BC + warp * 16 + g, key_b = key_a + 8;  // this thread's rows of Sᵀ
  load_tile<D>(Ks, k, b, kt * BC, kvh, T, NKV);
  load_tile<D>(Vs, v, b, kt * BC, kvh, T, NKV);
  float dka[D / 8][4], dva[D / 8][4];
  for (int i = 0; i < D / 8; i++)
    for (int e = 0; e < 4; e++) dka[i][e] = dva[i][e] = 0.f;
  const bf16* kw = Ks + (warp * 16) * LD;  // the warp's 16 keys (A operand rows)
  const bf16* vw = Vs + (warp * 16) * LD;
  const int n_qt = (T + BR - 1) / BR;
  for (int r = 0; r < rep; r++) {
    const int h = kvh * rep + r;
    for (int qt = kt; qt < n_qt; qt++) {
      __syncthreads();
      load_tile<D>(Qs, q, b, qt * BR, h, T, NH);
      load_tile<D>(Ds, dout, b, qt * BR, h, T, NH);
      for (int i = threadIdx.x; i < 64; i += blockDim.x) {
        int t = qt * BR + i;
        Ls[i] = t < T ? lse[((long)b * NH + h) * T + t] : 0.f;
        Dl[i] = t < T ? delta[((long)b * NH + h) * T + t] : 0.f;
      }
      __syncthreads();
      float st[BR / 8][4], dp[BR / 8][4];
      for (int nt = 0; nt < BR / 8; nt++)
        for (int e = 0; e < 4; e++) st[nt][e] = dp[nt][e] = 0.f;
      for (int kk = 0; kk < D / 16; kk++) {
        const int c0 = 16 * kk + 2 * tq;
        uint32_t ka[4] = {ld32(kw + g * LD + c0), ld32(kw + (g + 8) * LD + c0), ld32(kw + g * LD + c0 + 8),
                          ld32(kw + (g + 8) * LD + c0 + 8)};
        uint32_t va[4] = {ld32(vw + g * LD + c0), ld32(vw + (g + 8) * LD + c0), ld32(vw + g * LD + c0 + 8),
                          ld32(vw + (g + 8) * LD + c0 + 8)};
        for (int nt = 0; nt < BR / 8; nt++) {
          const bf16* qr = Qs + (nt * 8 + g) * LD;
          const bf16* dr = Ds + (nt * 8 + g) * LD;
          uint32_t qb[2] = {ld32(qr + c0), ld32(qr + c0 + 8)};
          mma16816(st[nt], ka, qb);
          uint32_t db[2] = {ld32(dr + c0), ld32(dr + c0 + 8)};
          mma16816(dp[nt], va, db);
        }
      }
      // Pᵀ and dSᵀ in registers; P as bf16 A fragments (k = query) for dV, dS likewise for dK
      uint32_t pf[BR / 16][4], sf[BR / 16][4];
      for (int nt = 0; nt < BR / 8; nt++) {
        float pv[4], sv[4];
        for (int e = 0; e < 4; e++) {
          int qi = nt * 8 + 2 * tq + (e & 1);
          int query = qt * BR + qi;
          int key = e < 2 ? key_a : key_b;
          float p = (key > query || query >= T || key >= T) ? 0.f : exp2f(st[nt][e] * scale_log2 - Ls[qi]);
          pv[e] = p;
          sv[e] = p * (dp[nt][e] - Dl[qi]);
        }
        pf[nt / 2][(nt & 1) * 2 + 0] = pack2(pv[0], pv[1]);
        pf[nt / 2][(nt & 1) * 2 + 1] = pack2(pv[2], pv[3]);
        sf[nt / 2][(nt & 1) * 2 + 0] = pack2(sv[0], sv[1]);
        sf[nt / 2][(nt & 1) * 2 + 1] = pack2(sv[2], sv[3]);
        // dSᵀ to smem for dQ: rows = keys (warp*16 + g, +8), cols = queries
        bf16* s0 = St + (warp * 16 + g) * (64 + PAD) + nt * 8 + 2 * tq;
        *reinterpret_cast<uint32_t*>(s0) = sf[nt / 2][(nt & 1) * 2 + 0];
        *reinterpret_cast<uint32_t*>(s0 + 8 * (64 + PAD)) = sf[nt / 2][(nt & 1) * 2 + 1];
      }
      // dV += Pᵀ·dO and dK += dSᵀ·Q: k = query (16 per step), n = feature
      for (int kk = 0; kk < BR / 16; kk++) {
        const bf16* d0 = Ds + (kk * 16 + 2 * tq) * LD;
        const bf16* q0 = Qs + (kk * 16 + 2 * tq) * LD;
        for (int nd = 0; nd < D / 8; nd++) {
          int col = nd * 8 + g;
          uint32_t bd[2] = {pack_bf(d0[col], d0[LD + col]), pack_bf(d0[8 * LD + col], d0[9 * LD + col])};
          mma16816(dva[nd], pf[kk], bd);
          uint32_t bq[2] = {pack_bf(q0[col], q0[LD + col]), pack_bf(q0[8 * LD + col], q0[9 * LD + col])};
          mma16816(dka[nd], sf[kk], bq);
        }
      }
      __syncthreads();
      // dQ[query, :] += Σ_key dS[query, key]·K[key, :]: the warp takes queries warp*16.., k = key
      {
        const int qa = qt * BR + warp * 16 + g, qb2 = qa + 8;
        const int qc = warp * 16 + g;
        for (int nd = 0; nd < D / 8; nd++) {
          float c[4] = {0.f, 0.f, 0.f, 0.f};
          int col = nd * 8 + g;
          for (int kk = 0; kk < BC / 16; kk++) {
            const bf16* s0 = St + (kk * 16 + 2 * tq) * (64 + PAD);
            const int L2 = 64 + PAD;
            uint32_t af[4] = {pack_bf(s0[qc], s0[L2 + qc]), pack_bf(s0[qc + 8], s0[L2 + qc + 8]),
                              pack_bf(s0[8 * L2 + qc], s0[9 * L2 + qc]),
                              pack_bf(s0[8 * L2 + qc + 8], s0[9 * L2 + qc + 8])};
            const bf16* k0 = Ks + (kk * 16 + 2 * tq) * LD;
            uint32_t bk[2] = {pack_bf(k0[col], k0[LD + col]), pack_bf(k0[8 * LD + col], k0[9 * LD + col])};
            mma16816(c, af, bk);
          }
          int dcol = nd * 8 + 2 * tq;
          if (qa < T) {
            float* dst = dq_acc + (((long)b * T + qa) * NH + h) * D + dcol;
            atomicAdd(dst, c[0] * scale);
            atomicAdd(dst + 1, c[1] * scale);
          }
          if (qb2 < T) {
            float* dst = dq_acc + (((long)b * T + qb2) * NH + h) * D + dcol;
            atomicAdd(dst, c[2] * scale);
            atomicAdd(dst + 1, c[3] * scale);
          }
        }
      }
    }
  }
  if (key_a < T) {
    long base = (((long)b * T + key_a) * NKV + kvh) * D;
    for (int nd = 0; nd < D / 8; nd++) {
      *reinterpret_cast<uint32_t*>(dk + base + nd * 8 + 2 * tq) = pack2(dka[nd][0] * scale, dka[nd][1] * scale);
      *reinterpret_cast<uint32_t*>(dv + base + nd * 8 + 2 * tq) = pack2(dva[nd][0], dva[nd][1]);
    }
  }
  if (key_b < T) {
    long base = (((long)b * T + key_b) * NKV + kvh) * D;
    for (int nd = 0; nd < D / 8; nd++) {
      *reinterpret_cast<uint32_t*>(dk + base + nd * 8 + 2 * tq) = pack2(dka[nd][2] * scale, dka[nd][3] * scale);
      *reinterpret_cast<uint32_t*>(dv + base + nd * 8 + 2 * tq) = pack2(dva[nd][2], dva[nd][3]);
    }
  }
}

extern "C" __global__ void f32_to_bf16(const float* x, bf16* y, long n) {
  long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = __float2bfloat16(x[i]);
}

// ------------------------------------------------------------------------------------- entry points
#define FOR_TYPES(M) M(f32, float) M(bf16, bf16)
#define ENTRIES(NAME, T)                                                                                    \
  extern "C" __global__ void rmsnorm_fwd_##NAME(const T* x, const T* w, T* y, int dim, float eps) {       \
    rmsnorm_fwd<T>(x, w, y, dim, eps);                                                                    \
  }                                                                                                       \
  extern "C" __global__ void rmsnorm_bwd_##NAME(const T* dy, const T* x, const T* w, T* dx, float* dw,     \
                                                int rows, int dim, float eps, int rpb) {                  \
    rmsnorm_bwd<T>(dy, x, w, dx, dw, rows, dim, eps, rpb);                                                \
  }                                                                                                       \
  extern "C" __global__ void rope_##NAME(const T* x, const float* c, const float* s, T* y, long pairs,     \
                                         int t_len, int heads, int half, float sign) {                    \
    rope<T>(x, c, s, y, pairs, t_len, heads, half, sign);                                                 \
  }                                                                                                       \
  extern "C" __global__ void swiglu_fwd_##NAME(const T* a, const T* b, T* y, long n) {                     \
    swiglu_fwd<T>(a, b, y, n);                                                                            \
  }                                                                                                       \
  extern "C" __global__ void swiglu_bwd_##NAME(const T* dy, const T* a, const T* b, T* da, T* db, long n) { \
    swiglu_bwd<T>(dy, a, b, da, db, n);                                                                   \
  }                                                                                                       \
  extern "C" __global__ void ce_fwd_##NAME(const T* z, const uint32_t* tg, float* ce, float* lse, int v) { \
    ce_fwd<T>(z, tg, ce, lse, v);                                                                         \
  }                                                                                                       \
  extern "C" __global__ void ce_bwd_##NAME(const T* z, const uint32_t* tg, const float* lse,               \
                                           const float* coef, T* dz, int v) {                             \
    ce_bwd<T>(z, tg, lse, coef, dz, v);                                                                   \
  }
FOR_TYPES(ENTRIES)

#define ATTN(DIM)                                                                                          \
  extern "C" __global__ void __launch_bounds__(128) flash_fwd_d##DIM(                                     \
      const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, int T, int NH, int NKV, float sl2) { \
    flash_fwd<DIM>(q, k, v, o, lse, T, NH, NKV, sl2);                                                     \
  }                                                                                                       \
  extern "C" __global__ void __launch_bounds__(128) flash_bwd_d##DIM(                                     \
      const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse, const float* delta, \
      float* dq_acc, bf16* dk, bf16* dv, int T, int NH, int NKV, float sl2, float scale) {                \
    flash_bwd<DIM>(q, k, v, dout, lse, delta, dq_acc, dk, dv, T, NH, NKV, sl2, scale);                    \
  }
ATTN(64)
ATTN(128)

extern "C" __global__ void flash_delta(const bf16* o, const bf16* dout, float* delta, long rows, int T, int NH,
                                       int D) {
  flash_bwd_delta(o, dout, delta, rows, T, NH, D);
}
