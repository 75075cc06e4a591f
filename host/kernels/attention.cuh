// Causal grouped-query flash attention for bf16, head dim D ∈ {64, 128} (included by fused.cu).
// q/o [B, T, NH, D], k/v [B, T, NKV, D]; query head h reads kv head h / (NH/NKV).
// Tiles of 64 queries × 64 keys; 4 warps of 16 rows; tensor-core mma.sync m16n8k16 (bf16 → f32);
// fragments loaded with ldmatrix (.trans where the operand is stored k-major); K/V (and Q/dO) tiles
// double-buffered with cp.async. lse [B, NH, T] is in units of log2 of the scaled scores.
//
// Forward  : o = softmax(q·kᵀ/√D)·v row by row (online softmax), lse kept.
// Backward : delta = rowsum(o ⊙ do); kernel dkdv (one CTA per key tile, loops over query tiles and the
//            group's query heads): Pᵀ, dPᵀ = V·dOᵀ, dSᵀ = Pᵀ ⊙ (dPᵀ − delta), dV += Pᵀ·dO, dK += dSᵀ·Q in
//            registers; dSᵀ goes to shared memory (over the spent dO tile) and dQ += dS·K is added into an
//            f32 buffer with atomics — five T²·D products (FlashAttention-2's count); then dq = bf16(acc·scale).
//
// mma.sync m16n8k16 fragment layout (g = lane/4, t = lane%4):
//   A (16×16): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B (16×8):  b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g);   C: c0,c1 = (g, 2t..), c2,c3 = (g+8, 2t..)
// so the C fragments of two adjacent n-tiles, packed to bf16, are the A fragment of the next product.

#include "async_copy.cuh"

#define BR 64
#define BC 64
#define PAD 8

__device__ __forceinline__ void mma16816(float* c, const uint32_t* a, const uint32_t* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ uint32_t ld32(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }
__device__ __forceinline__ void ldsm4(uint32_t* r, const bf16* p) {
  uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void ldsm4t(uint32_t* r, const bf16* p) {
  uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

// Queues the copy of rows [row0, row0+64) of a [B, T, heads, D] tensor (head h) into smem [64][D+PAD];
// rows past T are zero-filled.
template <int D>
__device__ __forceinline__ void tile_async(bf16* s, const bf16* g, int b, int row0, int h, int T, int heads) {
  const int chunks = D / 8;
  for (int i = threadIdx.x; i < 64 * chunks; i += blockDim.x) {
    int r = i / chunks, c = (i % chunks) * 8;
    int t = row0 + r;
    const bf16* src = g + (((long)b * T + min(t, T - 1)) * heads + h) * D + c;
    cp16(s + r * (D + PAD) + c, src, t < T);
  }
}

// A fragment (rows r0.., cols c0..) of a row-major smem tile with leading dimension ld.
__device__ __forceinline__ void frag_a(uint32_t* r, const bf16* s, int ld, int r0, int c0, int lane) {
  ldsm4(r, s + (r0 + (lane & 7) + 8 * ((lane >> 3) & 1)) * ld + c0 + 8 * (lane >> 4));
}
// B fragments of two n-tiles (n0, n0+8) × k-step k0 from n-major storage s[n][k]: r0,r1 | r2,r3.
__device__ __forceinline__ void frag_b_nmajor(uint32_t* r, const bf16* s, int ld, int n0, int k0, int lane) {
  ldsm4(r, s + (n0 + (lane & 7) + 8 * (lane >> 4)) * ld + k0 + 8 * ((lane >> 3) & 1));
}
// B fragments of two n-tiles (n0, n0+8) × k-step k0 from k-major storage s[k][n] (transposed load).
__device__ __forceinline__ void frag_b_kmajor(uint32_t* r, const bf16* s, int ld, int n0, int k0, int lane) {
  ldsm4t(r, s + (k0 + (lane & 7) + 8 * ((lane >> 3) & 1)) * ld + n0 + 8 * (lane >> 4));
}

// Loads a warp's 16 rows (row_a = g, row_b = g+8) of a [B, T, heads, D] tensor as A fragments.
template <int D>
__device__ __forceinline__ void rows_to_frags(uint32_t (*f)[4], const bf16* g, int b, int row_a, int h, int T,
                                              int heads, int tq) {
  const int row_b = row_a + 8;
  const bf16* pa = g + (((long)b * T + min(row_a, T - 1)) * heads + h) * D;
  const bf16* pb = g + (((long)b * T + min(row_b, T - 1)) * heads + h) * D;
  for (int kk = 0; kk < D / 16; kk++) {
    f[kk][0] = row_a < T ? ld32(pa + 16 * kk + 2 * tq) : 0;
    f[kk][1] = row_b < T ? ld32(pb + 16 * kk + 2 * tq) : 0;
    f[kk][2] = row_a < T ? ld32(pa + 16 * kk + 8 + 2 * tq) : 0;
    f[kk][3] = row_b < T ? ld32(pb + 16 * kk + 8 + 2 * tq) : 0;
  }
}

// Scales a warp's 16 × 64 score fragment to log2 units and takes each row's maximum (mx_a: row g, mx_b: row
// g+8). MASKED: a score whose key offset nt·8 + (e&1) (relative to the lane's first column) is ≥ the row's
// limit (keys ≤ the row and < T pass) becomes −∞ — one compare a score, and none in unmasked tiles.
template <bool MASKED>
__device__ __forceinline__ void scale_mask_max(float (*s)[4], float scale_log2, int limit_a, int limit_b,
                                               float& mx_a, float& mx_b) {
  for (int nt = 0; nt < BC / 8; nt++) {
    for (int e = 0; e < 4; e++) {
      float val = s[nt][e] * scale_log2;
      if (MASKED && nt * 8 + (e & 1) >= (e < 2 ? limit_a : limit_b)) val = -INFINITY;
      s[nt][e] = val;
    }
    mx_a = fmaxf(mx_a, fmaxf(s[nt][0], s[nt][1]));
    mx_b = fmaxf(mx_b, fmaxf(s[nt][2], s[nt][3]));
  }
}

// Forward: grid (ceil(T/64), NH, B), 128 threads; dynamic smem 2 buffers × (K, V) × 64 × (D+PAD) bf16.
template <int D>
__device__ void flash_fwd(const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, int T, int NH,
                          int NKV, float scale_log2) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int LD = D + PAD, TILE = 64 * LD;
  bf16* sm = reinterpret_cast<bf16*>(smem_raw);  // [buf][K | V]
  // the longest query tiles (most key tiles under the causal mask) first: the last wave is short ones
  const int qt = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int kvh = h / (NH / NKV);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, tq = lane & 3;
  const int row_a = qt * BR + warp * 16 + (lane >> 2), row_b = row_a + 8;
  const int last = min(qt, (T - 1) / BC);
  tile_async<D>(sm, k, b, 0, kvh, T, NKV);
  tile_async<D>(sm + TILE, v, b, 0, kvh, T, NKV);
  cp_commit();
  uint32_t qf[D / 16][4];
  rows_to_frags<D>(qf, q, b, row_a, h, T, NH, tq);
  float acc[D / 8][4];
  for (int i = 0; i < D / 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;
  for (int kt = 0; kt <= last; kt++) {
    bf16* Ks = sm + (kt & 1) * 2 * TILE;
    bf16* Vs = Ks + TILE;
    if (kt < last) {  // prefetch the next tile into the other buffer
      bf16* nk = sm + ((kt + 1) & 1) * 2 * TILE;
      tile_async<D>(nk, k, b, (kt + 1) * BC, kvh, T, NKV);
      tile_async<D>(nk + TILE, v, b, (kt + 1) * BC, kvh, T, NKV);
      cp_commit();
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    __syncthreads();
    float s[BC / 8][4];
    for (int i = 0; i < BC / 8; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
    for (int kk = 0; kk < D / 16; kk++)
      for (int n2 = 0; n2 < BC / 16; n2++) {
        uint32_t kb[4];
        frag_b_nmajor(kb, Ks, LD, n2 * 16, kk * 16, lane);
        mma16816(s[2 * n2], qf[kk], kb);
        mma16816(s[2 * n2 + 1], qf[kk], kb + 2);
      }
    float mx_a = -INFINITY, mx_b = -INFINITY;
    if (kt == last)  // only the last tile crosses the diagonal or T: the others take no compare at all
      scale_mask_max<true>(s, scale_log2, min(row_a + 1, T) - kt * BC - 2 * tq, min(row_b + 1, T) - kt * BC - 2 * tq,
                           mx_a, mx_b);
    else
      scale_mask_max<false>(s, scale_log2, 0, 0, mx_a, mx_b);
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
    for (int kk = 0; kk < BC / 16; kk++)
      for (int n2 = 0; n2 < D / 16; n2++) {
        uint32_t vb[4];
        frag_b_kmajor(vb, Vs, LD, n2 * 16, kk * 16, lane);
        mma16816(acc[2 * n2], pf[kk], vb);
        mma16816(acc[2 * n2 + 1], pf[kk], vb + 2);
      }
    __syncthreads();  // the buffer is refilled two iterations on
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
    delta[(bt / T * NH + h) * T + bt % T] = s;
  }
}

// A fragments (rows m0.., k-step k0) of a tile stored k-major, s[k][m] (transposed load).
__device__ __forceinline__ void frag_a_kmajor(uint32_t* r, const bf16* s, int ld, int m0, int k0, int lane) {
  ldsm4t(r, s + (k0 + (lane & 7) + 8 * (lane >> 4)) * ld + m0 + 8 * ((lane >> 3) & 1));
}

// A warp's share of dQ for one (key tile, query tile): its 16 queries (m0 = 16·warp of the tile, global row
// row0) × D of dS·K, from dSᵀ [64 keys][64 queries] and K [64 keys][D] in shared memory, added into the f32
// dq_acc [B, T, NH, D] with float2 atomics, 64 columns at a time.
template <int D>
__device__ __forceinline__ void dq_tile_atomic(const bf16* Ss, const bf16* Ks, int ld, float* dq_acc, int b,
                                               int row0, int h, int T, int NH, int warp, int lane) {
  const int g = lane >> 2, tq = lane & 3;
  const int ra = row0 + g, rb = ra + 8;
  float* pa = dq_acc + (((long)b * T + ra) * NH + h) * D;
  float* pb = dq_acc + (((long)b * T + rb) * NH + h) * D;
  for (int c0 = 0; c0 < D; c0 += 64) {
    float acc[8][4];
    for (int i = 0; i < 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
    for (int kk = 0; kk < BC / 16; kk++) {
      uint32_t a[4];
      frag_a_kmajor(a, Ss, ld, warp * 16, kk * 16, lane);
      for (int n2 = 0; n2 < 4; n2++) {
        uint32_t kb[4];
        frag_b_kmajor(kb, Ks, ld, c0 + n2 * 16, kk * 16, lane);
        mma16816(acc[2 * n2], a, kb);
        mma16816(acc[2 * n2 + 1], a, kb + 2);
      }
    }
    for (int nt = 0; nt < 8; nt++) {
      int c = c0 + nt * 8 + 2 * tq;
      if (ra < T) atomicAdd(reinterpret_cast<float2*>(pa + c), make_float2(acc[nt][0], acc[nt][1]));
      if (rb < T) atomicAdd(reinterpret_cast<float2*>(pb + c), make_float2(acc[nt][2], acc[nt][3]));
    }
  }
}

// A warp's Pᵀ and dSᵀ fragments for 16 keys × 64 queries, packed to bf16 as the A operands of dV += Pᵀ·dO
// and dK += dSᵀ·Q: p = exp2(s·scale_log2 − lse[query]), ds = p·(dp − delta[query]). MASKED: p = 0 where
// key > query, query ≥ T or key ≥ T (query0 = the lane's first query, keys key_a/key_b); unmasked tiles
// take no compares.
template <bool MASKED>
__device__ __forceinline__ void probs_and_dscores_t(uint32_t (*pf)[4], uint32_t (*sf)[4], const float (*st)[4],
                                                    const float (*dp)[4], const float* Ls, const float* Dl,
                                                    float scale_log2, int query0, int key_a, int key_b, int T,
                                                    int tq) {
  for (int nt = 0; nt < BR / 8; nt++) {
    float pv[4], sv[4];
    for (int e = 0; e < 4; e++) {
      int qi = nt * 8 + 2 * tq + (e & 1);
      float p = exp2f(st[nt][e] * scale_log2 - Ls[qi]);
      if (MASKED) {
        int query = query0 + nt * 8 + (e & 1), key = e < 2 ? key_a : key_b;
        if (key > query || query >= T || key >= T) p = 0.f;
      }
      pv[e] = p;
      sv[e] = p * (dp[nt][e] - Dl[qi]);
    }
    pf[nt / 2][(nt & 1) * 2 + 0] = pack2(pv[0], pv[1]);
    pf[nt / 2][(nt & 1) * 2 + 1] = pack2(pv[2], pv[3]);
    sf[nt / 2][(nt & 1) * 2 + 0] = pack2(sv[0], sv[1]);
    sf[nt / 2][(nt & 1) * 2 + 1] = pack2(sv[2], sv[3]);
  }
}

// dK, dV: grid (ceil(T/64) key tiles, NKV, B), 128 threads (4 warps × 16 keys); dynamic smem: K, V and two
// buffers of (Q, dO) tiles, plus lse/delta of the query tile. dk/dv [B, T, NKV, D]; `scale` = 1/√D.
template <int D>
__device__ void flash_bwd_dkdv(const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse,
                               const float* delta, bf16* dk, bf16* dv, float* dq_acc, int T, int NH, int NKV,
                               float scale_log2, float scale) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int LD = D + PAD, TILE = 64 * LD;
  bf16* Ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* Vs = Ks + TILE;
  bf16* QD = Vs + TILE;  // [buf][Q | dO]
  float* LS = reinterpret_cast<float*>(QD + 4 * TILE);  // [buf][lse 64 | delta 64]
  const int kt = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
  const int rep = NH / NKV;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, tq = lane & 3;
  const int key_a = kt * BC + warp * 16 + (lane >> 2), key_b = key_a + 8;
  const int n_qt = (T + BR - 1) / BR;
  const int iters = rep * (n_qt - kt);  // (query head, query tile) pairs, query tiles from the diagonal
  tile_async<D>(Ks, k, b, kt * BC, kvh, T, NKV);
  tile_async<D>(Vs, v, b, kt * BC, kvh, T, NKV);
  auto issue = [&](int it) {
    int h = kvh * rep + it / (n_qt - kt), qt = kt + it % (n_qt - kt);
    bf16* buf = QD + (it & 1) * 2 * TILE;
    tile_async<D>(buf, q, b, qt * BR, h, T, NH);
    tile_async<D>(buf + TILE, dout, b, qt * BR, h, T, NH);
    float* ls = LS + (it & 1) * 128;
    for (int i = threadIdx.x; i < 64; i += blockDim.x) {
      int t = qt * BR + i;
      ls[i] = t < T ? lse[((long)b * NH + h) * T + t] : 0.f;
      ls[64 + i] = t < T ? delta[((long)b * NH + h) * T + t] : 0.f;
    }
  };
  issue(0);
  cp_commit();
  float dka[D / 8][4], dva[D / 8][4];
  for (int i = 0; i < D / 8; i++)
    for (int e = 0; e < 4; e++) dka[i][e] = dva[i][e] = 0.f;
  for (int it = 0; it < iters; it++) {
    const int qt = kt + it % (n_qt - kt), h = kvh * rep + it / (n_qt - kt);
    if (it + 1 < iters) {
      issue(it + 1);
      cp_commit();
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    __syncthreads();
    const bf16* Qs = QD + (it & 1) * 2 * TILE;
    const bf16* Ds = Qs + TILE;
    const float* Ls = LS + (it & 1) * 128;
    const float* Dl = Ls + 64;
    float st[BR / 8][4], dp[BR / 8][4];
    for (int nt = 0; nt < BR / 8; nt++)
      for (int e = 0; e < 4; e++) st[nt][e] = dp[nt][e] = 0.f;
    for (int kk = 0; kk < D / 16; kk++) {
      uint32_t ka[4], va[4];
      frag_a(ka, Ks, LD, warp * 16, kk * 16, lane);
      frag_a(va, Vs, LD, warp * 16, kk * 16, lane);
      for (int n2 = 0; n2 < BR / 16; n2++) {
        uint32_t qb[4], db[4];
        frag_b_nmajor(qb, Qs, LD, n2 * 16, kk * 16, lane);
        frag_b_nmajor(db, Ds, LD, n2 * 16, kk * 16, lane);
        mma16816(st[2 * n2], ka, qb);
        mma16816(st[2 * n2 + 1], ka, qb + 2);
        mma16816(dp[2 * n2], va, db);
        mma16816(dp[2 * n2 + 1], va, db + 2);
      }
    }
    uint32_t pf[BR / 16][4], sf[BR / 16][4];
    // only the diagonal tile and tiles crossing T need the mask
    if (qt == kt || (qt + 1) * BR > T || (kt + 1) * BC > T)
      probs_and_dscores_t<true>(pf, sf, st, dp, Ls, Dl, scale_log2, qt * BR + 2 * tq, key_a, key_b, T, tq);
    else
      probs_and_dscores_t<false>(pf, sf, st, dp, Ls, Dl, scale_log2, 0, 0, 0, T, tq);
    for (int kk = 0; kk < BR / 16; kk++)
      for (int n2 = 0; n2 < D / 16; n2++) {
        uint32_t bd[4], bq[4];
        frag_b_kmajor(bd, Ds, LD, n2 * 16, kk * 16, lane);
        frag_b_kmajor(bq, Qs, LD, n2 * 16, kk * 16, lane);
        mma16816(dva[2 * n2], pf[kk], bd);
        mma16816(dva[2 * n2 + 1], pf[kk], bd + 2);
        mma16816(dka[2 * n2], sf[kk], bq);
        mma16816(dka[2 * n2 + 1], sf[kk], bq + 2);
      }
    __syncthreads();  // every warp is done with this dO tile: it now holds dSᵀ [64 keys][64 queries]
    bf16* Ss = const_cast<bf16*>(Ds);
    for (int nt = 0; nt < BR / 8; nt++) {
      *reinterpret_cast<uint32_t*>(Ss + (warp * 16 + (lane >> 2)) * LD + nt * 8 + 2 * tq) = sf[nt / 2][(nt & 1) * 2];
      *reinterpret_cast<uint32_t*>(Ss + (warp * 16 + 8 + (lane >> 2)) * LD + nt * 8 + 2 * tq) =
          sf[nt / 2][(nt & 1) * 2 + 1];
    }
    __syncthreads();
    dq_tile_atomic<D>(Ss, Ks, LD, dq_acc, b, qt * BR + warp * 16, h, T, NH, warp, lane);
    __syncthreads();  // this buffer is refilled by the next iteration's prefetch
  }
  for (int half = 0; half < 2; half++) {
    int key = half ? key_b : key_a;
    if (key >= T) continue;
    long base = (((long)b * T + key) * NKV + kvh) * D;
    for (int nd = 0; nd < D / 8; nd++) {
      *reinterpret_cast<uint32_t*>(dk + base + nd * 8 + 2 * tq) =
          pack2(dka[nd][2 * half] * scale, dka[nd][2 * half + 1] * scale);
      *reinterpret_cast<uint32_t*>(dv + base + nd * 8 + 2 * tq) = pack2(dva[nd][2 * half], dva[nd][2 * half + 1]);
    }
  }
}

// dQ from the f32 accumulator the dK/dV kernel filled: dq = bf16(dq_acc · scale), n elements.
__device__ void flash_dq_convert(const float* acc, bf16* dq, long n, float scale) {
  long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) dq[i] = __float2bfloat16(acc[i] * scale);
}

// Second launch bounds: resident blocks per SM the registers must allow. The forward's: 3 for D = 128 (at
// most 170 registers a thread, 3 × 69.6 KB of shared memory), 4 for D = 64.
#define FWD_MIN_BLOCKS_64 4
#define FWD_MIN_BLOCKS_128 3
// The dK/dV/dQ kernel's: 3 for D = 64 (≤ 170 registers, 3 × 56 KB shared memory); for D = 128 its 6 tiles
// (105 KB) allow 2, which 255 registers allow too.
#define BWD_MIN_BLOCKS_64 3
#define BWD_MIN_BLOCKS_128 2

#define ATTN(DIM)                                                                                          \
  extern "C" __global__ void __launch_bounds__(128, FWD_MIN_BLOCKS_##DIM) flash_fwd_d##DIM(               \
      const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, int T, int NH, int NKV, float sl2) { \
    flash_fwd<DIM>(q, k, v, o, lse, T, NH, NKV, sl2);                                                     \
  }                                                                                                       \
  extern "C" __global__ void __launch_bounds__(128, BWD_MIN_BLOCKS_##DIM) flash_bwd_dkdv_d##DIM(                                \
      const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse, const float* delta, \
      bf16* dk, bf16* dv, float* dq_acc, int T, int NH, int NKV, float sl2, float scale) {                \
    flash_bwd_dkdv<DIM>(q, k, v, dout, lse, delta, dk, dv, dq_acc, T, NH, NKV, sl2, scale);               \
  }
ATTN(64)
ATTN(128)

extern "C" __global__ void flash_dq_from_acc(const float* acc, bf16* dq, long n, float scale) {
  flash_dq_convert(acc, dq, n, scale);
}
extern "C" __global__ void flash_delta(const bf16* o, const bf16* dout, float* delta, long rows, int T, int NH,
                                       int D) {
  flash_bwd_delta(o, dout, delta, rows, T, NH, D);
}
