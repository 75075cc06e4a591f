// Warp-specialised causal flash attention forward for Hopper (sm_90a): the contract of flash_fwd_sm90
// (attention_sm90.cu; q/o [B, T, NH, D], k/v [B, T, NKV, D], lse [B, NH, T] in log2 units), with the loads
// taken off the math warps as FlashAttention-3 does. Included by attention_sm90.cu (it uses that file's
// softmax_tile, rescale, issue_scores, issue_pv and store_rows).
//
// A CTA of three warpgroups takes WS_BM = 128 query rows of one head:
//   warpgroup 0, the producer: gives its registers up (setmaxnreg 24) and one thread issues the TMA loads —
//     the Q tile once, then K_j and V_j of every key tile into WS_STAGES shared-memory stages each,
//     waiting on a stage's "empty" mbarrier before it refills it;
//   warpgroups 1 and 2, the consumers (setmaxnreg 240): 64 query rows each. Per key tile j, wait for K_j
//     (and V_{j−1}) "full", issue S_j = Q·K_jᵀ and O += P_{j−1}·V_{j−1}, release K_j once S_j is done, run
//     the online softmax of S_j while the P·V product runs, release V_{j−1}, rescale O.
//   With PINGPONG the two consumers take turns to issue their products (named barriers 1 and 2), so that
//   one's softmax runs while the other's products occupy the tensor cores.
// No __syncthreads after set-up: every hand-over is an mbarrier (loads) or a named barrier (turns).
#include "tma.cuh"

#define WS_BM 128
#define WS_STAGES 2

// The shared-memory carve: 1024-aligned Q tile [WS_BM × D], WS_STAGES K and V tiles [SM90_BN × D] (all
// in the 128-byte-swizzled layout of sm90.cuh, which TMA's SWIZZLE_128B writes), then the mbarriers.
template <int D> struct WsSmem {
  static constexpr int Q_BYTES = WS_BM * D * 2, KV_BYTES = SM90_BN * D * 2;
  unsigned char* q;
  __device__ WsSmem(unsigned char* raw) : q(align1024(raw)) {}
  __device__ unsigned char* k(int s) const { return q + Q_BYTES + s * KV_BYTES; }
  __device__ unsigned char* v(int s) const { return q + Q_BYTES + (WS_STAGES + s) * KV_BYTES; }
  __device__ uint64_t* bars() const { return reinterpret_cast<uint64_t*>(q + Q_BYTES + 2 * WS_STAGES * KV_BYTES); }
  __device__ uint64_t* q_full() const { return bars(); }
  __device__ uint64_t* k_full(int s) const { return bars() + 1 + s; }
  __device__ uint64_t* v_full(int s) const { return bars() + 1 + WS_STAGES + s; }
  __device__ uint64_t* k_empty(int s) const { return bars() + 1 + 2 * WS_STAGES + s; }
  __device__ uint64_t* v_empty(int s) const { return bars() + 1 + 3 * WS_STAGES + s; }
  // dynamic shared memory a launch needs: alignment slack, tiles, barriers
  static constexpr int bytes() { return 1024 + Q_BYTES + 2 * WS_STAGES * KV_BYTES + 8 * (1 + 4 * WS_STAGES); }
};

// The producer thread: Q, then K_j and V_j for j = 0..last, each [rows × D] box loaded as D/64 column
// halves of [rows × 64] (one TMA each, coordinates (column, head, row, batch)).
template <int D>
__device__ void ws_produce(const WsSmem<D>& sm, const TmaDesc* tq, const TmaDesc* tk, const TmaDesc* tv, int b,
                           int h, int kvh, int q0, int last) {
  tma_prefetch(tq);
  tma_prefetch(tk);
  tma_prefetch(tv);
  mbar_expect_tx(sm.q_full(), WsSmem<D>::Q_BYTES);
  for (int half = 0; half < D / 64; half++) tma_load_4d(sm.q + half * WS_BM * 128, tq, sm.q_full(), 64 * half, h, q0, b);
  for (int j = 0; j <= last; j++) {
    const int s = j % WS_STAGES;
    const uint32_t reuse_parity = ((j / WS_STAGES) + 1) & 1;  // the phase that released use j − STAGES
    if (j >= WS_STAGES) mbar_wait(sm.k_empty(s), reuse_parity);
    mbar_expect_tx(sm.k_full(s), WsSmem<D>::KV_BYTES);
    for (int half = 0; half < D / 64; half++)
      tma_load_4d(sm.k(s) + half * SM90_BN * 128, tk, sm.k_full(s), 64 * half, kvh, j * SM90_BN, b);
    if (j >= WS_STAGES) mbar_wait(sm.v_empty(s), reuse_parity);
    mbar_expect_tx(sm.v_full(s), WsSmem<D>::KV_BYTES);
    for (int half = 0; half < D / 64; half++)
      tma_load_4d(sm.v(s) + half * SM90_BN * 128, tv, sm.v_full(s), 64 * half, kvh, j * SM90_BN, b);
  }
}

// One consumer warp's release of a stage: every lane is past its wgmma wait; lane 0 arrives.
__device__ __forceinline__ void ws_release(uint64_t* bar) {
  __syncwarp();
  if ((threadIdx.x & 31) == 0) mbar_arrive(bar);
}

// Consumer warpgroup `wg` (0 or 1): 64 query rows from q0 + 64·wg. Turns: wg waits on barrier 1 + wg before
// issuing products and hands the turn to the other on 2 − wg; the last hand-over of wg 1 is left out so
// that every arrival is matched (wg 1 hands wg 0 its first turn).
template <int D, bool PINGPONG>
__device__ void ws_consume(const WsSmem<D>& sm, bf16* o, float* lse, int b, int h, int q0, int last, int T, int NH,
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
  if (PINGPONG && wg == 1) named_arrive(1, 256);
  mbar_wait(sm.q_full(), 0);
  for (int kt = 0; kt <= last; kt++) {
    const int s = kt % WS_STAGES, sp = (kt + WS_STAGES - 1) % WS_STAGES;
    mbar_wait(sm.k_full(s), (kt / WS_STAGES) & 1);
    if (kt > 0) mbar_wait(sm.v_full(sp), ((kt - 1) / WS_STAGES) & 1);
    if (PINGPONG) named_sync(1 + wg, 256);
    float sc[BN / 2];
    wgmma_fence();
    issue_scores<D, WS_BM, BN>(sc, sm.q, sm.k(s), wg);
    wgmma_commit();
    if (kt > 0) {
      issue_pv<D, BN>(acc, pprev, sm.v(sp));
      wgmma_commit();
    }
    if (kt > 0)
      wgmma_wait<1>();
    else
      wgmma_wait<0>();
    if (PINGPONG) named_arrive(2 - wg, 256);
    ws_release(sm.k_empty(s));
    fence_regs<BN / 2>(sc);
    const bool masked = kt * BN + BN - 1 > wg_row0 || (kt + 1) * BN > T;
    uint32_t pf[BN / 16][4];
    float al_a, al_b;
    softmax_tile<BN>(sc, pf, r, masked, kt * BN, T, tq, scale_log2, al_a, al_b);
    wgmma_wait<0>();
    if (kt > 0) ws_release(sm.v_empty(sp));
    fence_regs<D / 2>(acc);
    rescale<D>(acc, al_a, al_b);
#pragma unroll
    for (int i = 0; i < BN / 16; i++)
#pragma unroll
      for (int e = 0; e < 4; e++) pprev[i][e] = pf[i][e];
  }
  const int sl = last % WS_STAGES;
  mbar_wait(sm.v_full(sl), (last / WS_STAGES) & 1);
  if (PINGPONG) named_sync(1 + wg, 256);
  wgmma_fence();
  issue_pv<D, BN>(acc, pprev, sm.v(sl));
  wgmma_commit();
  if (PINGPONG) named_arrive_if(wg == 0, 2, 256);
  wgmma_wait<0>();
  fence_regs<D / 2>(acc);
  store_rows<D>(acc, r, o, lse, b, h, T, NH, tq);
}

// Forward: grid (ceil(T / WS_BM), NH, B), 384 threads, WsSmem<D>::bytes() of dynamic shared memory.
template <int D, bool PINGPONG>
__device__ void flash_fwd_ws(const TmaDesc* tq, const TmaDesc* tk, const TmaDesc* tv, bf16* o, float* lse, int T,
                             int NH, int NKV, float scale_log2) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  WsSmem<D> sm(smem_raw);
  // the longest query tiles (most key tiles under the causal mask) first: the last wave is short ones
  const int qt = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int kvh = h / (NH / NKV), q0 = qt * WS_BM;
  const int last = min((q0 + WS_BM - 1) / SM90_BN, (T - 1) / SM90_BN);
  if (threadIdx.x == 0) {
    mbar_init(sm.q_full(), 1);
    for (int s = 0; s < WS_STAGES; s++) {
      mbar_init(sm.k_full(s), 1);
      mbar_init(sm.v_full(s), 1);
      mbar_init(sm.k_empty(s), 8);  // one arrival per consumer warp
      mbar_init(sm.v_empty(s), 8);
    }
    mbar_fence_init();
  }
  __syncthreads();
  const int wgi = threadIdx.x >> 7;
  if (wgi == 0) {
    setmaxnreg_dec<24>();
    if (threadIdx.x == 0) ws_produce<D>(sm, tq, tk, tv, b, h, kvh, q0, last);
    return;
  }
  setmaxnreg_inc<240>();
  ws_consume<D, PINGPONG>(sm, o, lse, b, h, q0, last, T, NH, scale_log2, wgi - 1);
}

#define SM90_WS_FWD(DIM, PP, SUFFIX)                                                                         \
  extern "C" __global__ void __launch_bounds__(384, 1)                                                       \
      flash_fwd_ws##SUFFIX##_d##DIM(const __grid_constant__ TmaDesc tq, const __grid_constant__ TmaDesc tk,  \
                                    const __grid_constant__ TmaDesc tv, bf16* o, float* lse, int T, int NH,  \
                                    int NKV, float scale_log2) {                                             \
    flash_fwd_ws<DIM, PP>(&tq, &tk, &tv, o, lse, T, NH, NKV, scale_log2);                                    \
  }
SM90_WS_FWD(64, true, )
SM90_WS_FWD(128, true, )
SM90_WS_FWD(64, false, _nopp)
SM90_WS_FWD(128, false, _nopp)
