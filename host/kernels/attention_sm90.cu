// Causal grouped-query flash attention forward for Hopper (sm_90a), bf16, head dim D ∈ {64, 128}: the same
// contract as flash_fwd_d* of attention.cuh (q/o [B, T, NH, D], k/v [B, T, NKV, D], lse [B, NH, T] in units
// of log2 of the scaled scores), built on warpgroup MMA (wgmma) and the tensor-memory accelerator (TMA)
// instead of mma.sync and cp.async. Compiled into its own module for sm_90a by host/build.rs; the host
// uses it on compute capability 9.x at both head dims (host/src/kernels/attention_cuda_fwd.rs).
//
// Warp-specialised, as FlashAttention-3: a CTA of 1 + NC warpgroups takes 64·NC query rows of one head
// (NC = WS_CONSUMERS_<D>: 3 at head dim 64, 2 at 128).
//   warpgroup 0, the producer, gives its registers up (setmaxnreg 24) and one of its threads issues the TMA
//     loads: the Q tile once, then K_j and V_j of every key tile (BN = 128 keys) into WS_STAGES_<D> stages each,
//     waiting on a stage's "empty" mbarrier before refilling it;
//   warpgroups 1..NC, the consumers (setmaxnreg 240 for NC = 2, 160 for 3), take 64 query rows each. Per key
//     tile j:
//     S_j = Q·K_jᵀ   wgmma m64n128k16, Q and K both K-major in shared memory           (D/16 instructions)
//     O += P_{j−1}·V_{j−1}  wgmma m64nDk16, P from registers (the S accumulators packed to bf16 are exactly
//                    the A fragments), V MN-major in shared memory (transposed operand)  (BN/16 instructions)
//     both issued together; K_j's stage is released once S_j is done, and the online softmax of S_j
//     (one FFMA and one ex2 per score, running max m and sum l per row; the causal/T mask only in tiles
//     that cross this warpgroup's diagonal or T) runs while the P·V product does
//     (intra-warpgroup overlap); then V_{j−1}'s stage is released, O rescaled, and P_j packed to bf16 into
//     the registers P_{j−1} held — only now: wgmma reads its register operand asynchronously, and packing
//     during the softmax (as this kernel once did) let ptxas overwrite P_{j−1} while P·V still read it.
// No __syncthreads after set-up: every hand-over is an mbarrier. Shared-memory tiles are in the 128-byte
// swizzle of sm90.cuh, which TMA's SWIZZLE_128B writes. Measured and dropped: the two consumers taking turns
// on the tensor cores (FlashAttention-3's ping-pong, named barriers) was 1.05–1.18× slower on an H100; a
// share of the exponentials on the FMA pipe (a cubic for 2^f, every 8th to every 2nd column block) was
// 1.01–1.11× slower on an H200 — the softmax phase dominates a tile (WS_PHASE hooks below) but not by the
// MUFU's throughput; the row maxima and sums in four partial chains instead of one were 0.94–1.02× on an
// H100 (noise at head dim 128, slower at 64).
// The backward (attention_sm90_bwd.cuh) is included at the end.
#include "sm90.cuh"
#include "tma.cuh"

#define SM90_BN 128

// One thread's two rows (a = g, b = g + 8 of its warp's 16) and their running softmax statistics.
struct Rows {
  int a, b;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;
};

// Online softmax of one score tile S [64 × BN] (wgmma accumulator layout) whose first key is key0: masks
// keys past the row (causal) or past T where MASKED, updates the statistics, overwrites S with
// P = 2^(S·scale − m) (f32; pack_p makes the A fragments once the registers they go into are free), and
// returns the factors al_a, al_b that rescale the rows' old output. The caller picks MASKED per tile under a
// branch: only tiles that cross the diagonal or T pay the mask (a compare and a select a score; with the
// mask under a run-time flag ptxas predicated it into every tile, ~250 of the loop's ~845 instructions).
template <int BN, bool MASKED>
__device__ __forceinline__ void softmax_tile(float* s, Rows& r, int key0, int T, int tq, float scale_log2,
                                             float& al_a, float& al_b) {
  // key ≥ min(row + 1, T) is masked; as a column c of this thread (key0 + c + 2tq): c ≥ lim
  const int lim_a = min(r.a + 1, T) - key0 - 2 * tq, lim_b = min(r.b + 1, T) - key0 - 2 * tq;
  float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
  for (int j = 0; j < BN / 8; j++) {
    if constexpr (MASKED) {
#pragma unroll
      for (int e = 0; e < 4; e++)
        if (j * 8 + (e & 1) >= (e < 2 ? lim_a : lim_b)) s[4 * j + e] = -INFINITY;
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
    s[4 * j] = p0;
    s[4 * j + 1] = p1;
    s[4 * j + 2] = p2;
    s[4 * j + 3] = p3;
  }
  r.l_a = r.l_a * al_a + rs_a;
  r.l_b = r.l_b * al_b + rs_b;
}

// P [64 × BN] (f32, wgmma accumulator layout) as bf16 A fragments pf[BN/16][4] (the accumulator layout of
// two adjacent 8-column blocks is the A fragment of one 16-wide k-step).
template <int BN> __device__ __forceinline__ void pack_p(const float* p, uint32_t (*pf)[4]) {
#pragma unroll
  for (int j = 0; j < BN / 8; j++) {
    pf[j / 2][(j & 1) * 2 + 0] = pack2(p[4 * j], p[4 * j + 1]);
    pf[j / 2][(j & 1) * 2 + 1] = pack2(p[4 * j + 2], p[4 * j + 3]);
  }
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
  const uint64_t da = sw128_desc(sq + wg * 64 * 128, 16, 1024), db = sw128_desc(sk, 16, 1024);
#pragma unroll
  for (int kk = 0; kk < D / 16; kk++) {
    const int half = kk >> 2, col = (kk & 3) * 32;
    wgmma_ss_n128(s, desc_plus(da, half * (BM * 128) + col), desc_plus(db, half * (BN * 128) + col), kk > 0);
  }
}

// O += P·V: BN/16 wgmma (not committed).
template <int D, int BN>
__device__ __forceinline__ void issue_pv(float* acc, const uint32_t (*pf)[4], const unsigned char* sv) {
  const uint64_t dv = sw128_desc(sv, BN * 128, 1024);
#pragma unroll
  for (int kk = 0; kk < BN / 16; kk++) wgmma_rs_tb<D>(acc, pf[kk], desc_plus(dv, kk * 16 * 128));
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

// The shared-memory carve: 1024-aligned Q tile [64·NC × D] (NC consumer warpgroups), ST K and V tiles
// [SM90_BN × D] (all in the 128-byte-swizzled layout of sm90.cuh, which TMA's SWIZZLE_128B writes), then
// the mbarriers.
template <int D, int ST, int NC = 2> struct WsSmem {
  static constexpr int Q_BYTES = 64 * NC * D * 2, KV_BYTES = SM90_BN * D * 2;
  unsigned char* q;
  __device__ WsSmem(unsigned char* raw) : q(align1024(raw)) {}
  __device__ unsigned char* k(int s) const { return q + Q_BYTES + s * KV_BYTES; }
  __device__ unsigned char* v(int s) const { return q + Q_BYTES + (ST + s) * KV_BYTES; }
  __device__ uint64_t* bars() const { return reinterpret_cast<uint64_t*>(q + Q_BYTES + 2 * ST * KV_BYTES); }
  __device__ uint64_t* q_full() const { return bars(); }
  __device__ uint64_t* k_full(int s) const { return bars() + 1 + s; }
  __device__ uint64_t* v_full(int s) const { return bars() + 1 + ST + s; }
  __device__ uint64_t* k_empty(int s) const { return bars() + 1 + 2 * ST + s; }
  __device__ uint64_t* v_empty(int s) const { return bars() + 1 + 3 * ST + s; }
  // dynamic shared memory a launch needs: alignment slack, tiles, barriers
  static constexpr int bytes() { return 1024 + Q_BYTES + 2 * ST * KV_BYTES + 8 * (1 + 4 * ST); }
};

// Rows [row0, row0 + ROWS) of head h of sequence b of the tensor of `map` into the swizzled tile at `dst`
// ([ROWS × D] as D/64 column halves of [ROWS × 64], one TMA each, coordinates (column, head, row,
// batch)), counted off `bar`. The caller has announced the bytes (mbar_expect_tx). Used by the forward
// and the backward (attention_sm90_bwd.cuh).
template <int D, int ROWS>
__device__ __forceinline__ void tma_load_tile(unsigned char* dst, const TmaDesc* map, uint64_t* bar, int h, int row0,
                                              int b) {
  for (int half = 0; half < D / 64; half++) tma_load_4d(dst + half * ROWS * 128, map, bar, 64 * half, h, row0, b);
}

// Key tile j of K or V (`map`) into its stage `dst` once use j − ST has released it (`empty`), counted off
// `full`.
template <int D, int ST>
__device__ __forceinline__ void ws_load_stage(unsigned char* dst, const TmaDesc* map, uint64_t* full, uint64_t* empty,
                                              int j, int kvh, int b) {
  if (j >= ST) mbar_wait(empty, ((j / ST) + 1) & 1);  // the phase that released use j − ST
  mbar_expect_tx(full, WsSmem<D, ST>::KV_BYTES);
  tma_load_tile<D, SM90_BN>(dst, map, full, kvh, j * SM90_BN, b);
}

// The producer thread: Q, then K_j and V_j for j = 0..last.
template <int D, int ST, int NC>
__device__ void ws_produce(const WsSmem<D, ST, NC>& sm, const TmaDesc* tq, const TmaDesc* tk, const TmaDesc* tv, int b,
                           int h, int kvh, int q0, int last) {
  tma_prefetch(tq);
  tma_prefetch(tk);
  tma_prefetch(tv);
  mbar_expect_tx(sm.q_full(), WsSmem<D, ST, NC>::Q_BYTES);
  tma_load_tile<D, 64 * NC>(sm.q, tq, sm.q_full(), h, q0, b);
  for (int j = 0; j <= last; j++) {
    ws_load_stage<D, ST>(sm.k(j % ST), tk, sm.k_full(j % ST), sm.k_empty(j % ST), j, kvh, b);
    ws_load_stage<D, ST>(sm.v(j % ST), tv, sm.v_full(j % ST), sm.v_empty(j % ST), j, kvh, b);
  }
}

// One consumer warp's release of a stage: every lane is past its wgmma wait; lane 0 arrives.
__device__ __forceinline__ void ws_release(uint64_t* bar) {
  __syncwarp();
  if ((threadIdx.x & 31) == 0) mbar_arrive(bar);
}

// Phase timer hooks of the consumer loop, empty here: bench/gpu/attention_sm90_bench.cu built with
// -DWS_PHASE_TIMER defines them to add up clock64() cycles per phase (waiting for K/V, issuing the products
// and waiting for S, softmax, waiting for P·V, packing; no hook between issue and wait: a clock read there
// makes ptxas serialise the wgmma).
#ifndef WS_PHASE
#define WS_PHASE_BEGIN
#define WS_PHASE(k)
#define WS_PHASE_END
#endif

// Consumer warpgroup `wg` (0..NC−1): 64 query rows from q0 + 64·wg. EARLY: O is rescaled for tile j − 1's
// statistics between issuing S_j and P_{j−1}·V_{j−1} (FlashAttention-3's order: the rescale overlaps S_j on
// the tensor cores), else after the softmax of S_j once P_{j−1}·V_{j−1} is done. MASK_ALL: every tile takes
// the masked softmax (a benchmark's baseline for the per-tile choice; the host's kernels pass false).
template <int D, int ST, bool EARLY, int NC, bool MASK_ALL>
__device__ void ws_consume(const WsSmem<D, ST, NC>& sm, bf16* o, float* lse, int b, int h, int q0, int last, int T, int NH,
                           float scale_log2, int wg) {
  constexpr int BN = SM90_BN;
  const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, tq = lane & 3;
  const int wg_row0 = q0 + wg * 64;
  Rows r;
  r.a = wg_row0 + warp * 16 + (lane >> 2);
  r.b = r.a + 8;
  float acc[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; i++) acc[i] = 0.f;
  uint32_t pprev[BN / 16][4];
  float al_a = 1.f, al_b = 1.f;  // the rescale factors of the last softmax
  mbar_wait(sm.q_full(), 0);
  WS_PHASE_BEGIN
  for (int kt = 0; kt <= last; kt++) {
    const int s = kt % ST, sp = (kt + ST - 1) % ST;
    mbar_wait(sm.k_full(s), (kt / ST) & 1);
    if (kt > 0) mbar_wait(sm.v_full(sp), ((kt - 1) / ST) & 1);
    WS_PHASE(0)
    float sc[BN / 2];
    wgmma_fence();
    issue_scores<D, 64 * NC, BN>(sc, sm.q, sm.k(s), wg);
    wgmma_commit();
    if (kt > 0) {
      if constexpr (EARLY) {
        rescale<D>(acc, al_a, al_b);
        wgmma_fence();
      }
      issue_pv<D, BN>(acc, pprev, sm.v(sp));
      wgmma_commit();
    }
    if (kt > 0)
      wgmma_wait<1>();
    else
      wgmma_wait<0>();
    ws_release(sm.k_empty(s));
    fence_regs<BN / 2>(sc);
    WS_PHASE(1)
    // the tile crosses this warpgroup's diagonal or T: mask it
    if (MASK_ALL || kt * BN + BN - 1 > wg_row0 || (kt + 1) * BN > T)
      softmax_tile<BN, true>(sc, r, kt * BN, T, tq, scale_log2, al_a, al_b);
    else
      softmax_tile<BN, false>(sc, r, kt * BN, T, tq, scale_log2, al_a, al_b);
    WS_PHASE(2)
    wgmma_wait<0>();
    hold_regs<BN / 16>(pprev);  // P_{j−1}·V_{j−1} read them until here: only now may P_j go into them
    if (kt > 0) ws_release(sm.v_empty(sp));
    fence_regs<D / 2>(acc);
    WS_PHASE(3)
    if constexpr (!EARLY) rescale<D>(acc, al_a, al_b);
    pack_p<BN>(sc, pprev);
    WS_PHASE(4)
  }
  const int sl = last % ST;
  mbar_wait(sm.v_full(sl), (last / ST) & 1);
  if constexpr (EARLY) rescale<D>(acc, al_a, al_b);
  wgmma_fence();
  issue_pv<D, BN>(acc, pprev, sm.v(sl));
  wgmma_commit();
  wgmma_wait<0>();
  hold_regs<BN / 16>(pprev);
  fence_regs<D / 2>(acc);
  store_rows<D>(acc, r, o, lse, b, h, T, NH, tq);
  WS_PHASE_END
}

// Forward: grid (ceil(T / 64·NC), NH, B), 128·(NC + 1) threads, WsSmem<D, ST, NC>::bytes() of dynamic
// shared memory; ST stages each of K and V; the q tensor map's boxes are 64·NC rows. NC = 2 consumer
// warpgroups take 240 registers a thread, NC = 3 take 160. MASK_ALL: as ws_consume.
template <int D, int ST, bool EARLY, int NC = 2, bool MASK_ALL = false>
__device__ void flash_fwd_ws(const TmaDesc* tq, const TmaDesc* tk, const TmaDesc* tv, bf16* o, float* lse, int T,
                             int NH, int NKV, float scale_log2) {
  constexpr int BM = 64 * NC;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  WsSmem<D, ST, NC> sm(smem_raw);
  // the longest query tiles (most key tiles under the causal mask) first: the last wave is short ones
  const int qt = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int kvh = h / (NH / NKV), q0 = qt * BM;
  const int last = min((q0 + BM - 1) / SM90_BN, (T - 1) / SM90_BN);
  if (threadIdx.x == 0) {
    mbar_init(sm.q_full(), 1);
    for (int s = 0; s < ST; s++) {
      mbar_init(sm.k_full(s), 1);
      mbar_init(sm.v_full(s), 1);
      mbar_init(sm.k_empty(s), 4 * NC);  // one arrival per consumer warp
      mbar_init(sm.v_empty(s), 4 * NC);
    }
    mbar_fence_init();
  }
  __syncthreads();
  const int wgi = threadIdx.x >> 7;
  if (wgi == 0) {
    setmaxnreg_dec<24>();
    if (threadIdx.x == 0) ws_produce<D, ST, NC>(sm, tq, tk, tv, b, h, kvh, q0, last);
    return;
  }
  setmaxnreg_inc<NC == 2 ? 240 : 160>();
  ws_consume<D, ST, EARLY, NC, MASK_ALL>(sm, o, lse, b, h, q0, last, T, NH, scale_log2, wgi - 1);
}

// The host's kernels: consumer warpgroups, stages and rescale order by head dim
// (host/src/kernels/attention_cuda_fwd.rs restates them for the launch: rows 64·consumers, threads
// 128·(consumers + 1), WsSmem bytes). On an H100 (bench/gpu/attention_sm90_bench.cu's variants, two runs in
// one call): at head dim 64 three consumers (192 query rows) with three K/V stages took 0.91–0.93× the time
// of two consumers with two stages; at 128 three stages and the early rescale were no faster (0.99–1.08×).
#define WS_CONSUMERS_64 3
#define WS_CONSUMERS_128 2
#define WS_STAGES_64 3
#define WS_STAGES_128 2
#define WS_EARLY_64 false
#define WS_EARLY_128 false
#define SM90_WS_FWD(DIM)                                                                                     \
  extern "C" __global__ void __launch_bounds__(128 * (WS_CONSUMERS_##DIM + 1), 1)                            \
      flash_fwd_ws_d##DIM(const __grid_constant__ TmaDesc tq, const __grid_constant__ TmaDesc tk,            \
                          const __grid_constant__ TmaDesc tv, bf16* o, float* lse, int T, int NH, int NKV,   \
                          float scale_log2) {                                                                \
    flash_fwd_ws<DIM, WS_STAGES_##DIM, WS_EARLY_##DIM, WS_CONSUMERS_##DIM>(&tq, &tk, &tv, o, lse, T, NH, NKV, \
                                                                             scale_log2);                    \
  }
SM90_WS_FWD(64)
SM90_WS_FWD(128)

#include "attention_sm90_bwd.cuh"
