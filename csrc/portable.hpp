// The portable kernels: plain loops for any dtype and any weight format, on any machine. They are
// what the generic instruction set runs, what float64 models run everywhere, and the twin of
// every vector kernel (which agree with them to rounding, not bit for bit: their sums are split
// into other partial sums). Kernels that have one implementation only (embedding, residual_add,
// kv_cache_append) are defined with their entry points instead.
//
// Every output element is accumulated in one fixed order whatever the tiling, the row count or
// the thread count, as in the vector kernels (see csrc/README.md).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "backend.hpp"  // num_threads
#include "isa.hpp"
#include "model.hpp"
#include "openmp.hpp"
#include "weight_format.hpp"

namespace gpt2gen {
namespace GPT2GEN_ISA_NS {
namespace portable {

// The widest vector register, for tile widths the compiler can vectorise (these loops are plain
// C++: the compiler chooses the instructions).
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#elif defined(__AVX2__)
constexpr int kVectorBytes = 32;
#else
constexpr int kVectorBytes = 16;
#endif

template <typename T>
constexpr int kLanes = kVectorBytes / sizeof(T);

// Σ a[i]·widen(b[i]) in L interleaved partial sums, added up in a fixed order.
template <int L, typename Format, typename T>
inline T dot(const T* a, const typename Format::Storage* b, int n) {
  T acc[L] = {};
  int i = 0;
  for (; i + L <= n; i += L)
    for (int l = 0; l < L; ++l) acc[l] += a[i + l] * Format::widen(b[i + l]);
  for (int l = 0; l < n - i; ++l) acc[l] += a[i + l] * Format::widen(b[i + l]);
  T sum = 0;
  for (int l = 0; l < L; ++l) sum += acc[l];
  return sum;
}

// --- layer_norm, gelu, softmax ----------------------------------------------------------------

template <typename T>
inline void layer_norm_row(const T* x, int d, LayerNormWeights<T> ln, T* out) {
  constexpr T eps = T(1e-5);
  T mean = 0;
  for (int i = 0; i < d; ++i) mean += x[i];
  mean /= d;
  T variance = 0;
  for (int i = 0; i < d; ++i) variance += (x[i] - mean) * (x[i] - mean);
  variance /= d;
  const T inv_std = T(1) / std::sqrt(variance + eps);
  for (int i = 0; i < d; ++i) out[i] = ln.g[i] * ((x[i] - mean) * inv_std) + ln.b[i];
}

template <typename T>
inline void gelu(T* x, int64_t n) {
  const T c = T(std::sqrt(2.0 / M_PI));
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n > 16384)
  for (int64_t i = 0; i < n; ++i) {
    const T v = x[i];
    x[i] = T(0.5) * v * (T(1) + std::tanh(c * (v + T(0.044715) * v * v * v)));
  }
}

template <typename T>
inline void softmax(T* x, int n) {
  T max_x = x[0];
  for (int i = 1; i < n; ++i) max_x = std::max(max_x, x[i]);
  T sum = 0;
  for (int i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max_x);
    sum += x[i];
  }
  const T inv_sum = T(1) / sum;
  for (int i = 0; i < n; ++i) x[i] *= inv_sum;
}

// --- linear -----------------------------------------------------------------------------------
// Order of every output element: acc = 0; acc += x[k]·w[k, j] for k in order; out = acc + b[j].
// Quantized formats: acc = 0; per block: s = 0; s += x[k]·q[k, j] for k in the block in order;
// acc += scale·s; out = acc + b[j] (b may be null).

// sum[r][j] += Σ_{k0 ≤ k < k1} x[r, k]·w[k, j0 + j] in k order, for j < cols (with cols == COLS,
// a compile-time width, the accumulators stay in registers).
template <typename Format, typename T, int R, int COLS>
inline void add_products(const T* x, const typename Format::Storage* w, int d_in, int d_out, int j0,
                         int cols, int k0, int k1, T (&sum)[R][COLS]) {
  if (cols == COLS) {
    for (int k = k0; k < k1; ++k) {
      for (int r = 0; r < R; ++r) {
        const T xk = x[size_t(r) * d_in + k];
        for (int j = 0; j < COLS; ++j)
          sum[r][j] += xk * Format::widen(w[linear_index<Format>(k, j0 + j, d_in, d_out)]);
      }
    }
  } else {
    for (int k = k0; k < k1; ++k) {
      for (int r = 0; r < R; ++r) {
        const T xk = x[size_t(r) * d_in + k];
        for (int j = 0; j < cols; ++j)
          sum[r][j] += xk * Format::widen(w[linear_index<Format>(k, j0 + j, d_in, d_out)]);
      }
    }
  }
}

// out[r, j0 : j0 + cols] = x[r]·w[:, j0 : j0 + cols] + b for R rows.
template <typename Format, typename T, int R, int COLS>
inline void linear_tile(const T* x, const LinearWeights<T>& lin, int j0, int cols, T* out) {
  const int d_in = lin.d_in, d_out = lin.d_out;
  const auto* w = stored_values<Format>(lin.w, lin.packed);
  T acc[R][COLS] = {};
  add_products<Format>(x, w, d_in, d_out, j0, cols, 0, d_in, acc);
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < cols; ++j)
      out[size_t(r) * d_out + j0 + j] = lin.b ? acc[r][j] + lin.b[j0 + j] : acc[r][j];
}

// Every row of x, 4 at a time, against the columns [j0, j0 + cols).
template <typename Format, typename T, int COLS>
inline void linear_columns(const T* x, int n, const LinearWeights<T>& lin, int j0, int cols,
                           T* out) {
  constexpr int R = 4;
  const size_t ldx = lin.d_in, ldo = lin.d_out;
  int r = 0;
  for (; r + R <= n; r += R)
    linear_tile<Format, T, R, COLS>(x + r * ldx, lin, j0, cols, out + r * ldo);
  switch (n - r) {
    case 3: linear_tile<Format, T, 3, COLS>(x + r * ldx, lin, j0, cols, out + r * ldo); break;
    case 2: linear_tile<Format, T, 2, COLS>(x + r * ldx, lin, j0, cols, out + r * ldo); break;
    case 1: linear_tile<Format, T, 1, COLS>(x + r * ldx, lin, j0, cols, out + r * ldo); break;
    default: break;
  }
}

// Decode (n == 1) streams wide column panels of w; prefill and batches reuse each panel of w
// across 4 rows of x. Both accumulate every output in the same order.
template <typename Format, typename T>
void linear(Format, const T* x, int n, const LinearWeights<T>& lin, T* out) {
  constexpr int kDecodeCols = 16 * kLanes<T>;
  constexpr int kBatchCols = 4 * kLanes<T>;
  const int cols = n == 1 ? kDecodeCols : kBatchCols;
  const int n_panels = (lin.d_out + cols - 1) / cols;
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n_panels > 1)
  for (int p = 0; p < n_panels; ++p) {
    const int j0 = p * cols;
    const int width = std::min(cols, lin.d_out - j0);
    if (n == 1)
      linear_tile<Format, T, 1, kDecodeCols>(x, lin, j0, width, out);
    else
      linear_columns<Format, T, kBatchCols>(x, n, lin, j0, width, out);
  }
}

// The quantized formats, one column at a time (the weights' layout keeps a column's values of
// a group together).
template <typename Format>
void quantized_linear(const float* x, int n, const LinearWeights<float>& lin, float* out) {
  const QuantizedMatrix<Format> m(lin.packed, lin.d_in, lin.d_out);
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (lin.d_out >= 64)
  for (int j = 0; j < lin.d_out; ++j)
    for (int r = 0; r < n; ++r) {
      const float* xr = x + size_t(r) * lin.d_in;
      float acc = 0;
      for (int b = 0; b < m.blocks; ++b) {
        const int k0 = b * kQuantBlock, k1 = std::min(lin.d_in, k0 + kQuantBlock);
        const float scale = m.scale(b, j);
        for (int k = k0; k < k1; ++k)  // scale·q is the weight exactly (float16 · ≤ 8 bits)
          acc += xr[k] * (scale * float(Format::q(m.group_bytes(k, j), k % Format::kGroup)));
      }
      out[size_t(r) * lin.d_out + j] = lin.b ? acc + lin.b[j] : acc;
    }
}

// --- unembed ----------------------------------------------------------------------------------

// Native weights (unembed.cpp hands the packed formats, which store wteᵀ, to linear): each logit
// sums in 2·kLanes partial sums (vectorised), the order its results were first computed in.
template <typename T>
void unembed(const T* x, int n, const T* wte, int n_vocab, int d, T* out) {
  // Groups of vocabulary rows small enough to stay in cache while every x row visits them.
  constexpr int kGroupRows = 64;
  const int n_groups = (n_vocab + kGroupRows - 1) / kGroupRows;
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int g = 0; g < n_groups; ++g) {
    const int v_end = std::min(n_vocab, (g + 1) * kGroupRows);
    for (int r = 0; r < n; ++r)
      for (int v = g * kGroupRows; v < v_end; ++v)
        out[size_t(r) * n_vocab + v] =
            dot<2 * kLanes<T>, NativeFormat<T>>(x + size_t(r) * d, wte + size_t(v) * d, d);
  }
}

// --- attention --------------------------------------------------------------------------------

// One query row of one head over keys/values [0, n_keys) stored in the cache format Format
// (kv_format.hpp), read widened: o = softmax(q·kᵀ/√hd)·v, scores in s.
template <typename Format, typename T>
inline void attend(const T* q, const typename Format::Storage* k, const typename Format::Storage* v,
                   int n_keys, int hd, T* s, T* o) {
  const T sqrt_hd = std::sqrt(T(hd));
  for (int t = 0; t < n_keys; ++t)
    s[t] = dot<2 * kLanes<T>, Format>(q, k + size_t(t) * hd, hd) / sqrt_hd;
  softmax(s, n_keys);
  std::fill(o, o + hd, T(0));
  for (int t = 0; t < n_keys; ++t) {
    const T p = s[t];
    const auto* vt = v + size_t(t) * hd;
    for (int j = 0; j < hd; ++j) o[j] += p * Format::widen(vt[j]);
  }
}

}  // namespace portable
}  // namespace GPT2GEN_ISA_NS
}  // namespace gpt2gen
