// The kernels that work row by row or value by value: embedding, layer_norm, gelu, softmax,
// residual_add. float32 runs the vector versions below where the instruction set has vectors
// (simd.hpp), everything else the portable ones (portable.hpp).
#include <cmath>
#include <type_traits>

#include "kernels.hpp"
#include "openmp.hpp"
#include "portable.hpp"
#include "simd.hpp"
#include "weight_format.hpp"

namespace gpt2gen {
namespace GPT2GEN_ISA_NS {

namespace {

template <typename F32>  // simd::Vec<float>
struct VectorPointwise {
  using V = typename F32::V;
  using Mask = typename F32::Mask;
  static constexpr int W = F32::W;

  static void layer_norm_row(const float* x, int d, LayerNormWeights<float> ln, float* out) {
    const int full = d / W * W;
    const Mask m = F32::mask(d - full);
    V acc = F32::load(x + full, m);
    for (int i = 0; i < full; i += W) acc = F32::add(acc, F32::load(x + i));
    const float mean = F32::sum(acc) / d;
    const V mean_v = F32::set1(mean);
    V var = F32::zero();
    for (int i = 0; i < full; i += W) {
      const V c = F32::sub(F32::load(x + i), mean_v);
      var = F32::fma(c, c, var);
    }
    if (full < d) {
      const V c = F32::keep(F32::sub(F32::load(x + full, m), mean_v), m);
      var = F32::fma(c, c, var);
    }
    const V inv_std = F32::set1(1.0f / std::sqrt(F32::sum(var) / d + 1e-5f));
    for (int i = 0; i < full; i += W)
      F32::store(out + i, F32::fma(F32::load(ln.g + i),
                                   F32::mul(F32::sub(F32::load(x + i), mean_v), inv_std),
                                   F32::load(ln.b + i)));
    if (full < d)
      F32::store(out + full,
                 F32::fma(F32::load(ln.g + full, m),
                          F32::mul(F32::sub(F32::load(x + full, m), mean_v), inv_std),
                          F32::load(ln.b + full, m)),
                 m);
  }

  // 0.5·x·(1 + tanh(y)) = x / (1 + exp(−2y)) exactly, y = √(2/π)·(x + 0.044715·x³); the
  // right-hand side has no cancellation for negative x and needs only exp.
  static V gelu(V x) {
    const V inner = F32::fma(F32::mul(F32::set1(0.044715f), F32::mul(x, x)), x, x);
    const V e = F32::exp(F32::mul(F32::set1(float(-2 * 0.7978845608028654)), inner));
    return F32::div(x, F32::add(F32::set1(1.0f), e));
  }

  static void gelu(float* x, int64_t n) {
    const int64_t nvec = (n + W - 1) / W;
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n > 65536)
    for (int64_t i = 0; i < nvec; ++i) {
      float* p = x + i * W;
      if ((i + 1) * W <= n) {
        F32::store(p, gelu(F32::load(p)));
      } else {
        const Mask m = F32::mask(int(n - i * W));
        F32::store(p, gelu(F32::load(p, m)), m);
      }
    }
  }

  static void softmax(float* x, int n) {
    const int full = n / W * W;
    const Mask m = F32::mask(n - full);
    V mx = F32::load_or_neg_inf(x + full, m);
    for (int i = 0; i < full; i += W) mx = F32::max(mx, F32::load(x + i));
    const V max_x = F32::set1(F32::max_all(mx));
    V sum = F32::zero();
    for (int i = 0; i < full; i += W) {
      const V e = F32::exp(F32::sub(F32::load(x + i), max_x));
      F32::store(x + i, e);
      sum = F32::add(sum, e);
    }
    if (full < n) {
      const V e = F32::keep(F32::exp(F32::sub(F32::load(x + full, m), max_x)), m);
      F32::store(x + full, e, m);
      sum = F32::add(sum, e);
    }
    const V inv_sum = F32::set1(1.0f / F32::sum(sum));
    for (int i = 0; i < full; i += W) F32::store(x + i, F32::mul(F32::load(x + i), inv_sum));
    if (full < n) F32::store(x + full, F32::mul(F32::load(x + full, m), inv_sum), m);
  }
};

template <typename T>
using Vector = VectorPointwise<simd::Vec<T>>;

}  // namespace

template <typename T>
void embedding(const T* wte, Packed wte_packed, const T* wpe, int n_embd, const int32_t* ids, int n,
               int pos0, T* out) {
  with_weight_format<T>(wte_packed.format, [&](auto format) {
    using Format = decltype(format);
    for (int t = 0; t < n; ++t) {
      const T* pos = wpe + size_t(pos0 + t) * n_embd;
      T* o = out + size_t(t) * n_embd;
      if constexpr (Format::kFormat == WeightFormat::native) {
        const T* tok = wte + size_t(ids[t]) * n_embd;
        for (int i = 0; i < n_embd; ++i) o[i] = tok[i] + pos[i];
      } else {  // wte[id] is column id of the stored wteᵀ (d_out is not needed)
        for (int i = 0; i < n_embd; ++i)
          o[i] = packed_value<Format>(wte_packed, n_embd, 0, i, ids[t]) + pos[i];
      }
    }
  });
}

template <typename T>
void layer_norm(const T* x, int n, int d, LayerNormWeights<T> ln, T* out) {
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n > 8)
  for (int r = 0; r < n; ++r) {
    if constexpr (simd::kHasVec<T>)
      Vector<T>::layer_norm_row(x + size_t(r) * d, d, ln, out + size_t(r) * d);
    else
      portable::layer_norm_row(x + size_t(r) * d, d, ln, out + size_t(r) * d);
  }
}

template <typename T>
void gelu(T* x, int64_t n) {
  if constexpr (simd::kHasVec<T>)
    Vector<T>::gelu(x, n);
  else
    portable::gelu(x, n);
}

template <typename T>
void softmax(T* x, int n) {
  if constexpr (simd::kHasVec<T>)
    Vector<T>::softmax(x, n);
  else
    portable::softmax(x, n);
}

template <typename T>
void residual_add(T* x, const T* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

#define GPT2GEN_INSTANTIATE(T)                                                               \
  template void embedding<T>(const T*, Packed, const T*, int, const int32_t*, int, int, T*); \
  template void layer_norm<T>(const T*, int, int, LayerNormWeights<T>, T*);                  \
  template void gelu<T>(T*, int64_t);                                                        \
  template void softmax<T>(T*, int);                                                         \
  template void residual_add<T>(T*, const T*, int64_t);
GPT2GEN_INSTANTIATE(float)
GPT2GEN_INSTANTIATE(double)
#undef GPT2GEN_INSTANTIATE

}  // namespace GPT2GEN_ISA_NS
}  // namespace gpt2gen
