// The sm_90a attention forward (host/kernels/attention_sm90.cu: warp-specialised, TMA loads, launched with
// tensor maps encoded here as host/src/kernels/tensor_map.rs does) beside the mma.sync one (attention.cuh) in
// one process, without the Rust host: correctness against an f32 CPU reference (grouped-query heads and a
// partial last tile) and between the two kernels, then the times at bench/gpu_ops.rs's attention sweep
// shapes under the op names bench/gpu/ops_reference.py's ratios read. Build and run on a Hopper machine:
//
//   nvcc -arch=sm_90a -O3 -std=c++17 -o attn_sm90 bench/gpu/attention_sm90_bench.cu -lcuda && ./attn_sm90 > ours.jsonl
//   (on a machine without a driver, link against the toolkit's stub: -L$CUDA_HOME/lib/stubs -lcuda)
//   ATTN_SWEEP=1 python3 bench/gpu/ops_reference.py --ours ours.jsonl
#include <cmath>

#ifdef WS_PHASE_TIMER
// -DWS_PHASE_TIMER: the consumer loop's phase hooks (attention_sm90.cu) add up clock64() cycles per phase
// into g_ws_phase (lane 0 of every consumer warp), and main prints the split instead of timing variants.
#define WS_PHASES 5
__device__ unsigned long long g_ws_phase[WS_PHASES];
#define WS_PHASE_BEGIN long long ph_t = clock64(), ph_acc[WS_PHASES] = {0, 0, 0, 0, 0};
#define WS_PHASE(k)                       \
  {                                       \
    const long long ph_n = clock64();     \
    ph_acc[k] += ph_n - ph_t;             \
    ph_t = ph_n;                          \
  }
#define WS_PHASE_END \
  if ((threadIdx.x & 31) == 0)                                                                  \
    for (int i = 0; i < WS_PHASES; i++) atomicAdd(&g_ws_phase[i], (unsigned long long)ph_acc[i]);
#endif

#include "../../host/kernels/fused.cu"
#include "../../host/kernels/attention_sm90.cu"
#include "harness.cuh"

typedef void (*Fwd)(const bf16*, const bf16*, const bf16*, bf16*, float*, int, int, int, float);
typedef void (*FwdTma)(const TmaDesc, const TmaDesc, const TmaDesc, bf16*, float*, int, int, int, float);

struct Kernel {
  const char* name;
  Fwd f;
  int rows, threads, smem;
  FwdTma tma = nullptr;  // set: the warp-specialised kernel, launched with tensor maps of q, k, v
};

static Kernel old_kernel(int d) {
  return {"mma.sync", d == 64 ? flash_fwd_d64 : flash_fwd_d128, 64, 128, 4 * 64 * (d + 8) * 2};
}
static Kernel ws_kernel(int d) {
  const int nc = d == 64 ? WS_CONSUMERS_64 : WS_CONSUMERS_128;
  Kernel k{"ws", nullptr, 64 * nc, 128 * (nc + 1),
           d == 64 ? WsSmem<64, WS_STAGES_64, WS_CONSUMERS_64>::bytes()
                   : WsSmem<128, WS_STAGES_128, WS_CONSUMERS_128>::bytes()};
  k.tma = d == 64 ? flash_fwd_ws_d64 : flash_fwd_ws_d128;
  return k;
}

// Variants of the forward for the measurements behind WS_CONSUMERS_<D>, WS_STAGES_<D>, WS_EARLY_<D> and the
// softmax's per-tile mask: NC consumer warpgroups, ST stages, the rescale of O before (EARLY) or after the
// softmax's wait, MASK_ALL: every key tile through the masked softmax.
template <int D, int ST, bool EARLY, int NC, bool MASK_ALL>
__global__ void __launch_bounds__(128 * (NC + 1), 1)
    ws_variant(const __grid_constant__ TmaDesc tq, const __grid_constant__ TmaDesc tk, const __grid_constant__ TmaDesc tv,
               bf16* o, float* lse, int T, int NH, int NKV, float scale_log2) {
  flash_fwd_ws<D, ST, EARLY, NC, MASK_ALL>(&tq, &tk, &tv, o, lse, T, NH, NKV, scale_log2);
}
template <int D, int ST, bool EARLY, int NC = 2, bool MASK_ALL = false> static Kernel variant(const char* name) {
  Kernel k{name, nullptr, 64 * NC, 128 * (NC + 1), WsSmem<D, ST, NC>::bytes()};
  k.tma = ws_variant<D, ST, EARLY, NC, MASK_ALL>;
  return k;
}
// (nc3: three consumer warpgroups, 192 query rows a CTA, as FlashAttention-3 at head dim 64; nc2: two; stN:
// N stages; early: the early rescale; mask-all: the production shape with every tile masked.)
static std::vector<Kernel> variants(int d) {
  if (d == 64)
    return {variant<64, 2, false>("nc2"), variant<64, 3, false>("nc2-st3"), variant<64, 2, false, 3>("nc3-st2"),
            variant<64, 3, true, 3>("nc3-st3-early"), variant<64, 3, false, 3, true>("mask-all")};
  return {variant<128, 2, true>("st2-early"), variant<128, 3, false>("st3"), variant<128, 3, true>("st3-early"),
          variant<128, 2, false, 2, true>("mask-all")};
}

static void launch(const Kernel& k, const bf16* q, const bf16* kk, const bf16* v, bf16* o, float* lse, int B,
                   int T, int NH, int NKV, int D) {
  dim3 grid((T + k.rows - 1) / k.rows, NH, B);
  float sl2 = 1.4426950408889634f / sqrtf((float)D);
  if (k.tma) {
    CHECK(cudaFuncSetAttribute(k.tma, cudaFuncAttributeMaxDynamicSharedMemorySize, k.smem));
    TmaDesc tq = head_rows_map(q, false, B, T, NH, D, k.rows), tk = head_rows_map(kk, false, B, T, NKV, D, SM90_BN),
            tv = head_rows_map(v, false, B, T, NKV, D, SM90_BN);
    k.tma<<<grid, k.threads, k.smem>>>(tq, tk, tv, o, lse, T, NH, NKV, sl2);
    CHECK(cudaGetLastError());
    return;
  }
  CHECK(cudaFuncSetAttribute(k.f, cudaFuncAttributeMaxDynamicSharedMemorySize, k.smem));
  CHECK(cudaFuncSetAttribute(k.f, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
  k.f<<<grid, k.threads, k.smem>>>(q, kk, v, o, lse, T, NH, NKV, sl2);
  CHECK(cudaGetLastError());
}

struct Case {
  int B, T, NH, NKV, D;
  std::vector<bf16> q, k, v;
  bf16 *dq, *dk, *dv;
  Case(int B_, int T_, int NH_, int NKV_, int D_, unsigned seed) : B(B_), T(T_), NH(NH_), NKV(NKV_), D(D_) {
    q = uniform_bf16((size_t)B * T * NH * D, seed, 2.f);
    k = uniform_bf16((size_t)B * T * NKV * D, seed + 1, 2.f);
    v = uniform_bf16((size_t)B * T * NKV * D, seed + 2, 2.f);
    dq = upload(q);
    dk = upload(k);
    dv = upload(v);
  }
  // o and lse of one kernel, copied back
  void run(const Kernel& kn, std::vector<float>& o, std::vector<float>& lse) const {
    bf16* d_o;
    float* d_l;
    size_t no = (size_t)B * T * NH * D, nl = (size_t)B * NH * T;
    CHECK(cudaMalloc(&d_o, no * 2));
    CHECK(cudaMalloc(&d_l, nl * 4));
    CHECK(cudaMemset(d_o, 0xff, no * 2));
    launch(kn, dq, dk, dv, d_o, d_l, B, T, NH, NKV, D);
    CHECK(cudaDeviceSynchronize());
    o = download(d_o, no);
    lse.resize(nl);
    CHECK(cudaMemcpy(lse.data(), d_l, nl * 4, cudaMemcpyDeviceToHost));
    CHECK(cudaFree(d_o));
    CHECK(cudaFree(d_l));
  }
  float ms(const Kernel& kn, int iters) const {
    bf16* d_o;
    float* d_l;
    CHECK(cudaMalloc(&d_o, (size_t)B * T * NH * D * 2));
    CHECK(cudaMalloc(&d_l, (size_t)B * NH * T * 4));
    float t = median_ms(iters, [&] { launch(kn, dq, dk, dv, d_o, d_l, B, T, NH, NKV, D); });
    CHECK(cudaFree(d_o));
    CHECK(cudaFree(d_l));
    return t;
  }
};

// max |x − ref| / max |ref| over o, and max |lse − ref| (log2 units), on rows where ref is given.
static void compare(const char* what, const Case& c, const std::vector<float>& o, const std::vector<float>& l,
                    const std::vector<float>& ro, const std::vector<float>& rl, int row_step) {
  double err = 0, mx = 0, lerr = 0;
  for (int b = 0; b < c.B; b++)
    for (int t = 0; t < c.T; t += row_step)
      for (int h = 0; h < c.NH; h++) {
        size_t base = (((size_t)b * c.T + t) * c.NH + h) * c.D;
        for (int d = 0; d < c.D; d++) {
          err = fmax(err, fabs(o[base + d] - ro[base + d]));
          mx = fmax(mx, fabs(ro[base + d]));
        }
        size_t li = ((size_t)b * c.NH + h) * c.T + t;
        lerr = fmax(lerr, fabs(l[li] - rl[li]));
      }
  printf("{\"check\": \"%s\", \"B\": %d, \"T\": %d, \"NH\": %d, \"NKV\": %d, \"D\": %d, \"o_max_rel\": %.3e, "
         "\"lse_max_abs\": %.3e}\n",
         what, c.B, c.T, c.NH, c.NKV, c.D, err / mx, lerr);
}

// f32 reference o and lse (log2 of scaled scores) on every row_step-th row.
static void reference(const Case& c, int row_step, std::vector<float>& o, std::vector<float>& lse) {
  o.assign((size_t)c.B * c.T * c.NH * c.D, 0.f);
  lse.assign((size_t)c.B * c.NH * c.T, 0.f);
  const float sl2 = 1.4426950408889634f / sqrtf((float)c.D);
  std::vector<float> p(c.T);
  for (int b = 0; b < c.B; b++)
    for (int t = 0; t < c.T; t += row_step)
      for (int h = 0; h < c.NH; h++) {
        int kh = h / (c.NH / c.NKV);
        const bf16* qr = &c.q[(((size_t)b * c.T + t) * c.NH + h) * c.D];
        float m = -INFINITY;
        for (int j = 0; j <= t; j++) {
          const bf16* kr = &c.k[(((size_t)b * c.T + j) * c.NKV + kh) * c.D];
          float s = 0;
          for (int d = 0; d < c.D; d++) s += __bfloat162float(qr[d]) * __bfloat162float(kr[d]);
          p[j] = s * sl2;
          m = fmaxf(m, p[j]);
        }
        float l = 0;
        for (int j = 0; j <= t; j++) l += (p[j] = exp2f(p[j] - m));
        float* orow = &o[(((size_t)b * c.T + t) * c.NH + h) * c.D];
        for (int j = 0; j <= t; j++) {
          const bf16* vr = &c.v[(((size_t)b * c.T + j) * c.NKV + kh) * c.D];
          for (int d = 0; d < c.D; d++) orow[d] += p[j] / l * __bfloat162float(vr[d]);
        }
        lse[((size_t)b * c.NH + h) * c.T + t] = m + log2f(l);
      }
}

#ifdef WS_PHASE_TIMER
// Where a consumer warp's cycles go, per key tile, for the production kernels and the variants at the
// sweep's shapes (one launch each after a warm-up).
static void phase_split() {
  const char* names[WS_PHASES] = {"wait_kv", "issue_wait_s", "softmax", "wait_pv", "pack"};
  for (int t : {2048, 4096})
    for (int d : {64, 128}) {
      Case c(16384 / t, t, 2048 / d, 2048 / d, d, 5);
      std::vector<Kernel> ks = {ws_kernel(d)};
      for (const Kernel& v : variants(d)) ks.push_back(v);
      for (const Kernel& kn : ks) {
        std::vector<float> o, l;
        c.run(kn, o, l);  // warm-up
        unsigned long long zero[WS_PHASES] = {0}, acc[WS_PHASES];
        CHECK(cudaMemcpyToSymbol(g_ws_phase, zero, sizeof zero));
        c.run(kn, o, l);
        CHECK(cudaMemcpyFromSymbol(acc, g_ws_phase, sizeof acc));
        long tiles = 0;  // consumer warps × key tiles, summed over CTAs
        for (int q0 = 0; q0 < t; q0 += kn.rows) tiles += (long)(std::min(q0 + kn.rows - 1, t - 1) / SM90_BN + 1);
        tiles *= (long)c.B * c.NH * (kn.rows / 16);
        printf("{\"phases\": \"%s\", \"T\": %d, \"D\": %d", kn.name, t, d);
        double total = 0;
        for (int i = 0; i < WS_PHASES; i++) total += (double)acc[i] / tiles;
        for (int i = 0; i < WS_PHASES; i++) printf(", \"%s\": %.0f", names[i], (double)acc[i] / tiles);
        printf(", \"cycles_per_tile\": %.0f}\n", total);
      }
    }
}
#endif

int main() {
  // correctness: grouped-query heads, a partial last tile, both head dims
  for (int d : {64, 128}) {
    for (int t : {1000, 257}) {
      Case c(2, t, 8, 2, d, 17 + d + t);
      std::vector<float> ro, rl, o1, l1, o2, l2;
      reference(c, 3, ro, rl);
      c.run(old_kernel(d), o1, l1);
      c.run(ws_kernel(d), o2, l2);
      compare("mma.sync vs f32", c, o1, l1, ro, rl, 3);
      compare("ws vs f32", c, o2, l2, ro, rl, 3);
      compare("ws vs mma.sync", c, o2, l2, o1, l1, 1);
      for (const Kernel& kv : variants(d)) {
        std::vector<float> o3, l3;
        c.run(kv, o3, l3);
        char what[64];
        snprintf(what, sizeof what, "ws %s vs f32", kv.name);
        compare(what, c, o3, l3, ro, rl, 3);
      }
    }
  }
  fflush(stdout);
#ifdef WS_PHASE_TIMER
  phase_split();
#else
  // timing at the sweep's shapes: 16,384 tokens × 2,048 features
  for (int t : {2048, 4096})
    for (int d : {64, 128}) {
      Case c(16384 / t, t, 2048 / d, 2048 / d, d, 5);
      std::vector<float> o1, l1, o2, l2;
      c.run(old_kernel(d), o1, l1);
      c.run(ws_kernel(d), o2, l2);
      compare("ws vs mma.sync", c, o2, l2, o1, l1, 1);
      float a = c.ms(old_kernel(d), 20), w = c.ms(ws_kernel(d), 20);
      printf("{\"op\": \"attention T%d D%d fwd\", \"ms\": %.4f, \"mma_sync_ms\": %.4f, \"ws_over_mma_sync\": %.3f}\n",
             t, d, w, a, w / a);
      for (const Kernel& kv : variants(d)) {
        float v = c.ms(kv, 20);
        printf("{\"variant\": \"%s\", \"T\": %d, \"D\": %d, \"ms\": %.4f, \"over_ws\": %.3f}\n", kv.name, t, d, v,
               v / w);
      }
      const float again = c.ms(ws_kernel(d), 20);  // timed again last: an order effect shows here
      printf("{\"variant\": \"ws again\", \"T\": %d, \"D\": %d, \"ms\": %.4f, \"over_ws\": %.3f}\n", t, d, again,
             again / w);
      fflush(stdout);
    }
#endif
  return 0;
}
