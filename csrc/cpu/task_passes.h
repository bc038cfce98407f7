// cpu/task_passes.h — one task's MLP passes on the CPU: forward, backward,
// R-operator, the per-task scratch, and the task drivers of the ops.
//
// Built on the products of cpu/gemm.h and the arithmetic of common/task_math.h (see
// there for the notation); the CPU launchers (cpu/adapt_cpu.cpp) run one task at a
// time per worker thread. On top of that notation:
//   e_{l-1} = delta_l W_l                    (gradient at layer l's input, before s')
//   delta_{l-1} = e_{l-1} * s'(z_{l-1})
//   gW_l = delta_l^T a_{l-1},   gb_l = sum_n delta_l
//
// Storage (all row-major, leading dimension = width, no padding):
//   every [N, d_l] matrix of layers 1..L lives in one buffer of N * H elements,
//   H = d_1 + .. + d_L, layer l at offset N * (d_1 + .. + d_{l-1});
//   WT holds W_l^T ([d_{l-1}, d_l]) for every layer, layer l at sum_{j<l} d_j d_{j-1}.
//
// Determinism: every output element is accumulated by one thread in a fixed order
// (matrix products sum over k in increasing order), so results do not depend on
// how tasks are split between threads.
#pragma once

#include <cstdint>

#include "common/task_math.h"
#include "cpu/gemm.h"

namespace metakern {
namespace task {

// ------------------------------------------------------------------ forward
// z_l = a_{l-1} W_l^T + b_l, a_l = s(z_l) (l < L). Writes W_l^T to WT (kept for the
// R-operator) and a_1 .. a_{L-1}, out = z_L to A.
template <typename T>
MK_HD void forward(const Mlp& net, i64 N, const T* theta, const T* x, int act, T* WT, T* A) {
  LayerOff o{0, 0, 0};
  const T* a_prev = x;
  for (int l = 1; l <= net.L; ++l) {
    const i64 ni = net.in(l), no = net.out(l);
    const T* W = theta + o.w;
    const T* b = W + no * ni;
    T* wt = WT + o.wt;
    T* z = A + N * o.h;
    transpose(no, ni, W, wt);
    // z = b + a_prev W^T; relu fused into the store, tanh / sigmoid a separate pass
    Epilogue<T> epi;
    if (l < net.L && act == kRelu) epi.kind = kEpiRelu;
    gemm(N, no, ni, a_prev, ni, i64(1), wt, no, z, no, kInitBias, b, epi);
    if (l < net.L && (act == kTanh || act == kSigmoid)) act_inplace(act, N * no, z);
    a_prev = z;
    o.w += no * (ni + 1);
    o.wt += no * ni;
    o.h += no;
  }
}

// Output of the forward pass (z_L) inside A.
template <typename T>
MK_HD T* output_of(const Mlp& net, i64 N, T* A) {
  return A + N * (net.H - net.d[net.L]);
}

// ------------------------------------------------------------------ backward
// Reverse sweep from delta_L (already in D at layer L):
//   gW_l = delta_l^T a_{l-1},  gb_l = sum_n delta_l,
//   e_{l-1} = delta_l W_l (kept in E for the R-operator), delta_{l-1} = e_{l-1} s'(z_{l-1}),
//   gx = delta_1 W_1 when gx != nullptr.
// g: [P] packed like theta.
template <typename T>
MK_HD void backward(const Mlp& net, i64 N, const T* theta, const T* x, int act, const T* A, T* E, T* D, T* g,
                    T* gx) {
  LayerOff o = layer_off(net, net.L);
  for (int l = net.L; l >= 1; --l) {
    const i64 ni = net.in(l), no = net.out(l);
    const T* W = theta + o.w;
    const T* delta = D + N * o.h;
    const i64 h_prev = o.h - ni;  // layer l-1's offset (meaningful for l > 1)
    const T* a_prev = l > 1 ? A + N * h_prev : x;
    // gW_l[j, i] = sum_n delta[n, j] a_prev[n, i]   (A operand = delta^T)
    gemm(no, ni, N, delta, i64(1), no, a_prev, ni, g + o.w, ni, kInitZero);
    sum_rows(N, no, delta, g + o.w + no * ni);
    if (l > 1) {
      T* e = E + N * h_prev;
      T* dp = D + N * h_prev;
      // e = delta W (kept), delta_prev = e * s'(z_prev) fused into the store
      gemm(N, ni, no, delta, no, i64(1), W, ni, e, ni, kInitZero, static_cast<const T*>(nullptr),
           epi_deriv<T>(act, a_prev, dp));
    } else if (gx != nullptr) {
      gemm(N, ni, no, delta, no, i64(1), W, ni, gx, ni, kInitZero);
    }
    if (l > 1) {
      o.w -= net.d[l - 1] * (net.d[l - 2] + 1);
      o.wt -= net.d[l - 1] * net.d[l - 2];
      o.h = h_prev;
    }
  }
}

// ------------------------------------------------------------------ R-operator
// One forward-over-reverse sweep at theta in direction u (packed like theta), after
// forward() and backward() at theta filled WT, A, E, D (and prob for CE):
//   R{a_0} = 0,  R{z_l} = R{a_{l-1}} W_l^T + a_{l-1} uW_l^T + ub_l,  R{a_l} = s'(z_l) R{z_l}
//   R{delta_L} = H_out R{z_L}
//   R{gW_l} = R{delta_l}^T a_{l-1} + delta_l^T R{a_{l-1}},  R{gb_l} = sum_n R{delta_l}
//   R{delta_{l-1}} = (R{delta_l} W_l + delta_l uW_l) s'(z_{l-1}) + e_{l-1} s''(z_{l-1}) R{z_{l-1}}
//   R{delta_0} = R{delta_1} W_1 + delta_1 uW_1    (= d/dx (u . grad_theta L))
// Writes hu = H u ([P]) and, when rd0 != nullptr, R{delta_0} ([N, d_0]).
template <typename T>
MK_HD void rop(const Mlp& net, i64 N, const T* theta, const T* u, const T* x, int act, int loss, const T* WT,
               const T* A, const T* E, const T* D, const T* prob, T* uWT, T* RZ, T* RA, T* RD, T* hu, T* rd0) {
  // R-forward
  LayerOff o{0, 0, 0};
  for (int l = 1; l <= net.L; ++l) {
    const i64 ni = net.in(l), no = net.out(l);
    const T* uW = u + o.w;
    const T* ub = uW + no * ni;
    T* uwt = uWT + o.wt;
    T* rz = RZ + N * o.h;
    const T* a_prev = l > 1 ? A + N * (o.h - ni) : x;
    transpose(no, ni, uW, uwt);
    // R{z} = ub + a_prev uW^T + R{a_prev} W^T;  R{a} = R{z} s'(z) fused into the last store
    const Epilogue<T> epi = l < net.L ? epi_deriv<T>(act, A + N * o.h, RA + N * o.h) : Epilogue<T>();
    if (l > 1) {
      gemm(N, no, ni, a_prev, ni, i64(1), uwt, no, rz, no, kInitBias, ub);
      gemm(N, no, ni, RA + N * (o.h - ni), ni, i64(1), WT + o.wt, no, rz, no, kInitC, static_cast<const T*>(nullptr),
           epi);
    } else {
      gemm(N, no, ni, a_prev, ni, i64(1), uwt, no, rz, no, kInitBias, ub, epi);
    }
    if (l < net.L) {
      o.w += no * (ni + 1);
      o.wt += no * ni;
      o.h += no;
    }
  }
  // output: R{delta_L}
  const i64 O = net.d[net.L];
  loss_hvp(loss, N, O, RZ + N * o.h, prob, RD + N * o.h);
  // R-backward
  for (int l = net.L; l >= 1; --l) {
    const i64 ni = net.in(l), no = net.out(l);
    const T* W = theta + o.w;
    const T* uW = u + o.w;
    const T* delta = D + N * o.h;
    const T* rdelta = RD + N * o.h;
    const i64 h_prev = o.h - ni;
    const T* a_prev = l > 1 ? A + N * h_prev : x;
    T* rgW = hu + o.w;
    gemm(no, ni, N, rdelta, i64(1), no, a_prev, ni, rgW, ni, kInitZero);
    if (l > 1) gemm(no, ni, N, delta, i64(1), no, RA + N * h_prev, ni, rgW, ni, kInitC);
    sum_rows(N, no, rdelta, rgW + no * ni);
    T* back = l > 1 ? RD + N * h_prev : rd0;
    if (back != nullptr) {
      // back = R{delta} W + delta uW, then (hidden layers) the activation step
      //   R{delta_prev} = back s'(z_prev) + e_prev s''(z_prev) R{z_prev}   fused into the store
      Epilogue<T> epi;
      if (l > 1) {
        epi.kind = kEpiRDelta;
        epi.act = act;
        epi.a = A + N * h_prev;
        epi.e = E + N * h_prev;
        epi.rz = RZ + N * h_prev;
      }
      gemm(N, ni, no, rdelta, no, i64(1), W, ni, back, ni, kInitZero);
      gemm(N, ni, no, delta, no, i64(1), uW, ni, back, ni, kInitC, static_cast<const T*>(nullptr), epi);
    }
    if (l > 1) {
      o.w -= net.d[l - 1] * (net.d[l - 2] + 1);
      o.wt -= net.d[l - 1] * net.d[l - 2];
      o.h = h_prev;
    }
  }
}

// ------------------------------------------------------------------ per-task scratch
// One contiguous block per worker, carved into the buffers below; sizes in elements,
// each piece rounded up to 16 elements (64-byte aligned when the block is).
template <typename T>
struct Scratch {
  T* WT;      // [nW]   W_l^T of the current parameters
  T* uWT;     // [nW]   uW_l^T of the R-operator direction
  T* A;       // [N H]  a_1 .. a_{L-1}, z_L
  T* E;       // [N H]  e_l = delta_{l+1} W_{l+1}
  T* D;       // [N H]  delta_l
  T* RZ;      // [N H]  R{z_l}
  T* RA;      // [N H]  R{a_l}
  T* RD;      // [N H]  R{delta_l}
  T* prob;    // [N O]  softmax (cross-entropy)
  T* rd0;     // [N D]  R{delta_0}
  T* g;       // [P]    gradient
  T* hu;      // [P]    H u
  T* u;       // [P]    lr * v
  T* thetas;  // [max(K,1) P]  theta_0 .. theta_{K-1}

  MK_HD static i64 round16(i64 n) { return (n + 15) / 16 * 16; }

  // Elements needed; with_rop = false leaves out the R-operator buffers.
  MK_HD static i64 size(const Mlp& net, i64 N, i64 K, bool with_rop) {
    const i64 nH = round16(N * net.H), nW = round16(net.nW), P = round16(net.P);
    const i64 nO = round16(N * net.d[net.L]), nD = round16(N * net.d[0]);
    i64 s = nW + 3 * nH + nO + P + (K > 1 ? K : 1) * P;
    if (with_rop) s += nW + 3 * nH + nD + 2 * P;
    return s;
  }

  MK_HD static Scratch carve(T* base, const Mlp& net, i64 N, i64 K, bool with_rop) {
    const i64 nH = round16(N * net.H), nW = round16(net.nW), P = round16(net.P);
    const i64 nO = round16(N * net.d[net.L]), nD = round16(N * net.d[0]);
    Scratch s{};
    T* p = base;
    s.WT = p; p += nW;
    s.A = p; p += nH;
    s.E = p; p += nH;
    s.D = p; p += nH;
    s.prob = p; p += nO;
    s.g = p; p += P;
    s.thetas = p; p += (K > 1 ? K : 1) * P;
    if (with_rop) {
      s.uWT = p; p += nW;
      s.RZ = p; p += nH;
      s.RA = p; p += nH;
      s.RD = p; p += nH;
      s.rd0 = p; p += nD;
      s.hu = p; p += P;
      s.u = p; p += P;
    }
    return s;
  }
};

// Forward + loss gradient + backward at theta: leaves g = grad L(theta) in s.g and
// the activations/deltas the R-operator needs in s.
template <typename T>
MK_HD void grad_at(const Mlp& net, i64 N, const T* theta, const T* x, Targets<T> y, int act, int loss,
                   Scratch<T>& s) {
  forward(net, N, theta, x, act, s.WT, s.A);
  const i64 O = net.d[net.L];
  const i64 hL = net.H - O;
  loss_grad(loss, N, O, s.A + N * hL, y.yf, y.yi, s.D + N * hL, s.prob);
  backward(net, N, theta, x, act, s.A, s.E, s.D, s.g, static_cast<T*>(nullptr));
}

// ------------------------------------------------------------------ task drivers
// The inner rates: lr [P] (lr_step = 0, every step's) or [K, P] (lr_step = P, row k
// for step k). The rate gradient g_lr has the same rows: one [P] row summed over the
// steps, or K rows, one a step.
// adapt_fwd for one task: theta_{k+1} = theta_k - lr_k * g_k, k < K; out = theta_K [P].
template <typename T>
MK_HD void adapt_forward_task(const Mlp& net, i64 N, i64 K, const T* theta0, const T* lr, i64 lr_step,
                              const T* x, Targets<T> y, int act, int loss, T* out, Scratch<T>& s) {
  const i64 P = net.P;
  copy(P, theta0, out);
  for (i64 k = 0; k < K; ++k) {
    grad_at(net, N, out, x, y, act, loss, s);
    sgd_step_inplace(P, lr + k * lr_step, s.g, out);
  }
}

// adapt_bwd for one task, from v_K = vK:
//   recompute theta_0 .. theta_{K-1} (second order; only those K vectors are kept),
//   then for k = K-1 .. 0:  u = lr_k * v_{k+1};  g_lr(row of k) -= g_k * v_{k+1};
//   second order: v_k = v_{k+1} - H_k u,  g_x -= R{delta_0};  first order: v_k = v_{k+1}.
// Outputs g_theta = v_0 [P], g_lr [P] or [K, P] (as lr, lr_step), g_x [N, D] (zeros
// unless second order and need_x).
// kept (second order; K blocks of Scratch::size(net, N, 1, false), or nullptr): the
// recomputing walk leaves grad_at's state of step k in kept[k], so the reverse loop
// recomputes only step K-1 instead of all K (see maml_task).
template <typename T>
MK_HD void adapt_backward_task(const Mlp& net, i64 N, i64 K, const T* theta0, const T* lr, i64 lr_step,
                               const T* x, Targets<T> y, const T* vK, int act, int loss, bool first_order,
                               bool need_x, T* g_theta, T* g_lr, T* g_x, Scratch<T>& s, Scratch<T>* kept) {
  const i64 P = net.P, ND = N * net.d[0];
  T* v = g_theta;  // v_k lives in the output row
  copy(P, vK, v);
  fill(lr_step != 0 ? K * P : P, T(0), g_lr);
  fill(ND, T(0), g_x);
  if (K == 0) return;

  if (first_order) {
    // v is constant; g_lr(row of k) -= g_k * v_K, walking theta_0 .. theta_{K-1} forward.
    T* cur = s.thetas;
    copy(P, theta0, cur);
    for (i64 k = 0; k < K; ++k) {
      grad_at(net, N, cur, x, y, act, loss, s);
      lr_grad(P, s.g, v, g_lr + k * lr_step);
      if (k + 1 < K) sgd_step_inplace(P, lr + k * lr_step, s.g, cur);
    }
    return;
  }

  // theta_0 .. theta_{K-1}
  copy(P, theta0, s.thetas);
  for (i64 k = 0; k + 1 < K; ++k) {
    const T* th = s.thetas + k * P;
    Scratch<T>& w = kept != nullptr ? kept[k] : s;
    grad_at(net, N, th, x, y, act, loss, w);
    sgd_step(P, th, lr + k * lr_step, w.g, s.thetas + (k + 1) * P);
  }
  // reverse loop
  for (i64 k = K - 1; k >= 0; --k) {
    const T* th = s.thetas + k * P;
    Scratch<T>& w = kept != nullptr ? kept[k] : s;
    if (kept == nullptr || k + 1 == K) grad_at(net, N, th, x, y, act, loss, w);
    reverse_step_pre(P, lr + k * lr_step, w.g, v, s.u, g_lr + k * lr_step);
    rop(net, N, th, s.u, x, act, loss, w.WT, w.A, w.E, w.D, w.prob, s.uWT, s.RZ, s.RA, s.RD, s.hu,
        need_x ? s.rd0 : static_cast<T*>(nullptr));
    sub_inplace(P, s.hu, v);
    if (need_x) sub_inplace(ND, s.rd0, g_x);
  }
}

// The query pass of maml_task at theta: returns L_query(theta) and, when g != nullptr,
// writes scale * grad L_query(theta) to g [P] (q's buffers hold the pass).
template <typename T>
MK_HD T query_pass(const Mlp& net, i64 Nq, const T* theta, const T* xq, Targets<T> yq, int act, int loss,
                   Scratch<T>& q, T* g, T scale) {
  forward(net, Nq, theta, xq, act, q.WT, q.A);
  const i64 O = net.d[net.L];
  const i64 hL = net.H - O;
  const T l = loss_value(loss, Nq, O, q.A + Nq * hL, yq.yf, yq.yi);
  if (g == nullptr) return l;
  loss_grad(loss, Nq, O, q.A + Nq * hL, yq.yf, yq.yi, q.D + Nq * hL, q.prob);
  backward(net, Nq, theta, xq, act, q.A, q.E, q.D, g, static_cast<T*>(nullptr));
  if (scale != T(1))
    for (i64 i = 0; i < net.P; ++i) g[i] *= scale;
  return l;
}

// maml_fwd for one task: the meta-objective and, when need_grad, its gradient, in one
// walk of the inner loop. Without step weights (sw == nullptr) the objective is
// l = L_query(theta_K); with them (sw [K]) it is l = sum_{k=1..K} sw[k-1] L_query(theta_k).
//   walk   theta_{k+1} = theta_k - lr_k * g_k on the support set, k < K (theta_0 .. theta_K
//          kept in s.thetas); with step weights, the query pass at each theta_{k+1} right
//          after the step (its loss into l, sw[k] grad L_query(theta_{k+1}) into gq row k;
//          a zero weight skips the pass: it adds exactly nothing);
//   query  without step weights: forward at theta_K in q's buffers, l, v_K = grad L_query(theta_K);
//   back   the reverse loop of adapt_backward_task from v_K (= gq row K-1 with step
//          weights), adding gq row k-1 to v after the step at k >= 1.
// The reverse loop needs grad_at's state (W^T, activations, e, deltas, softmax, g)
// at every theta_k. With `kept` (K blocks of Scratch::size(net, Ns, 1, false), one
// per step) the walk leaves each step's state in its own block and nothing is
// recomputed; without it the walk's state lives in s, survives only for k = K-1,
// and steps 0 .. K-2 are recomputed. The caller keeps them when K blocks fit a
// per-thread budget (the blocks are per worker thread, not per task).
// First order: v is constant between injections. Without step weights g_theta = v_K
// and g_lr = -(sum_k g_k) * v_K ([P] lr) or g_lr[k] = -g_k * v_K ([K, P]), from the
// g_k summed (or stored by row) during the walk; with step weights the reverse loop
// runs on the g_k the walk stored in gk ([K, P]): g_lr(row of k) -= g_k * v_{k+1}.
// g_lr may be null when no lr gradient is wanted (maml_fwd's need_lr).
// gq [K, P]: needed with step weights and need_grad (else null); gk [K, P]: needed with
// step weights, need_grad, first order and g_lr (else null).
// s: Scratch::size(net, Ns, K + 1, !first_order); q: Scratch::size(net, Nq, 0, false).
template <typename T>
MK_HD void maml_task(const Mlp& net, i64 Ns, i64 Nq, i64 K, const T* theta0, const T* lr, i64 lr_step,
                     const T* sw, const T* xs, Targets<T> ys, const T* xq, Targets<T> yq, int act, int loss,
                     bool first_order, bool need_grad, T* loss_out, T* g_theta, T* g_lr, T* gq, T* gk,
                     Scratch<T>& s, Scratch<T>& q, Scratch<T>* kept) {
  const i64 P = net.P;
  const i64 lr_rows = lr_step != 0 ? K : 1;
  // first order without step weights: the g_k summed (or stored by row) during the walk
  const bool sum_g = need_grad && first_order && g_lr != nullptr && sw == nullptr;
  if (sum_g) fill(lr_rows * P, T(0), g_lr);
  T total = T(0);
  copy(P, theta0, s.thetas);
  for (i64 k = 0; k < K; ++k) {
    const T* th = s.thetas + k * P;
    Scratch<T>& w = kept != nullptr ? kept[k] : s;
    grad_at(net, Ns, th, xs, ys, act, loss, w);
    if (sum_g)
      for (i64 i = 0; i < P; ++i) g_lr[k * lr_step + i] += w.g[i];
    if (gk != nullptr) copy(P, w.g, gk + k * P);
    sgd_step(P, th, lr + k * lr_step, w.g, s.thetas + (k + 1) * P);
    if (sw != nullptr && sw[k] != T(0))
      total += sw[k] * query_pass(net, Nq, s.thetas + (k + 1) * P, xq, yq, act, loss, q,
                                  need_grad ? gq + k * P : static_cast<T*>(nullptr), sw[k]);
  }
  T* v = g_theta;  // v_k lives in the output row
  if (sw == nullptr) {
    *loss_out = query_pass(net, Nq, s.thetas + K * P, xq, yq, act, loss, q, need_grad ? v : static_cast<T*>(nullptr),
                           T(1));
  } else {
    *loss_out = total;
  }
  if (!need_grad) return;
  if (sw != nullptr) {
    if (sw[K - 1] != T(0))
      copy(P, gq + (K - 1) * P, v);
    else
      fill(P, T(0), v);
  }
  if (first_order && sw == nullptr) {
    if (sum_g)
      for (i64 r = 0; r < lr_rows; ++r)
        for (i64 i = 0; i < P; ++i) g_lr[r * P + i] = -g_lr[r * P + i] * v[i];
    return;
  }
  if (g_lr != nullptr) fill(lr_rows * P, T(0), g_lr);
  for (i64 k = K - 1; k >= 0; --k) {
    if (first_order) {
      if (g_lr != nullptr) lr_grad(P, gk + k * P, v, g_lr + k * lr_step);  // gk is there when g_lr is
    } else {
      const T* th = s.thetas + k * P;
      Scratch<T>& w = kept != nullptr ? kept[k] : s;
      if (kept == nullptr && k + 1 < K) grad_at(net, Ns, th, xs, ys, act, loss, s);
      reverse_step_pre(P, lr + k * lr_step, w.g, v, s.u, g_lr != nullptr ? g_lr + k * lr_step : g_lr);
      rop(net, Ns, th, s.u, xs, act, loss, w.WT, w.A, w.E, w.D, w.prob, s.uWT, s.RZ, s.RA, s.RD, s.hu,
          static_cast<T*>(nullptr));
      sub_inplace(P, s.hu, v);
    }
    if (sw != nullptr && k >= 1 && sw[k - 1] != T(0))
      for (i64 i = 0; i < P; ++i) v[i] += gq[(k - 1) * P + i];
  }
}

// mlp_fwd for one task: out = z_L [N, O].
template <typename T>
MK_HD void mlp_forward_task(const Mlp& net, i64 N, const T* theta, const T* x, int act, T* out, Scratch<T>& s) {
  forward(net, N, theta, x, act, s.WT, s.A);
  const i64 O = net.d[net.L];
  const T* z = output_of(net, N, s.A);
  copy(N * O, z, out);
}

// mlp_bwd for one task: from delta_L = grad_out [N, O], g_theta [P] and g_x [N, D]
// (g_x = delta_1 W_1 when need_x, zeros otherwise).
template <typename T>
MK_HD void mlp_backward_task(const Mlp& net, i64 N, const T* theta, const T* x, const T* grad_out, int act,
                             bool need_x, T* g_theta, T* g_x, Scratch<T>& s) {
  forward(net, N, theta, x, act, s.WT, s.A);
  const i64 O = net.d[net.L];
  T* dL = s.D + N * (net.H - O);
  copy(N * O, grad_out, dL);
  if (!need_x) fill(N * net.d[0], T(0), g_x);
  backward(net, N, theta, x, act, s.A, s.E, s.D, g_theta, need_x ? g_x : static_cast<T*>(nullptr));
}

}  // namespace task
}  // namespace metakern
