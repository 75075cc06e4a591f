// Causal grouped-query flash attention forward for Hopper (sm_90a), bf16, head dim D ∈ {64, 128}: the same
// contract as flash_fwd_d* of attention.cuh (q/o [B, T, NH, D], k/v [B, T, NKV, D], lse [B, NH, T] in units
// of log2 of the scaled scores), built on warpgroup MMA (wgmma) instead of mma.sync. Compiled to its own
// PTX module for compute_90a by host/build.rs; the host uses it on compute capability 9.x for D = 128
// (on an H100 it takes 0.89–0.90× the mma.sync kernel's time there, but 1.09–1.14× at D = 64).
//
// A CTA of WGS warpgroups takes 64·WGS query rows of one head; each warpgroup owns 64 of them. Tiles of
// BN = 128 keys stream through two shared-memory stages each of K and V (cp.async, all threads load).
// Per key tile:
//   S = Q·Kᵀ   wgmma m64n128k16, Q and K both K-major in shared memory        (D/16 instructions)
//   online softmax on S in registers (exp2, running max m and sum l per row)
//   O += P·V   wgmma m64nDk16, P from registers (the S accumulators packed to bf16 are exactly the
//              A fragments), V MN-major in shared memory (transposed operand)    (BN/16 instructions)
//
// Shared-memory tiles and their descriptors: the 128-byte swizzle of sm90.cuh (Q, K K-major; V MN-major).
// The backward (attention_sm90_bwd.cuh) is included at the end.
#include "sm90.cuh"

#define SM90_BN 128

// One thread's two rows (a = g, b = g + 8 of its warp's 16) and their running softmax statistics.
struct Rows {
  int a, b;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;
};

// Online softmax of one score tile S [64 × BN] (wgmma accumulator layout) whose first key is key0: masks
// keys past the row (causal) or past T where `masked`, updates the statistics, writes P = 2^(S·scale − m) as
// bf16 A fragments pf[BN/16][4], and returns the factors al_a, al_b that rescale the rows' old output.
template <int BN>
__device__ __forceinline__ void softmax_tile(float* s, uint32_t (*pf)[4], Rows& r, bool masked, int key0, int T,
                                             int tq, float scale_log2, float& al_a, float& al_b) {
  float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
  for (int j = 0; j < BN / 8; j++) {
#pragma unroll
    for (int e = 0; e < 4; e++) {
      int key = key0 + j * 8 + 2 * tq + (e & 1);
      int row = e < 2 ? r.a : r.b;
      if (masked && (key > row || key >= T)) s[4 * j + e] = -INFINITY;
    }
    mx_a = fmaxf(mx_a, fmaxf(s[4 * j], s[4 * j + 1]));
    mx_b = fmaxf(mx_b, fmaxf(s[4 * j + 2], s[4 * j + 3]));
  }
#pragma unroll
  for (int o2 = 1; o2 <= 2; o2 <<= 1) {
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffff, mx_a, o2));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffff, mx_b, o2));
  }
  // statistics in units of the scaled scores (scale_log2 > 0 keeps the order; −∞ stays −∞)
  float mn_a = fmaxf(r.m_a, mx_a * scale_log2), mn_b = fmaxf(r.m_b, mx_b * scale_log2);
  float base_a = mn_a == -INFINITY ? 0.f : mn_a, base_b = mn_b == -INFINITY ? 0.f : mn_b;
  al_a = exp2_ftz(r.m_a - base_a);
  al_b = exp2_ftz(r.m_b - base_b);
  r.m_a = mn_a;
  r.m_b = mn_b;
  float rs_a = 0.f, rs_b = 0.f;
#pragma unroll
  for (int j = 0; j < BN / 8; j++) {
    // p = 2^(s·scale − m): one FFMA and one MUFU.EX2 per score
    float p0 = exp2_ftz(fmaf(s[4 * j], scale_log2, -base_a)), p1 = exp2_ftz(fmaf(s[4 * j + 1], scale_log2, -base_a));
    float p2 = exp2_ftz(fmaf(s[4 * j + 2], scale_log2, -base_b)), p3 = exp2_ftz(fmaf(s[4 * j + 3], scale_log2, -base_b));
    rs_a += p0 + p1;
    rs_b += p2 + p3;
    pf[j / 2][(j & 1) * 2 + 0] = pack2(p0, p1);
    pf[j / 2][(j & 1) * 2 + 1] = pack2(p2, p3);
  }
  r.l_a = r.l_a * al_a + rs_a;
  r.l_b = r.l_b * al_b + rs_b;
}

// acc [64 × D] accumulator rows a and b times al_a and al_b.
template <int D> __device__ __forceinline__ void rescale(float* acc, float al_a, float al_b) {
#pragma unroll
  for (int j = 0; j < D / 8; j++) {
    acc[4 * j] *= al_a;
    acc[4 * j + 1] *= al_a;
    acc[4 * j + 2] *= al_b;
    acc[4 * j + 3] *= al_b;
  }
}

// S = Q·Kᵀ for this warpgroup's 64 rows: D/16 wgmma (not committed).
template <int D, int BM, int BN>
__device__ __forceinline__ void issue_scores(float* s, const unsigned char* sq, const unsigned char* sk, int wg) {
#pragma unroll
  for (int kk = 0; kk < D / 16; kk++) {
    const int half = kk >> 2, col = (kk & 3) * 32;
    uint64_t da = sw128_desc(sq + half * (BM * 128) + wg * 64 * 128 + col, 16, 1024);
    uint64_t db = sw128_desc(sk + half * (BN * 128) + col, 16, 1024);
    wgmma_ss_n128(s, da, db, kk > 0);
  }
}

// O += P·V: BN/16 wgmma (not committed).
template <int D, int BN>
__device__ __forceinline__ void issue_pv(float* acc, const uint32_t (*pf)[4], const unsigned char* sv) {
#pragma unroll
  for (int kk = 0; kk < BN / 16; kk++)
    wgmma_rs_tb<D>(acc, pf[kk], sw128_desc(sv + kk * 16 * 128, BN * 128, 1024));
}

// o = acc / l for rows a and b (those below T) and lse = m + log2 l.
template <int D>
__device__ __forceinline__ void store_rows(const float* acc, Rows& r, bf16* o, float* lse, int b, int h, int T,
                                           int NH, int tq) {
#pragma unroll
  for (int o2 = 1; o2 <= 2; o2 <<= 1) {
    r.l_a += __shfl_xor_sync(0xffffffff, r.l_a, o2);
    r.l_b += __shfl_xor_sync(0xffffffff, r.l_b, o2);
  }
  float inv_a = r.l_a > 0.f ? 1.f / r.l_a : 0.f, inv_b = r.l_b > 0.f ? 1.f / r.l_b : 0.f;
  if (r.a < T) {
    bf16* oa = o + (((long)b * T + r.a) * NH + h) * D;
#pragma unroll
    for (int j = 0; j < D / 8; j++)
      *reinterpret_cast<uint32_t*>(oa + j * 8 + 2 * tq) = pack2(acc[4 * j] * inv_a, acc[4 * j + 1] * inv_a);
    if (tq == 0) lse[((long)b * NH + h) * T + r.a] = r.m_a + log2f(r.l_a);
  }
  if (r.b < T) {
    bf16* ob = o + (((long)b * T + r.b) * NH + h) * D;
#pragma unroll
    for (int j = 0; j < D / 8; j++)
      *reinterpret_cast<uint32_t*>(ob + j * 8 + 2 * tq) = pack2(acc[4 * j + 2] * inv_b, acc[4 * j + 3] * inv_b);
    if (tq == 0) lse[((long)b * NH + h) * T + r.b] = r.m_b + log2f(r.l_b);
  }
}

// The shared-memory carve of one CTA: 1024-aligned Q tile, then two K stages, then two V stages.
template <int D, int BM, int BN> struct Smem {
  unsigned char* q;
  __device__ Smem(unsigned char* raw) : q(align1024(raw)) {}
  __device__ unsigned char* k(int stage) const { return q + BM * D * 2 + stage * (BN * D * 2); }
  __device__ unsigned char* v(int stage) const { return q + BM * D * 2 + (2 + stage) * (BN * D * 2); }
};

// Forward: grid (ceil(T / (64·WGS)), NH, B), 128·WGS threads; dynamic smem 1024 (alignment) + the Q tile
// + two K and two V stages. The softmax of tile j overlaps O += P_{j−1}·V_{j−1} (FlashAttention-3's
// intra-warpgroup pipelining): S_j and that product are issued together; the softmax waits only for
// S_j. K_j sits in K stage j mod 2, V_j in V stage j mod 2; at the top of iteration j (one
// barrier) every thread is done with iteration j − 1, so K_{j+1} and V_j are queued into the stages K_{j−1}
// and V_{j−2} left.
template <int D, int WGS>
__device__ void flash_fwd_sm90(const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, int T,
                               int NH, int NKV, float scale_log2) {
  constexpr int BM = 64 * WGS, BN = SM90_BN;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Smem<D, BM, BN> sm(smem_raw);
  // the longest query tiles (most key tiles under the causal mask) first: the last wave is short ones
  const int qt = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int kvh = h / (NH / NKV);
  const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, tq = lane & 3;
  const int q0 = qt * BM, wg_row0 = q0 + wg * 64;
  Rows r;
  r.a = wg_row0 + warp * 16 + (lane >> 2);
  r.b = r.a + 8;
  const int last = min((q0 + BM - 1) / BN, (T - 1) / BN);
  tile_sw128<D, BM>(sm.q, q, b, q0, h, T, NH);
  tile_sw128<D, BN>(sm.k(0), k, b, 0, kvh, T, NKV);
  cp_commit();
  float acc[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; i++) acc[i] = 0.f;
  uint32_t pprev[BN / 16][4];
  for (int kt = 0; kt <= last; kt++) {
    cp_wait<0>();  // K_kt and V_{kt−1}
    fence_async_shared();
    __syncthreads();
    if (kt < last) tile_sw128<D, BN>(sm.k((kt + 1) & 1), k, b, (kt + 1) * BN, kvh, T, NKV);
    tile_sw128<D, BN>(sm.v(kt & 1), v, b, kt * BN, kvh, T, NKV);
    cp_commit();
    float s[BN / 2];
    wgmma_fence();
    issue_scores<D, BM, BN>(s, sm.q, sm.k(kt & 1), wg);
    wgmma_commit();
    if (kt > 0) {
      issue_pv<D, BN>(acc, pprev, sm.v((kt - 1) & 1));
      wgmma_commit();
      wgmma_wait<1>();
    } else {
      wgmma_wait<0>();
    }
    fence_regs<BN / 2>(s);
    const bool masked = kt * BN + BN - 1 > wg_row0 || (kt + 1) * BN > T;
    uint32_t pf[BN / 16][4];
    float al_a, al_b;
    softmax_tile<BN>(s, pf, r, masked, kt * BN, T, tq, scale_log2, al_a, al_b);
    wgmma_wait<0>();
    fence_regs<D / 2>(acc);
    rescale<D>(acc, al_a, al_b);
#pragma unroll
    for (int i = 0; i < BN / 16; i++)
#pragma unroll
      for (int e = 0; e < 4; e++) pprev[i][e] = pf[i][e];
  }
  cp_wait<0>();  // V_last
  fence_async_shared();
  __syncthreads();
  wgmma_fence();
  issue_pv<D, BN>(acc, pprev, sm.v(last & 1));
  wgmma_commit();
  wgmma_wait<0>();
  fence_regs<D / 2>(acc);
  store_rows<D>(acc, r, o, lse, b, h, T, NH, tq);
}

// Warpgroups per CTA (query rows = 64 × this) by head dim; host/src/kernels/attention.rs launches
// SM90_ROWS = 128 rows (2 warpgroups).
#define SM90_WGS_64 2
#define SM90_WGS_128 2

#define SM90_FWD(DIM)                                                                                        \
  extern "C" __global__ void __launch_bounds__(128 * SM90_WGS_##DIM, 1)                                      \
      flash_fwd_sm90_d##DIM(const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, int T, int NH,  \
                            int NKV, float scale_log2) {                                                     \
    flash_fwd_sm90<DIM, SM90_WGS_##DIM>(q, k, v, o, lse, T, NH, NKV, scale_log2);                            \
  }
SM90_FWD(64)
SM90_FWD(128)

#include "attention_sm90_ws.cuh"
#include "attention_sm90_bwd.cuh"
