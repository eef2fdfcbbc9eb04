// Kernels: the math of GPT-2, one function each (declared and documented in kernels.hpp).
//
// Reproducibility rule: parallel work is split over output elements (columns, vocabulary rows,
// heads, positions), never over a reduction, and every output element is accumulated in one fixed
// order whatever the tiling. So the results do not depend on the thread count, and a row computed
// alone (decode) is bit-identical to the same row computed in a batch (prefill).
#include "kernels.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>

namespace gpt2gen {
namespace GPT2GEN_ISA_NS {

namespace {

#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#elif defined(__AVX2__)
constexpr int kVectorBytes = 32;
#else
constexpr int kVectorBytes = 16;
#endif

template <typename T>
constexpr int kLanes = kVectorBytes / sizeof(T);

// Σ a[i]·b[i] in kLanes·2 interleaved partial sums, added up in a fixed order.
template <typename T>
inline T dot(const T* a, const T* b, int n) {
  constexpr int L = 2 * kLanes<T>;
  T acc[L] = {};
  int i = 0;
  for (; i + L <= n; i += L)
    for (int l = 0; l < L; ++l) acc[l] += a[i + l] * b[i + l];
  for (int l = 0; l < n - i; ++l) acc[l] += a[i + l] * b[i + l];
  T sum = 0;
  for (int l = 0; l < L; ++l) sum += acc[l];
  return sum;
}

// out[r, j0:j0+cols] = x[r]·w[:, j0:j0+cols] + b for R rows, accumulating over d_in in order.
// With COLS a compile-time constant the accumulators stay in registers.
template <typename T, int R, int COLS>
inline void linear_tile(const T* x, const T* w, const T* b, int d_in, int d_out, int j0, int cols,
                        T* out) {
  T acc[R][COLS] = {};
  if (cols == COLS) {
    for (int i = 0; i < d_in; ++i) {
      const T* wi = w + size_t(i) * d_out + j0;
      for (int r = 0; r < R; ++r) {
        const T xi = x[size_t(r) * d_in + i];
        for (int j = 0; j < COLS; ++j) acc[r][j] += xi * wi[j];
      }
    }
  } else {
    for (int i = 0; i < d_in; ++i) {
      const T* wi = w + size_t(i) * d_out + j0;
      for (int r = 0; r < R; ++r) {
        const T xi = x[size_t(r) * d_in + i];
        for (int j = 0; j < cols; ++j) acc[r][j] += xi * wi[j];
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < cols; ++j) out[size_t(r) * d_out + j0 + j] = acc[r][j] + b[j0 + j];
}

template <typename T, int COLS>
inline void linear_columns(const T* x, int n, const T* w, const T* b, int d_in, int d_out, int j0,
                           int cols, T* out) {
  constexpr int R = 4;
  int r = 0;
  for (; r + R <= n; r += R)
    linear_tile<T, R, COLS>(x + size_t(r) * d_in, w, b, d_in, d_out, j0, cols,
                            out + size_t(r) * d_out);
  const T* xr = x + size_t(r) * d_in;
  T* outr = out + size_t(r) * d_out;
  switch (n - r) {
    case 3: linear_tile<T, 3, COLS>(xr, w, b, d_in, d_out, j0, cols, outr); break;
    case 2: linear_tile<T, 2, COLS>(xr, w, b, d_in, d_out, j0, cols, outr); break;
    case 1: linear_tile<T, 1, COLS>(xr, w, b, d_in, d_out, j0, cols, outr); break;
    default: break;
  }
}

}  // namespace

template <typename T>
void embedding(const T* wte, const T* wpe, int n_embd, const int32_t* ids, int n, int pos0,
               T* out) {
  for (int t = 0; t < n; ++t) {
    const T* tok = wte + size_t(ids[t]) * n_embd;
    const T* pos = wpe + size_t(pos0 + t) * n_embd;
    T* o = out + size_t(t) * n_embd;
    for (int i = 0; i < n_embd; ++i) o[i] = tok[i] + pos[i];
  }
}

template <typename T>
void layer_norm(const T* x, int n, int d, LayerNormWeights<T> ln, T* out) {
  constexpr T eps = T(1e-5);
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n > 8)
  for (int r = 0; r < n; ++r) {
    const T* xr = x + size_t(r) * d;
    T* o = out + size_t(r) * d;
    T mean = 0;
    for (int i = 0; i < d; ++i) mean += xr[i];
    mean /= d;
    T variance = 0;
    for (int i = 0; i < d; ++i) variance += (xr[i] - mean) * (xr[i] - mean);
    variance /= d;
    const T inv_std = T(1) / std::sqrt(variance + eps);
    for (int i = 0; i < d; ++i) o[i] = ln.g[i] * ((xr[i] - mean) * inv_std) + ln.b[i];
  }
}

template <typename T>
void gelu(T* x, int64_t n) {
  const T c = T(std::sqrt(2.0 / M_PI));
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n > 16384)
  for (int64_t i = 0; i < n; ++i) {
    const T v = x[i];
    x[i] = T(0.5) * v * (T(1) + std::tanh(c * (v + T(0.044715) * v * v * v)));
  }
}

template <typename T>
void softmax(T* x, int n) {
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

template <typename T>
void linear(const T* x, int n, LinearWeights<T> lin, T* out) {
  // Decode (n == 1) streams wide column panels of w; prefill and batches reuse each panel
  // of w across 4 rows of x. Both accumulate every output in the same order.
  constexpr int kDecodeCols = 16 * kLanes<T>;
  constexpr int kBatchCols = 4 * kLanes<T>;
  const int cols = n == 1 ? kDecodeCols : kBatchCols;
  const int n_panels = (lin.d_out + cols - 1) / cols;
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n_panels > 1)
  for (int p = 0; p < n_panels; ++p) {
    const int j0 = p * cols;
    const int width = std::min(cols, lin.d_out - j0);
    if (n == 1)
      linear_tile<T, 1, kDecodeCols>(x, lin.w, lin.b, lin.d_in, lin.d_out, j0, width, out);
    else
      linear_columns<T, kBatchCols>(x, n, lin.w, lin.b, lin.d_in, lin.d_out, j0, width, out);
  }
}

template <typename T>
void unembed(const T* x, int n, const T* wte, int n_vocab, int d, T* out) {
  // Blocks of vocabulary rows small enough to stay in cache while every x row visits them.
  constexpr int kBlock = 64;
  const int n_blocks = (n_vocab + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int blk = 0; blk < n_blocks; ++blk) {
    const int v_end = std::min(n_vocab, (blk + 1) * kBlock);
    for (int r = 0; r < n; ++r)
      for (int v = blk * kBlock; v < v_end; ++v)
        out[size_t(r) * n_vocab + v] = dot(x + size_t(r) * d, wte + size_t(v) * d, d);
  }
}

template <typename T>
void attention(const T* qkv, int n, int n_embd, int n_head, int pos0, T* keys, T* values,
               int capacity, T* scores, T* out) {
  const int hd = n_embd / n_head;
  const T sqrt_hd = std::sqrt(T(hd));
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int h = 0; h < n_head; ++h) {
    T* k = keys + size_t(h) * capacity * hd;
    T* v = values + size_t(h) * capacity * hd;
    T* s = scores + size_t(h) * capacity;
    for (int i = 0; i < n; ++i) {
      const T* row = qkv + size_t(i) * 3 * n_embd + h * hd;
      std::copy(row + n_embd, row + n_embd + hd, k + size_t(pos0 + i) * hd);
      std::copy(row + 2 * n_embd, row + 2 * n_embd + hd, v + size_t(pos0 + i) * hd);
    }
    for (int i = 0; i < n; ++i) {
      const T* q = qkv + size_t(i) * 3 * n_embd + h * hd;
      const int n_keys = pos0 + i + 1;  // causal: position pos0 + i sees 0..pos0 + i
      for (int t = 0; t < n_keys; ++t) s[t] = dot(q, k + size_t(t) * hd, hd) / sqrt_hd;
      softmax(s, n_keys);
      T* o = out + size_t(i) * n_embd + h * hd;
      std::fill(o, o + hd, T(0));
      for (int t = 0; t < n_keys; ++t) {
        const T p = s[t];
        const T* vt = v + size_t(t) * hd;
        for (int j = 0; j < hd; ++j) o[j] += p * vt[j];
      }
    }
  }
}

template <typename T>
void residual_add(T* x, const T* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

#define GPT2GEN_INSTANTIATE(T)                                                              \
  template void embedding<T>(const T*, const T*, int, const int32_t*, int, int, T*);        \
  template void layer_norm<T>(const T*, int, int, LayerNormWeights<T>, T*);                 \
  template void gelu<T>(T*, int64_t);                                                       \
  template void softmax<T>(T*, int);                                                        \
  template void linear<T>(const T*, int, LinearWeights<T>, T*);                             \
  template void unembed<T>(const T*, int, const T*, int, int, T*);                          \
  template void attention<T>(const T*, int, int, int, int, T*, T*, int, T*, T*);            \
  template void residual_add<T>(T*, const T*, int64_t);
GPT2GEN_INSTANTIATE(float)
GPT2GEN_INSTANTIATE(double)

}  // namespace GPT2GEN_ISA_NS
}  // namespace gpt2gen
