// The logits: x against every row of the tied embedding wte (float32 with vectors where the
// instruction set has them, simd.hpp; otherwise the portable loops).
//
// The packed formats store wte as the matrix wteᵀ [d, n_vocab] (model.hpp): their logits are a
// linear without bias (linear.cpp).
//
// Vector order of every logit (one instruction set; the same for every row count, tiling and
// thread count), with vector lanes over d: acc = 0; acc = fma(x[r, c·W:], wte[v, c·W:], acc) over
// the vector chunks c of d in order (the last one masked); logit = F32::sum(acc).
#include <algorithm>

#include "kernels.hpp"
#include "openmp.hpp"
#include "portable.hpp"
#include "simd.hpp"

namespace gpt2gen {
namespace GPT2GEN_ISA_NS {

namespace {

template <typename F32>  // simd::Vec<float>
struct VectorUnembed {
  using V = typename F32::V;
  using Mask = typename F32::Mask;
  static constexpr int W = F32::W;

  // Tile sizes: n = 1, kDecodeVocab vocabulary rows at a time; n > 1, kRows rows of x ×
  // kVocab vocabulary rows. One row at a time reads wte as one sequential stream: 8 interleaved
  // rows (3 KB each, 124M shape) made float32 decode ~8% slower (alternating A/B, 2 threads).
  static constexpr int kDecodeVocab = 1;
  static constexpr int kRows = W == 16 ? 4 : 3;
  static constexpr int kVocab = W == 16 ? 6 : 4;

  // out[r, v] for R rows of x against NV consecutive rows of wte.
  template <int R, int NV>
  static void tile(const float* x, const float* wte, int d, float* out, int ldo) {
    V acc[R][NV];
    GPT2GEN_UNROLL
    for (int r = 0; r < R; ++r) {
      GPT2GEN_UNROLL
      for (int v = 0; v < NV; ++v) acc[r][v] = F32::zero();
    }
    int c = 0;
    for (; c + W <= d; c += W) {
      V xv[R];
      GPT2GEN_UNROLL
      for (int r = 0; r < R; ++r) xv[r] = F32::load(x + size_t(r) * d + c);
      GPT2GEN_UNROLL
      for (int v = 0; v < NV; ++v) {
        const V wv = F32::load(wte + size_t(v) * d + c);
        GPT2GEN_UNROLL
        for (int r = 0; r < R; ++r) acc[r][v] = F32::fma(xv[r], wv, acc[r][v]);
      }
    }
    if (c < d) {
      const Mask m = F32::mask(d - c);
      V xv[R];
      GPT2GEN_UNROLL
      for (int r = 0; r < R; ++r) xv[r] = F32::load(x + size_t(r) * d + c, m);
      GPT2GEN_UNROLL
      for (int v = 0; v < NV; ++v) {
        const V wv = F32::load(wte + size_t(v) * d + c, m);
        GPT2GEN_UNROLL
        for (int r = 0; r < R; ++r) acc[r][v] = F32::fma(xv[r], wv, acc[r][v]);
      }
    }
    GPT2GEN_UNROLL
    for (int r = 0; r < R; ++r) {
      GPT2GEN_UNROLL
      for (int v = 0; v < NV; ++v) out[size_t(r) * ldo + v] = F32::sum(acc[r][v]);
    }
  }

  // The vocabulary rows [v0, v1) for every row of x.
  template <int R, int NV>
  static void vocabulary_rows(const float* x, int n, const float* wte, int d, int n_vocab,
                              float* out, int v0, int v1) {
    // Passes over as many wte rows as fit in L2 read them from memory once; inside a pass, each
    // tile of x rows (L1) visits every group of NV vocabulary rows.
    const int row_bytes = d * int(sizeof(float));
    const int pass_rows = std::max(NV, (256 * 1024 / (row_bytes + 1)) / NV * NV);
    for (int p0 = v0; p0 < v1; p0 += pass_rows) {
      const int p1 = std::min(v1, p0 + pass_rows);
      for (int r = 0; r < n; r += R) {
        const int tile_rows = std::min(R, n - r);
        const float* xr = x + size_t(r) * d;
        float* o = out + size_t(r) * n_vocab;
        int v = p0;
        for (; v + NV <= p1; v += NV) {
          if (tile_rows == R)
            tile<R, NV>(xr, wte + size_t(v) * d, d, o + v, n_vocab);
          else
            for (int rr = 0; rr < tile_rows; ++rr)
              tile<1, NV>(xr + size_t(rr) * d, wte + size_t(v) * d, d, o + size_t(rr) * n_vocab + v,
                          n_vocab);
        }
        for (; v < p1; ++v)
          for (int rr = 0; rr < tile_rows; ++rr)
            tile<1, 1>(xr + size_t(rr) * d, wte + size_t(v) * d, d, o + size_t(rr) * n_vocab + v,
                       n_vocab);
      }
    }
  }

  static void unembed(const float* x, int n, const float* wte, int n_vocab, int d, float* out) {
#pragma omp parallel num_threads(num_threads()) if (n_vocab >= 64)
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
      const int v0 = int(int64_t(n_vocab) * t / nt), v1 = int(int64_t(n_vocab) * (t + 1) / nt);
      if (n == 1)
        vocabulary_rows<1, kDecodeVocab>(x, n, wte, d, n_vocab, out, v0, v1);
      else
        vocabulary_rows<kRows, kVocab>(x, n, wte, d, n_vocab, out, v0, v1);
    }
  }
};

}  // namespace

template <typename T>
void unembed(const T* x, int n, const T* wte, Packed wte_packed, int n_vocab, int d, T* out) {
  if (wte_packed.format != WeightFormat::native)
    return linear<T>(x, n, {nullptr, nullptr, d, n_vocab, wte_packed}, out);
  if constexpr (simd::kHasVec<T>)
    VectorUnembed<simd::Vec<T>>::unembed(x, n, wte, n_vocab, d, out);
  else
    portable::unembed(x, n, wte, n_vocab, d, out);
}

template void unembed<float>(const float*, int, const float*, Packed, int, int, float*);
template void unembed<double>(const double*, int, const double*, Packed, int, int, double*);

}  // namespace GPT2GEN_ISA_NS
}  // namespace gpt2gen
