// Attention over the KV cache: kv_cache_append writes the new positions' keys and values (in the
// cache's format, kv_format.hpp), causal_attention computes softmax(q·kᵀ/√d)·v per head (float32
// with vectors where the instruction set has them, simd.hpp; otherwise the portable loops,
// portable.hpp), reading the cache widened to float32.
#include <algorithm>
#include <cmath>

#include "kernels.hpp"
#include "kv_format.hpp"
#include "openmp.hpp"
#include "portable.hpp"
#include "simd.hpp"

namespace gpt2gen {
namespace GPT2GEN_ISA_NS {

namespace {

// Each thread streams its heads' keys, then their values, once per query row; the hardware
// prefetchers keep up with these contiguous streams (software prefetch 512 or 2048 bytes ahead
// measured no faster on 12 layers' caches at ctx 1024).
template <typename F32, typename Format>  // simd::Vec<float>, the cache's traits (kv_format.hpp)
struct VectorAttention {
  using V = typename F32::V;
  using Mask = typename F32::Mask;
  using S = typename Format::Storage;
  static constexpr int W = F32::W;

  // Attention scores: q·k_t for NK keys at once, each in the canonical order (fma over the
  // vector chunks of the head in order, the last masked, then F32::sum), so a key's score is the
  // same whichever group it falls in.
  template <int NK>
  static void dots(const float* q, const S* k, int hd, float* out) {
    V acc[NK];
    for (int j = 0; j < NK; ++j) acc[j] = F32::zero();
    int c = 0;
    for (; c + W <= hd; c += W) {
      const V qv = F32::load(q + c);
      for (int j = 0; j < NK; ++j)
        acc[j] = F32::fma(qv, F32::widen(k + size_t(j) * hd + c), acc[j]);
    }
    if (c < hd) {
      const V qv = F32::load(q + c, F32::mask(hd - c));
      for (int j = 0; j < NK; ++j)
        acc[j] = F32::fma(qv, F32::widen(k + size_t(j) * hd + c, hd - c), acc[j]);
    }
    for (int j = 0; j < NK; ++j) out[j] = F32::sum(acc[j]);
  }

  // o[c·W + lane] = Σ_t p[t]·v[t, c·W + lane] for NV vectors of the head starting at column c0.
  template <int NV>
  static void weighted_values(const float* p, const S* v, int n_keys, int hd, int c0, float* o) {
    V acc[NV];
    for (int j = 0; j < NV; ++j) acc[j] = F32::zero();
    const int last = hd - (c0 + (NV - 1) * W);  // values in the last vector
    for (int t = 0; t < n_keys; ++t) {
      const V pv = F32::set1(p[t]);
      const S* vt = v + size_t(t) * hd + c0;
      for (int j = 0; j < NV; ++j)
        acc[j] = F32::fma(pv, j == NV - 1 ? F32::widen(vt + j * W, last) : F32::widen(vt + j * W),
                          acc[j]);
    }
    const Mask m = F32::mask(last);
    for (int j = 0; j < NV; ++j) {
      if (j == NV - 1)
        F32::store(o + c0 + j * W, acc[j], m);
      else
        F32::store(o + c0 + j * W, acc[j]);
    }
  }

  // One query row of one head over keys/values [0, n_keys).
  static void attend(const float* q, const S* k, const S* v, int n_keys, int hd, float* s,
                     float* o) {
    const float sqrt_hd = std::sqrt(float(hd));
    int t = 0;
    for (; t + 4 <= n_keys; t += 4) dots<4>(q, k + size_t(t) * hd, hd, s + t);
    for (; t < n_keys; ++t) dots<1>(q, k + size_t(t) * hd, hd, s + t);
    for (t = 0; t < n_keys; ++t) s[t] /= sqrt_hd;
    softmax(s, n_keys);
    const int nvec = (hd + W - 1) / W;
    int c = 0;
    for (; nvec - c >= 4; c += 4) weighted_values<4>(s, v, n_keys, hd, c * W, o);
    switch (nvec - c) {
      case 3: weighted_values<3>(s, v, n_keys, hd, c * W, o); break;
      case 2: weighted_values<2>(s, v, n_keys, hd, c * W, o); break;
      case 1: weighted_values<1>(s, v, n_keys, hd, c * W, o); break;
      default: break;
    }
  }
};

}  // namespace

template <typename T>
void kv_cache_append(const T* qkv, int n, int n_embd, int n_head, int pos0, KVLayer cache) {
  const int hd = n_embd / n_head;
  with_kv_format<T>(cache.format, [&](auto format) {
    using Format = decltype(format);
    using S = typename Format::Storage;
    for (int h = 0; h < n_head; ++h) {
      S* k = static_cast<S*>(cache.keys) + size_t(h) * cache.capacity * hd;
      S* v = static_cast<S*>(cache.values) + size_t(h) * cache.capacity * hd;
      for (int i = 0; i < n; ++i) {
        const T* row = qkv + size_t(i) * 3 * n_embd + h * hd;
        std::transform(row + n_embd, row + n_embd + hd, k + size_t(pos0 + i) * hd, Format::narrow);
        std::transform(row + 2 * n_embd, row + 2 * n_embd + hd, v + size_t(pos0 + i) * hd,
                       Format::narrow);
      }
    }
  });
}

template <typename T>
void causal_attention(const T* qkv, int n, int n_embd, int n_head, int pos0, KVLayer cache,
                      T* scores, T* out) {
  const int hd = n_embd / n_head;
  with_kv_format<T>(cache.format, [&](auto format) {
    using Format = decltype(format);
    using S = typename Format::Storage;
#pragma omp parallel for schedule(static) num_threads(num_threads())
    for (int h = 0; h < n_head; ++h) {
      const S* k = static_cast<const S*>(cache.keys) + size_t(h) * cache.capacity * hd;
      const S* v = static_cast<const S*>(cache.values) + size_t(h) * cache.capacity * hd;
      T* s = scores + size_t(h) * cache.capacity;
      for (int i = 0; i < n; ++i) {
        const T* q = qkv + size_t(i) * 3 * n_embd + h * hd;
        const int n_keys = pos0 + i + 1;  // causal: position pos0 + i sees 0 .. pos0 + i
        T* o = out + size_t(i) * n_embd + h * hd;
        if constexpr (simd::kHasVec<T>)
          VectorAttention<simd::Vec<T>, Format>::attend(q, k, v, n_keys, hd, s, o);
        else
          portable::attend<Format>(q, k, v, n_keys, hd, s, o);
      }
    }
  });
}

#define GPT2GEN_INSTANTIATE(T)                                             \
  template void kv_cache_append<T>(const T*, int, int, int, int, KVLayer); \
  template void causal_attention<T>(const T*, int, int, int, int, KVLayer, T*, T*);
GPT2GEN_INSTANTIATE(float)
GPT2GEN_INSTANTIATE(double)
#undef GPT2GEN_INSTANTIATE

}  // namespace GPT2GEN_ISA_NS
}  // namespace gpt2gen
