// Hopper (sm_90a) asynchronous-copy machinery for warp-specialised kernels: the tensor-memory accelerator
// (TMA) load of one box of a tensor map into shared memory and its reduce-add of a box back into global
// memory (bulk async-groups), the shared-memory transaction barriers (mbarrier) loads signal, and register
// reallocation between warpgroups (setmaxnreg).
//
// A tensor map (`TmaDesc`, 128 bytes, built on the host by cuTensorMapEncodeTiled) describes a global
// tensor and the box one load copies; it reaches the kernel as a `const __grid_constant__` parameter, and
// its generic address is what the load instruction takes. A load completes on an mbarrier: the producer
// announces the bytes it expects (`mbar_expect_tx`, which is also its arrival), the copy engine counts them
// off, and consumers wait on the barrier's phase parity (`mbar_wait`).
#pragma once
#include <stdint.h>

// The opaque 128-byte CUtensorMap, 64-byte aligned as the driver requires.
struct alignas(64) TmaDesc {
  uint64_t opaque[16];
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

// Initialises the mbarrier at `bar` to expect `count` arrivals per phase.
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
// Makes initialised mbarriers visible to the other threads and to the copy engine (then a CTA barrier).
__device__ __forceinline__ void mbar_fence_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
// One arrival that also announces `bytes` of TMA traffic the current phase must receive before it completes.
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
}
// One plain arrival.
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// Waits until the phase of parity `parity` (0 for phase 0, 2, …; 1 for 1, 3, …) has completed.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
  } while (!done);
}

// Copies the box of a rank-4 tensor map whose first element sits at coordinates (c0, c1, c2, c3) (innermost
// first) into shared memory at `dst`, counting its bytes off `bar`. Elements outside the tensor read 0.
__device__ __forceinline__ void tma_load_4d(void* dst, const TmaDesc* map, uint64_t* bar, int c0, int c1, int c2,
                                            int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], "
      "[%2];\n" ::"r"(smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_addr(bar)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
// Adds the f32 box at `src` in shared memory into the global tensor of a rank-4 tensor map at coordinates
// (c0, c1, c2, c3) (an element-wise atomic add done by the copy engine; elements outside the tensor are
// skipped), as part of this thread's current bulk async-group. The writes into `src` must be fenced
// (fence_async_shared) and, from other threads, synchronised before the call.
__device__ __forceinline__ void tma_reduce_add_4d(const TmaDesc* map, const void* src, int c0, int c1, int c2, int c3) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.4d.global.shared::cta.add.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(smem_addr(src)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
// Closes this thread's current bulk async-group (the reduces issued since the last commit).
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's bulk async-groups are still reading their shared-memory source.
template <int N> __device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
// Waits until at most N of this thread's bulk async-groups are incomplete (their global writes done).
template <int N> __device__ __forceinline__ void bulk_wait() {
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
}
// An arrival on `bar` once this thread's earlier cp.async copies have landed; not counted in advance
// (.noinc): the barrier's expected count includes it.
__device__ __forceinline__ void mbar_arrive_on_cp_async(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// Brings a tensor map into the TMA unit's cache ahead of its first use.
__device__ __forceinline__ void tma_prefetch(const TmaDesc* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// Lowers (dec) or raises (inc) this warpgroup's registers per thread to N; every warp of the warpgroup runs it.
template <int N> __device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N> __device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
