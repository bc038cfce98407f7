// CPU emulation of the CUDA execution model used by metakern's kernels:
// one block at a time, one std::thread per CUDA thread, __syncthreads() as a barrier.
// Between barriers the threads run one after another in an order chosen per phase
// (identity, reversed or random), so a data race inside a phase shows up as a
// result that depends on the order.
#pragma once
#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <random>
#include <thread>
#include <vector>
#include <functional>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __shared__
#define __align__(n)

using std::min;
using std::max;

struct EmuDim3 { unsigned x = 0, y = 1, z = 1; };
inline thread_local EmuDim3 threadIdx;
inline EmuDim3 blockDim;
inline EmuDim3 blockIdx;

struct EmuSched {
  std::mutex m;
  std::condition_variable cv;
  int nthr = 0, pos = 0, phase = 0, arrived = 0, mode = 0;
  long syncs = 0;
  std::vector<int> order;
  std::mt19937 rng;
  void new_order() {
    order.resize(nthr);
    for (int i = 0; i < nthr; ++i) order[i] = i;
    if (mode == 1) std::reverse(order.begin(), order.end());
    if (mode >= 2) std::shuffle(order.begin(), order.end(), rng);
  }
};
inline EmuSched* g_sched = nullptr;
inline thread_local int t_tid = 0;

inline void emu_wait_turn(std::unique_lock<std::mutex>& lk, int ph) {
  g_sched->cv.wait(lk, [&] { return g_sched->phase == ph && g_sched->order[g_sched->pos] == t_tid; });
}
inline void emu_end_segment_locked() {
  EmuSched* g = g_sched;
  g->pos++;
  g->arrived++;
  if (g->arrived == g->nthr) {
    g->arrived = 0;
    g->pos = 0;
    g->phase++;
    g->syncs++;
    g->new_order();
  }
  g->cv.notify_all();
}
inline void __syncthreads() {
  std::unique_lock<std::mutex> lk(g_sched->m);
  const int ph = g_sched->phase;
  emu_end_segment_locked();
  emu_wait_turn(lk, ph + 1);
}
