// The sm_90a attention backward (host/kernels/attention_sm90_bwd.cuh) beside the mma.sync one (attention.cuh)
// in one process, without the Rust host: dq, dk, dv against an f32 CPU reference (grouped-query heads, a
// partial last tile, both head dims) and between the kernels, then the backward's time (delta, the dK/dV/dQ
// kernel and the dQ conversion, as host/src/kernels/attention_cuda_bwd.rs launches them) at bench/gpu_ops.rs's
// attention sweep shapes under the op names bench/gpu/ops_reference.py's ratios read, with the time of a
// variant that writes no dQ at all beside it (not a backward: the bound on what writing dQ costs). Build and run
// on a Hopper machine (without a driver, link against the toolkit's stub: -L$CUDA_HOME/lib/stubs):
//
//   nvcc -gencode arch=compute_90a,code=sm_90a -O3 -std=c++17 -o attn_bwd bench/gpu/attention_sm90_bwd_bench.cu -lcuda
//   ./attn_bwd > ours.jsonl && ATTN_SWEEP=1 python3 bench/gpu/ops_reference.py --ours ours.jsonl
#include <cmath>

#include "../../host/kernels/fused.cu"
#include "../../host/kernels/attention_sm90.cu"
#include "harness.cuh"

// The wgmma backward with dQ written as DQ (SM90_DQ_*), split as DQC (DQ_COLS).
template <int D, int ST, int DQ, int DQC = DQ_COLS<D>>
__global__ void __launch_bounds__(256, 1)
    bwd_variant(const __grid_constant__ TmaDesc tq, const __grid_constant__ TmaDesc tk, const __grid_constant__ TmaDesc tv,
                const __grid_constant__ TmaDesc tdo, const __grid_constant__ TmaDesc tdq, const float* lse,
                const float* delta, bf16* dk, bf16* dv, int T, int NH, int NKV, float sl2, float scale) {
  flash_bwd_sm90<D, ST, DQ, DQC>(&tq, &tk, &tv, &tdo, &tdq, lse, delta, dk, dv, T, NH, NKV, sl2, scale);
}
typedef void (*Bwd)(const TmaDesc, const TmaDesc, const TmaDesc, const TmaDesc, const TmaDesc, const float*,
                    const float*, bf16*, bf16*, int, int, int, float, float);
// Which backward a run launches: the host's kernels, the wgmma one without dQ (a bound), with two Q/dO
// stages (the variant behind SM90_BWD_STAGES_<D>), or at head dim 64 with each warpgroup's dQ as all 64
// columns over its own 64 keys (DQC = 64, the host's before DQ_COLS took 32-column halves; at 128 the host's).
enum Variant { MMA_SYNC, WGMMA, WGMMA_NO_DQ, WGMMA_2_STAGES, WGMMA_DQ_OWN_KEYS };
static const char* NAMES[] = {"mma.sync", "wgmma", "wgmma no dQ", "wgmma 2 stages", "wgmma dq own keys"};
static Bwd wgmma_kernel(Variant m, int D) {
  if (D == 64)
    return m == WGMMA             ? flash_bwd_sm90_d64
           : m == WGMMA_NO_DQ     ? bwd_variant<64, SM90_BWD_STAGES_64, SM90_DQ_NONE>
           : m == WGMMA_DQ_OWN_KEYS ? bwd_variant<64, SM90_BWD_STAGES_64, SM90_DQ_REDUCE, 64>
                                  : bwd_variant<64, 2, SM90_DQ_REDUCE>;
  return m == WGMMA || m == WGMMA_DQ_OWN_KEYS ? flash_bwd_sm90_d128
         : m == WGMMA_NO_DQ ? bwd_variant<128, SM90_BWD_STAGES_128, SM90_DQ_NONE>
                            : bwd_variant<128, 2, SM90_DQ_REDUCE>;
}
static int wgmma_smem(Variant m, int D) {
  const int st = m == WGMMA_2_STAGES ? 2 : D == 64 ? SM90_BWD_STAGES_64 : SM90_BWD_STAGES_128;
  return st == 2 ? SM90_BWD_SMEM(D, 2) : SM90_BWD_SMEM(D, 3);
}

static std::vector<bf16> rnd(size_t n, unsigned seed) { return uniform_bf16(n, seed, 1.f); }

struct Case {
  int B, T, NH, NKV, D;
  std::vector<bf16> q, k, v, g;
  bf16 *dq_, *dk_, *dv_, *dg_, *o, *gq, *gk, *gv;
  float *lse, *delta, *dq_acc;
  Case(int B_, int T_, int NH_, int NKV_, int D_, unsigned seed) : B(B_), T(T_), NH(NH_), NKV(NKV_), D(D_) {
    size_t nq = (size_t)B * T * NH * D, nk = (size_t)B * T * NKV * D;
    q = rnd(nq, seed), k = rnd(nk, seed + 1), v = rnd(nk, seed + 2), g = rnd(nq, seed + 3);
    dq_ = upload(q), dk_ = upload(k), dv_ = upload(v), dg_ = upload(g);
    o = dev_alloc<bf16>(nq), gq = dev_alloc<bf16>(nq), gk = dev_alloc<bf16>(nk), gv = dev_alloc<bf16>(nk);
    lse = dev_alloc<float>((size_t)B * NH * T), delta = dev_alloc<float>((size_t)B * NH * T);
    dq_acc = dev_alloc<float>(nq);
    // o and lse from the mma.sync forward
    auto f = D == 64 ? flash_fwd_d64 : flash_fwd_d128;
    int smem = 4 * 64 * (D + 8) * 2;
    CHECK(cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    f<<<dim3((T + 63) / 64, NH, B), 128, smem>>>(dq_, dk_, dv_, o, lse, T, NH, NKV, sl2());
    CHECK(cudaDeviceSynchronize());
  }
  float sl2() const { return 1.4426950408889634f / sqrtf((float)D); }
  // the backward as attention_cuda_bwd.rs launches it
  void backward(Variant m) {
    long rows = (long)B * T * NH, n = rows * D;
    flash_delta<<<(rows * 32 + 255) / 256, 256>>>(o, dg_, delta, rows, T, NH, D);
    CHECK(cudaMemsetAsync(dq_acc, 0, n * 4));
    float scale = 1.f / sqrtf((float)D);
    if (m != MMA_SYNC) {
      Bwd f = wgmma_kernel(m, D);
      int smem = wgmma_smem(m, D);
      CHECK(cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
      TmaDesc tq = head_rows_map(dq_, false, B, T, NH, D, SM90_BWD_BM),
              tk = head_rows_map(dk_, false, B, T, NKV, D, SM90_BWD_BN),
              tv = head_rows_map(dv_, false, B, T, NKV, D, SM90_BWD_BN),
              tdo = head_rows_map(dg_, false, B, T, NH, D, SM90_BWD_BM),
              tdq = head_rows_map(dq_acc, true, B, T, NH, D, 16);
      f<<<dim3((T + SM90_BWD_BN - 1) / SM90_BWD_BN, NKV, B), 256, smem>>>(tq, tk, tv, tdo, tdq, lse, delta, gk, gv,
                                                                          T, NH, NKV, sl2(), scale);
    } else {
      auto f = D == 64 ? flash_bwd_dkdv_d64 : flash_bwd_dkdv_d128;
      int smem = 6 * 64 * (D + 8) * 2 + 1024;
      CHECK(cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
      f<<<dim3((T + 63) / 64, NKV, B), 128, smem>>>(dq_, dk_, dv_, dg_, lse, delta, gk, gv, dq_acc, T, NH, NKV,
                                                   sl2(), scale);
    }
    CHECK(cudaGetLastError());
    flash_dq_from_acc<<<(n + 255) / 256, 256>>>(dq_acc, gq, n, scale);
    CHECK(cudaGetLastError());
  }
  void grads(Variant sm90, std::vector<float>& a, std::vector<float>& b, std::vector<float>& c) {
    CHECK(cudaMemset(gk, 0xff, (size_t)B * T * NKV * D * 2));
    CHECK(cudaMemset(gv, 0xff, (size_t)B * T * NKV * D * 2));
    backward(sm90);
    CHECK(cudaDeviceSynchronize());
    a = download(gq, (size_t)B * T * NH * D), b = download(gk, (size_t)B * T * NKV * D),
    c = download(gv, (size_t)B * T * NKV * D);
  }
  float ms(Variant m, int iters) {
    return median_ms(iters, [&] { backward(m); });
  }
  // f32 reference dq, dk, dv (softmax(q·kᵀ/√D) causal, grouped-query heads)
  void reference(std::vector<float>& rq, std::vector<float>& rk, std::vector<float>& rv) const {
    auto f = [](bf16 x) { return __bfloat162float(x); };
    rq.assign(q.size(), 0.f), rk.assign(k.size(), 0.f), rv.assign(v.size(), 0.f);
    const float scale = 1.f / sqrtf((float)D);
    std::vector<float> p(T), dp(T), orow(D);
    for (int b = 0; b < B; b++)
      for (int h = 0; h < NH; h++)
        for (int t = 0; t < T; t++) {
          const int kh = h / (NH / NKV);
          auto Q = [&](int d) { return f(q[(((size_t)b * T + t) * NH + h) * D + d]); };
          auto G = [&](int d) { return f(g[(((size_t)b * T + t) * NH + h) * D + d]); };
          auto kidx = [&](int j) { return (((size_t)b * T + j) * NKV + kh) * D; };
          float m = -INFINITY;
          for (int j = 0; j <= t; j++) {
            float s = 0;
            for (int d = 0; d < D; d++) s += Q(d) * f(k[kidx(j) + d]);
            m = fmaxf(m, p[j] = s * scale);
          }
          float l = 0;
          for (int j = 0; j <= t; j++) l += (p[j] = expf(p[j] - m));
          std::fill(orow.begin(), orow.end(), 0.f);
          for (int j = 0; j <= t; j++) {
            p[j] /= l;
            for (int d = 0; d < D; d++) orow[d] += p[j] * f(v[kidx(j) + d]);
          }
          float dl = 0;
          for (int d = 0; d < D; d++) dl += orow[d] * G(d);
          float* gq_row = &rq[(((size_t)b * T + t) * NH + h) * D];
          for (int j = 0; j <= t; j++) {
            float dpj = 0;
            for (int d = 0; d < D; d++) dpj += G(d) * f(v[kidx(j) + d]);
            const float ds = p[j] * (dpj - dl) * scale;
            for (int d = 0; d < D; d++) {
              gq_row[d] += ds * f(k[kidx(j) + d]);
              rk[kidx(j) + d] += ds * Q(d);
              rv[kidx(j) + d] += p[j] * G(d);
            }
          }
        }
  }
};

static double rel(const std::vector<float>& x, const std::vector<float>& r) {
  double err = 0, mx = 0;
  for (size_t i = 0; i < x.size(); i++) err = fmax(err, fabs(x[i] - r[i])), mx = fmax(mx, fabs(r[i]));
  return std::isfinite(err) ? err / mx : INFINITY;
}
static void compare(const char* what, const Case& c, const std::vector<float>* x, const std::vector<float>* r) {
  printf("{\"check\": \"%s\", \"B\": %d, \"T\": %d, \"NH\": %d, \"NKV\": %d, \"D\": %d, \"max_rel_err\": "
         "{\"dq\": %.3e, \"dk\": %.3e, \"dv\": %.3e}}\n",
         what, c.B, c.T, c.NH, c.NKV, c.D, rel(x[0], r[0]), rel(x[1], r[1]), rel(x[2], r[2]));
  fflush(stdout);
}

int main() {
  for (int d : {64, 128})
    for (int t : {700, 257, 64}) {
      Case c(1, t, 8, 2, d, 31 + d + t);
      std::vector<float> ref[3], got[5][3];
      c.reference(ref[0], ref[1], ref[2]);
      for (Variant i : {MMA_SYNC, WGMMA, WGMMA_2_STAGES, WGMMA_DQ_OWN_KEYS}) {
        c.grads(i, got[i][0], got[i][1], got[i][2]);
        char what[64];
        snprintf(what, sizeof what, "%s bwd vs f32", NAMES[i]);
        compare(what, c, got[i], ref);
      }
      compare("wgmma bwd vs mma.sync", c, got[1], got[0]);
    }
  for (int t : {2048, 4096})
    for (int d : {64, 128}) {
      Case c(16384 / t, t, 2048 / d, 2048 / d, d, 5);
      std::vector<float> a[3], b[3];
      c.grads(MMA_SYNC, a[0], a[1], a[2]);
      c.grads(WGMMA, b[0], b[1], b[2]);
      compare("wgmma bwd vs mma.sync", c, b, a);
      c.grads(WGMMA_2_STAGES, b[0], b[1], b[2]);
      compare("wgmma 2 stages bwd vs mma.sync", c, b, a);
      c.grads(WGMMA_DQ_OWN_KEYS, b[0], b[1], b[2]);
      compare("wgmma dq own keys bwd vs mma.sync", c, b, a);
      float ms[5];
      for (int m = 0; m < 5; m++) ms[m] = c.ms((Variant)m, 20);
      const float again = c.ms(WGMMA, 20);  // the host's kernel timed again last: an order effect shows
      printf("{\"op\": \"attention T%d D%d bwd\", \"ms\": %.4f, \"ms_again\": %.4f, \"mma_sync_ms\": %.4f, "
             "\"no_dq_ms\": %.4f, \"two_stages_ms\": %.4f, \"dq_own_keys_ms\": %.4f, \"wgmma_over_mma_sync\": %.3f}\n",
             t, d, ms[WGMMA], again, ms[MMA_SYNC], ms[WGMMA_NO_DQ], ms[WGMMA_2_STAGES], ms[WGMMA_DQ_OWN_KEYS],
             ms[WGMMA] / ms[MMA_SYNC]);
      fflush(stdout);
    }
  return 0;
}
