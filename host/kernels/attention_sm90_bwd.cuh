// Causal grouped-query flash attention backward for Hopper (sm_90a), bf16, head dim D ∈ {64, 128}, on
// warpgroup MMA (included by attention_sm90.cu). The same contract as flash_bwd_dkdv_d* of attention.cuh:
// reads q, k, v, dO, lse (log2 units of the scaled scores) and delta = rowsum(o ⊙ dO) (flash_delta), writes
// dk, dv [B, T, NKV, D] (dk scaled by `scale` = 1/√D) and adds dS·K into the f32 dq_acc [B, T, NH, D]
// (flash_dq_from_acc scales and rounds it).
//
// A CTA of 2 warpgroups owns BN = 128 keys of one kv head (64 per warpgroup) and loops over the query
// tiles of BM = 64 rows that see them (from the diagonal), for every query head of the group. Per tile:
//   Sᵀ  = K·Qᵀ    wgmma m64n64k16, K and Q K-major in shared memory              (D/16 instructions)
//   dPᵀ = V·dOᵀ   the same with V and dO                                          (D/16)
//   Pᵀ = exp2(Sᵀ·scale_log2 − lse), dSᵀ = Pᵀ ⊙ (dPᵀ − delta), in registers (masked: key > query, past T;
//                  only tiles that cross the diagonal or T take the masked code)
//   dV += Pᵀ·dO, dK += dSᵀ·Q   wgmma m64nDk16, Pᵀ/dSᵀ from registers, dO/Q MN-major in shared memory
//   dSᵀ → shared memory ([128 keys][64 queries], one 128-byte swizzled row per key)
//   dQ = dS·K      wgmma, dS and K both MN-major in shared memory: warpgroup w takes columns 64w.. (D = 128,
//                  m64n64k16) or 32w.. (D = 64, m64n32k16) over all 128 keys (DQ_COLS)
//   dQ → dq_acc    after the next tile's Sᵀ/dPᵀ products are issued (at D = 64 before the wait for dQ, so
//                  that the tensor cores have them queued), each warp stores its 16 rows into an
//                  f32 tile in shared memory and one lane issues TMA reduce-adds (cp.reduce.async.bulk) of
//                  it into dq_acc: the copy engine does the adds, the warp goes on. (With float2 atomics
//                  from every thread instead, the atomics were ~30% of the kernel's time.)
// Loads: K and V once, by TMA; Q/dO tiles (TMA, one thread) and their lse/delta (4-byte cp.async, 128
// threads) in SM90_BWD_STAGES_<D> stages, each complete on one mbarrier; one CTA barrier a tile.
// Five T²·D products, like FlashAttention-2/3; nothing is recomputed. (A warpgroup whose 64 keys all come
// after a tile's last query, on the diagonal, still runs its products — masked to zero: skipping them
// under a branch makes ptxas serialise every wgmma of the kernel.)

#define SM90_BWD_BN 128
#define SM90_BWD_BM 64

// The backward's shared-memory carve (every tile 1024-aligned, in sm90.cuh's 128-byte swizzle, which TMA's
// SWIZZLE_128B writes and reads): K and V tiles [BN × D]; ST stages of (Q, dO) tiles [BM × D]; two dSᵀ
// tiles [BN × BM] (tile it writes it mod 2, so that one warpgroup's dS of the next tile cannot overwrite what
// the other's dQ product still reads); one f32 dQ tile per warp (its 16 query rows × 64 columns, as two
// boxes of 16 rows × 32 columns); ST stages of lse/delta [2 × BM] f32; the mbarriers (K/V loaded, stage
// s loaded). Bytes: SM90_BWD_SMEM.
template <int D, int ST> struct BwdSmem {
  static constexpr int BN = SM90_BWD_BN, BM = SM90_BWD_BM;
  static constexpr int KV_BYTES = BN * D * 2, QD_BYTES = BM * D * 2, DS_BYTES = BN * BM * 2;
  static constexpr int DQ_WARP_BYTES = 16 * 64 * 4;
  unsigned char* k;
  __device__ BwdSmem(unsigned char* raw) : k(align1024(raw)) {}
  __device__ unsigned char* v() const { return k + KV_BYTES; }
  __device__ unsigned char* q(int stage) const { return k + 2 * KV_BYTES + stage * QD_BYTES; }
  __device__ unsigned char* dout(int stage) const { return k + 2 * KV_BYTES + (ST + stage) * QD_BYTES; }
  __device__ unsigned char* ds(int buf) const { return k + 2 * KV_BYTES + 2 * ST * QD_BYTES + buf * DS_BYTES; }
  __device__ unsigned char* dq(int warp8) const { return ds(2) + warp8 * DQ_WARP_BYTES; }
  __device__ float* ls(int stage) const { return reinterpret_cast<float*>(dq(8)) + stage * 2 * BM; }
  __device__ uint64_t* kv_full() const { return reinterpret_cast<uint64_t*>(ls(ST)); }
  __device__ uint64_t* full(int stage) const { return kv_full() + 1 + stage; }
};
// Dynamic shared memory the backward launch needs (host/src/kernels/attention_cuda_bwd.rs restates it).
#define SM90_BWD_SMEM(D, ST)                                                                                 \
  (1024 + 2 * SM90_BWD_BN * (D) * 2 + 2 * (ST) * SM90_BWD_BM * (D) * 2 + 2 * SM90_BWD_BN * SM90_BWD_BM * 2 + \
   8 * 16 * 64 * 4 + 2 * (ST) * SM90_BWD_BM * 4 + (1 + (ST)) * 8)

// How dQ reaches global memory: added by TMA reduce from shared memory into dq_acc [B, T, NH, D], or not at
// all (a benchmark's bound on what writing dQ costs; not a backward).
#define SM90_DQ_REDUCE 0
#define SM90_DQ_NONE 1

// X·Yᵀ [64 × BM] for this warpgroup's 64 rows of a [BN × D] tile x (K or V) and the [BM × D] tile y (Q or
// dO): D/16 wgmma, committed as one group.
template <int D>
__device__ __forceinline__ void issue_xyt(float* acc, const unsigned char* x, const unsigned char* y, int wg) {
  constexpr int BN = SM90_BWD_BN, BM = SM90_BWD_BM;
  const uint64_t dx = sw128_desc(x + wg * 64 * 128, 16, 1024), dy = sw128_desc(y, 16, 1024);
#pragma unroll
  for (int kk = 0; kk < D / 16; kk++) {
    const int half = kk >> 2, col = (kk & 3) * 32;
    wgmma_ss_n64(acc, desc_plus(dx, half * (BN * 128) + col), desc_plus(dy, half * (BM * 128) + col), kk > 0);
  }
  wgmma_commit();
}

// Whether tile it + 1's dPᵀ = V·dOᵀ is issued with its Sᵀ = K·Qᵀ before tile it's dQ atomics (so that both
// overlap them) or only after them: at D = 128 the registers do not hold dK, dV, dQ and both in flight
// (ptxas would serialise every wgmma).
template <int D> constexpr bool EARLY_DP = D == 64;
// Whether tile it + 1's Sᵀ/dPᵀ products are issued before the wait for tile it's dQ (the tensor cores have
// them queued while the warps write dQ out) or after it.
template <int D> constexpr bool NEXT_BEFORE_DQ_WAIT = D == 64;

// Pᵀ and dSᵀ of one (64 keys × 64 queries) tile from the score and dP accumulators, as bf16 A fragments
// pf/sf [BM/16][4]. Keys key_a/key_b are this thread's rows; query column j·8 + 2tq (+1) reads lse/delta
// from shared memory. MASKED (chosen per tile by the caller, under a branch, so that tiles off the diagonal
// and inside T skip the compares): P = 0 where key > query, query ≥ T or key ≥ T.
template <bool MASKED>
__device__ __forceinline__ void probs_and_dscores(const float* st, const float* dpt, uint32_t (*pf)[4],
                                                  uint32_t (*sf)[4], const float* ls, const float* dl,
                                                  int key_a, int key_b, int query0, int T, int tq,
                                                  float scale_log2) {
  // as a column c of this thread (query query0 + c + 2tq): masked where c < lo (key > query; every c where
  // key ≥ T) or c ≥ hi (query ≥ T)
  const int c0 = query0 + 2 * tq, hi = T - c0;
  const int lo_a = key_a >= T ? SM90_BWD_BM : key_a - c0, lo_b = key_b >= T ? SM90_BWD_BM : key_b - c0;
#pragma unroll
  for (int j = 0; j < SM90_BWD_BM / 8; j++) {
    float pv[4], sv[4];
    // lse and delta of the thread's two query columns, one 8-byte load each
    const float2 l2 = *reinterpret_cast<const float2*>(ls + j * 8 + 2 * tq),
                 d2 = *reinterpret_cast<const float2*>(dl + j * 8 + 2 * tq);
#pragma unroll
    for (int e = 0; e < 4; e++) {
      const int c = j * 8 + (e & 1);
      const bool off = MASKED && (c < (e < 2 ? lo_a : lo_b) || c >= hi);
      const float p = off ? 0.f : exp2_ftz(st[4 * j + e] * scale_log2 - ((e & 1) ? l2.y : l2.x));
      pv[e] = p;
      sv[e] = p * (dpt[4 * j + e] - ((e & 1) ? d2.y : d2.x));
    }
    pf[j / 2][(j & 1) * 2 + 0] = pack2(pv[0], pv[1]);
    pf[j / 2][(j & 1) * 2 + 1] = pack2(pv[2], pv[3]);
    sf[j / 2][(j & 1) * 2 + 0] = pack2(sv[0], sv[1]);
    sf[j / 2][(j & 1) * 2 + 1] = pack2(sv[2], sv[3]);
  }
}

// Writes this thread's dSᵀ fragments (rows r_a = its warp's key g, r_b = g + 8 within the CTA's 128 keys)
// into the swizzled [BN][BM] tile: query column j·8 + 2tq sits in 16-byte chunk j of the row.
__device__ __forceinline__ void store_dst(unsigned char* ds, const uint32_t (*sf)[4], int r_a, int tq) {
  const int r_b = r_a + 8;
#pragma unroll
  for (int j = 0; j < SM90_BWD_BM / 8; j++) {
    *reinterpret_cast<uint32_t*>(ds + r_a * 128 + ((j ^ (r_a & 7)) << 4) + tq * 4) = sf[j / 2][(j & 1) * 2];
    *reinterpret_cast<uint32_t*>(ds + r_b * 128 + ((j ^ (r_b & 7)) << 4) + tq * 4) = sf[j / 2][(j & 1) * 2 + 1];
  }
}

// How a warpgroup's dQ product splits the work (DQC: the dQ columns it covers), over all 128 keys: columns
// 64·wg.. at D = 128; at D = 64 columns 32·wg.. (B starts 64 bytes into K's 128-byte swizzled rows). DQC = 64
// at D = 64 (each warpgroup all 64 columns over its own 64 keys, both writing and reducing a full 64 × 64 f32
// tile a query tile) stays as a variant of bench/gpu/attention_sm90_bwd_bench.cu ("dq own keys"): the halves
// took 0.89× its time on one H100 (2026-12-08, bench/gpu/results/h100-2026-12-08-attention-dq-halves-*).
template <int D> constexpr int DQ_COLS = D == 64 ? 32 : 64;

// dQ [64 queries × DQC] of this warpgroup: dS·K (dSᵀ tile `buf`), split as DQ_COLS says. Committed, not
// waited. Returns the first column.
template <int D, int ST, int DQC>
__device__ __forceinline__ int issue_dq(float* dqa, const BwdSmem<D, ST>& sm, int buf, int wg) {
  constexpr int BN = SM90_BWD_BN;
  static_assert(DQC == 64 || (D == 64 && DQC == 32), "dQ halves only at head dim 64");
  if constexpr (DQC == 32) {  // D = 64: columns 32·wg.., all keys
    const uint64_t dds = sw128_desc(sm.ds(buf), BN * 128, 1024), dk = sw128_desc(sm.k + wg * 64, BN * 128, 1024);
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++)
      wgmma_ss_n32_tt(dqa, desc_plus(dds, kk * 16 * 128), desc_plus(dk, kk * 16 * 128), kk > 0);
    wgmma_commit();
    return wg * 32;
  } else {
    constexpr int steps = D == 128 ? BN / 16 : 4;
    const int key0 = D == 128 ? 0 : wg * 64, b_half = D == 128 ? wg * (BN * 128) : 0;
    const uint64_t dds = sw128_desc(sm.ds(buf) + key0 * 128, BN * 128, 1024),
                   dk = sw128_desc(sm.k + b_half + key0 * 128, BN * 128, 1024);
#pragma unroll
    for (int kk = 0; kk < steps; kk++) {
      const int row = kk * 16 * 128;
      wgmma_ss_n64_tt(dqa, desc_plus(dds, row), desc_plus(dk, row), kk > 0);
    }
    wgmma_commit();
    return D == 128 ? wg * 64 : 0;
  }
}

// This thread's part of its warp's dQ rows (16 queries × COLS columns, the wgmma accumulator fragment)
// into the warp's f32 tile `buf`: COLS/32 boxes of [16 rows × 32 columns] in the 128-byte swizzle (16-byte
// chunk c of row r at c ^ (r mod 8)), as the dq_acc tensor map's reduce reads them. Conflict-free: a warp's
// 32 float2 stores fill each bank twice.
template <int COLS> __device__ __forceinline__ void store_dq(unsigned char* buf, const float* dqa, int lane) {
  const int tq = lane & 3, r_a = lane >> 2, r_b = r_a + 8;
#pragma unroll
  for (int j = 0; j < COLS / 8; j++) {
    unsigned char* box = buf + (j >> 2) * (16 * 128);
    const int chunk = (j & 3) * 2 + (tq >> 1), byte = (tq & 1) * 8;
    *reinterpret_cast<float2*>(box + r_a * 128 + ((chunk ^ (r_a & 7)) << 4) + byte) =
        make_float2(dqa[4 * j], dqa[4 * j + 1]);
    *reinterpret_cast<float2*>(box + r_b * 128 + ((chunk ^ (r_b & 7)) << 4) + byte) =
        make_float2(dqa[4 * j + 2], dqa[4 * j + 3]);
  }
}

// dk (× scale) and dv rows key_a/key_b (below T) from the accumulators.
template <int D>
__device__ __forceinline__ void store_dkdv(const float* dka, const float* dva, bf16* dk, bf16* dv, int b,
                                           int key_a, int kvh, int T, int NKV, float scale, int tq) {
#pragma unroll
  for (int half = 0; half < 2; half++) {
    const int key = key_a + 8 * half;
    if (key >= T) continue;
    const long base = (((long)b * T + key) * NKV + kvh) * D + 2 * tq;
#pragma unroll
    for (int j = 0; j < D / 8; j++) {
      const int e = 4 * j + 2 * half;
      *reinterpret_cast<uint32_t*>(dk + base + j * 8) = pack2(dka[e] * scale, dka[e + 1] * scale);
      *reinterpret_cast<uint32_t*>(dv + base + j * 8) = pack2(dva[e], dva[e + 1]);
    }
  }
}

// One query tile's dV += Pᵀ·dO and dK += dSᵀ·Q for this warpgroup's keys (issued and committed, not
// waited) from its Sᵀ products (and, with EARLY_DP, dPᵀ) in flight (begin), leaving Pᵀ in pf and dSᵀ in sf
// (the products read them as A operands: the caller holds them until its wait, hold_regs).
template <int D, int ST>
__device__ __forceinline__ void tile_dkdv(float* dka, float* dva, uint32_t (*pf)[4], uint32_t (*sf)[4], float* st, float* dpt,
                                          const BwdSmem<D, ST>& sm, int stage, int wg, int key_a, int query0, int T,
                                          int tq, float scale_log2) {
  constexpr int BM = SM90_BWD_BM;
  if (!EARLY_DP<D>) {
    wgmma_fence();
    issue_xyt<D>(dpt, sm.v(), sm.dout(stage), wg);
  }
  wgmma_wait<0>();
  fence_regs<BM / 2>(st);
  fence_regs<BM / 2>(dpt);
  // this warpgroup's 64 keys reach past the tile's first query, or the tile or the keys cross T: mask
  const int wg_key0 = key_a & ~63;
  if (wg_key0 + 63 > query0 || query0 + BM > T || wg_key0 + 64 > T)
    probs_and_dscores<true>(st, dpt, pf, sf, sm.ls(stage), sm.ls(stage) + BM, key_a, key_a + 8, query0, T, tq,
                            scale_log2);
  else
    probs_and_dscores<false>(st, dpt, pf, sf, sm.ls(stage), sm.ls(stage) + BM, key_a, key_a + 8, query0, T, tq,
                             scale_log2);
  wgmma_fence();
  const uint64_t ddo = sw128_desc(sm.dout(stage), BM * 128, 1024), dq = sw128_desc(sm.q(stage), BM * 128, 1024);
#pragma unroll
  for (int kk = 0; kk < BM / 16; kk++) {
    wgmma_rs_tb<D>(dva, pf[kk], desc_plus(ddo, kk * 16 * 128));
    wgmma_rs_tb<D>(dka, sf[kk], desc_plus(dq, kk * 16 * 128));
  }
  wgmma_commit();
}

// Tile it's Q and dO (TMA, thread 0) and lse/delta (cp.async, threads 0..2·BM−1) into stage it mod ST, all
// counted off that stage's mbarrier (one expect_tx arrival + 2·BM cp.async arrivals).
template <int D, int ST>
__device__ __forceinline__ void bwd_load(const BwdSmem<D, ST>& sm, const TmaDesc* tq, const TmaDesc* tdo, const float* lse,
                                         const float* delta, int stage, int b, int h, int t0, int T, int NH) {
  constexpr int BM = SM90_BWD_BM;
  uint64_t* full = sm.full(stage);
  if (threadIdx.x == 0) {
    mbar_expect_tx(full, 2 * BwdSmem<D, ST>::QD_BYTES);
    tma_load_tile<D, BM>(sm.q(stage), tq, full, h, t0, b);
    tma_load_tile<D, BM>(sm.dout(stage), tdo, full, h, t0, b);
  }
  if (threadIdx.x < 2 * BM) {
    const int i = threadIdx.x & (BM - 1), t = t0 + i;
    const float* src = (threadIdx.x < BM ? lse : delta) + ((long)b * NH + h) * T + min(t, T - 1);
    cp4(sm.ls(stage) + threadIdx.x, src, t < T);
    mbar_arrive_on_cp_async(full);
  }
}

// Backward: grid (ceil(T / 128) key tiles, NKV, B), 256 threads; dynamic smem SM90_BWD_SMEM(D, ST). Tensor maps
// (host/src/kernels/tensor_map.rs): q and dO [B, T, NH, D] bf16 in boxes of BM rows × 64 columns, k and v
// [B, T, NKV, D] in boxes of BN rows × 64 columns, dq_acc [B, T, NH, D] f32 in boxes of 16 rows × 32
// columns. DQ: SM90_DQ_REDUCE (the host's) or SM90_DQ_NONE (benchmarks only); DQC: as DQ_COLS. ST ≥ 2 stages of Q/dO tiles:
// tile it + ST − 1 is loaded while tile it is computed.
// Per tile: the products of tile_dkdv, dSᵀ into shared memory, one CTA barrier (both warpgroups' dSᵀ are
// in; tile it − 1's stage is free, so tile it + ST − 1's loads are issued into it), dQ = dS·K, tile it + 1's
// Sᵀ/dPᵀ products issued, then each warp writes its dQ rows into its f32 tile and one lane hands them to the
// TMA reduce (into dq_acc, asynchronously; the warp waits for the tile to have been read out before it
// writes it again a tile later). No atomics in the kernel and no thread waits on a global load.
template <int D, int ST, int DQ, int DQC = DQ_COLS<D>>
__device__ void flash_bwd_sm90(const TmaDesc* tq, const TmaDesc* tk, const TmaDesc* tv, const TmaDesc* tdo,
                               const TmaDesc* tdq, const float* lse, const float* delta, bf16* dk, bf16* dv, int T,
                               int NH, int NKV, float scale_log2, float scale) {
  constexpr int BN = SM90_BWD_BN, BM = SM90_BWD_BM;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  BwdSmem<D, ST> sm(smem_raw);
  const int kt = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z, rep = NH / NKV;
  const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, quad = lane & 3;
  const int r_a = wg * 64 + warp * 16 + (lane >> 2);  // this thread's first key row within the CTA's 128
  const int key_a = kt * BN + r_a;
  const int qt0 = kt * (BN / BM), per_head = (T + BM - 1) / BM - qt0, iters = rep * per_head;
  auto head = [&](int it) { return kvh * rep + it / per_head; };
  auto first_query = [&](int it) { return (qt0 + it % per_head) * BM; };
  if (threadIdx.x == 0) {
    mbar_init(sm.kv_full(), 1);
    for (int s = 0; s < ST; s++) mbar_init(sm.full(s), 1 + 2 * BM);
    mbar_fence_init();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    tma_prefetch(tq);
    tma_prefetch(tdo);
    tma_prefetch(tdq);
    mbar_expect_tx(sm.kv_full(), 2 * BwdSmem<D, ST>::KV_BYTES);
    tma_load_tile<D, BN>(sm.k, tk, sm.kv_full(), kvh, kt * BN, b);
    tma_load_tile<D, BN>(sm.v(), tv, sm.kv_full(), kvh, kt * BN, b);
  }
  for (int i = 0; i < ST - 1 && i < iters; i++) bwd_load<D, ST>(sm, tq, tdo, lse, delta, i, b, head(i), first_query(i), T, NH);
  float st[BM / 2], dpt[BM / 2];
  auto begin = [&](int it) {  // tile it's inputs are in: issue Sᵀ (and dPᵀ)
    const int s = it % ST;
    if (it < iters) mbar_wait(sm.full(s), (it / ST) & 1);
    wgmma_fence();
    issue_xyt<D>(st, sm.k, sm.q(s), wg);
    if (EARLY_DP<D>) issue_xyt<D>(dpt, sm.v(), sm.dout(s), wg);
  };
  float dka[D / 2], dva[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; i++) dka[i] = dva[i] = 0.f;
  mbar_wait(sm.kv_full(), 0);
  begin(0);
  unsigned char* dq_tile = sm.dq(wg * 4 + warp);
  for (int it = 0; it < iters; it++) {
    const int h = head(it), query0 = first_query(it), stage = it % ST, buf = it & 1;
    uint32_t pf[BM / 16][4], sf[BM / 16][4];
    tile_dkdv<D, ST>(dka, dva, pf, sf, st, dpt, sm, stage, wg, key_a, query0, T, quad, scale_log2);
    store_dst(sm.ds(buf), sf, r_a, quad);
    fence_async_shared();
    __syncthreads();  // both warpgroups' dSᵀ rows are in; every thread is past tile it − 1's products
    const int next = it + ST - 1;
    if (next < iters) bwd_load<D, ST>(sm, tq, tdo, lse, delta, next % ST, b, head(next), first_query(next), T, NH);
    float dqa[DQC / 2];
    wgmma_fence();
    const int col0 = issue_dq<D, ST, DQC>(dqa, sm, buf, wg);
    // tile it + 1's products, also after the last tile (of a stale stage, never read: no wgmma under a
    // branch), go in before (NEXT_BEFORE_DQ_WAIT) or after the wait for dQ
    if constexpr (NEXT_BEFORE_DQ_WAIT<D>) {
      begin(it + 1);
      wgmma_wait<EARLY_DP<D> ? 2 : 1>();  // all but the Sᵀ (and dPᵀ) groups just committed
    } else {
      wgmma_wait<0>();
    }
    fence_regs<DQC / 2>(dqa);
    hold_regs<BM / 16>(pf);  // dV += Pᵀ·dO and dK += dSᵀ·Q read them until here
    hold_regs<BM / 16>(sf);
    fence_regs<D / 2>(dka);
    fence_regs<D / 2>(dva);
    if constexpr (!NEXT_BEFORE_DQ_WAIT<D>) begin(it + 1);
    if (DQ == SM90_DQ_REDUCE) {
      if (lane == 0) bulk_wait_read<0>();  // the previous tile's dQ has left the warp's tile
      __syncwarp();
      store_dq<DQC>(dq_tile, dqa, lane);
      fence_async_shared();
      __syncwarp();
      if (lane == 0) {
        const int row0 = query0 + warp * 16;
        tma_reduce_add_4d(tdq, dq_tile, col0, h, row0, b);
        if constexpr (DQC == 64) tma_reduce_add_4d(tdq, dq_tile + 16 * 128, col0 + 32, h, row0, b);
        bulk_commit();
      }
    }
  }
  wgmma_wait<0>();
  fence_regs<D / 2>(dka);
  fence_regs<D / 2>(dva);
  store_dkdv<D>(dka, dva, dk, dv, b, key_a, kvh, T, NKV, scale, quad);
  if (DQ == SM90_DQ_REDUCE && lane == 0) bulk_wait<0>();  // the reduces have read their tiles and written
}

// The host's kernels: Q/dO stages by head dim (host/src/kernels/attention_cuda_bwd.rs sizes shared memory
// for SM90_BWD_STAGES_<D>).
#define SM90_BWD_STAGES_64 3
#define SM90_BWD_STAGES_128 3
#define SM90_BWD(DIM)                                                                                          \
  extern "C" __global__ void __launch_bounds__(256, 1) flash_bwd_sm90_d##DIM(                                  \
      const __grid_constant__ TmaDesc tq, const __grid_constant__ TmaDesc tk, const __grid_constant__ TmaDesc tv, \
      const __grid_constant__ TmaDesc tdo, const __grid_constant__ TmaDesc tdq, const float* lse,                \
      const float* delta, bf16* dk, bf16* dv, int T, int NH, int NKV, float scale_log2, float scale) {           \
    flash_bwd_sm90<DIM, SM90_BWD_STAGES_##DIM, SM90_DQ_REDUCE>(&tq, &tk, &tv, &tdo, &tdq, lse, delta, dk, dv, T, NH, NKV, scale_log2,  \
                                        scale);                                                                \
  }
SM90_BWD(64)
SM90_BWD(128)
