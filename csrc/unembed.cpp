// The logits: x against every row of the tied embedding wte, in any weight format (float32 with
// vectors where the instruction set has them, simd.hpp; otherwise the portable loops).
//
// Vector order of every logit (one instruction set; the same for every row count, tiling and
// thread count), with vector lanes over d:
//   unscaled formats: acc = 0; acc = fma(x[r, c·W:], wte[v, c·W:], acc) over the vector chunks c
//                     of d in order (the last one masked); logit = F32::sum(acc).
//   scaled formats:   per block of kBlock columns in order: s = 0; s = fma over the block's
//                     chunks in order; acc = fma(scale[v, block], s, acc); logit = F32::sum(acc).
#include <algorithm>

#include "kernels.hpp"
#include "openmp.hpp"
#include "portable.hpp"
#include "simd.hpp"
#include "weight_format.hpp"

namespace gpt2gen {
namespace GPT2GEN_ISA_NS {

namespace {

template <typename F32>  // simd::Vec<float>
struct VectorUnembed {
  using V = typename F32::V;
  using Mask = typename F32::Mask;
  static constexpr int W = F32::W;

  // Tile sizes: n = 1: kDecodeVocab vocabulary rows at a time; n > 1: kRows rows of x × kVocab
  // vocabulary rows (a scaled format also keeps x's whole block in registers).
  template <typename Format, bool kScaled = (Format::kBlock > 0)>
  struct Tiles {
    static constexpr int kDecodeVocab = 8;
    static constexpr int kRows = W == 16 ? 4 : 3;
    static constexpr int kVocab = W == 16 ? 6 : 4;
  };
  template <typename Format>
  struct Tiles<Format, true> {
    static constexpr int kDecodeVocab = W == 16 ? 8 : 4;
    static constexpr int kRows = W == 16 ? 3 : 2;
    static constexpr int kVocab = W == 16 ? 6 : 2;
  };

  // out[r, v] for R rows of x against NV consecutive rows of wte (unscaled format).
  template <int R, int NV, typename E>
  static void tile(const float* x, const E* wte, int d, float* out, int ldo) {
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
        const V wv = F32::widen(wte + size_t(v) * d + c);
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
        const V wv = F32::widen(wte + size_t(v) * d + c, d - c);
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

  // The same for a scaled format: scales [rows of wte, d / kBlock] from the tile's first row.
  template <int R, int NV, int kBlock, typename E>
  static void scaled_tile(const float* x, const E* wte, const float* scales, int d, float* out,
                          int ldo) {
    static_assert(kBlock % W == 0, "a scale block must hold whole vectors");
    constexpr int kChunks = kBlock / W;
    const int nb = (d + kBlock - 1) / kBlock;
    V acc[R][NV];
    GPT2GEN_UNROLL
    for (int r = 0; r < R; ++r) {
      GPT2GEN_UNROLL
      for (int v = 0; v < NV; ++v) acc[r][v] = F32::zero();
    }
    for (int b = 0; b < nb; ++b) {
      const int c0 = b * kBlock, ce = std::min(d, c0 + kBlock);
      if (ce - c0 == kBlock) {
        // Whole block: x's chunks once, then per vocabulary row its block sum (s lives briefly).
        V xv[R][kChunks];
        GPT2GEN_UNROLL
        for (int r = 0; r < R; ++r) {
          GPT2GEN_UNROLL
          for (int i = 0; i < kChunks; ++i) xv[r][i] = F32::load(x + size_t(r) * d + c0 + i * W);
        }
        GPT2GEN_UNROLL
        for (int v = 0; v < NV; ++v) {
          V wv[kChunks];
          GPT2GEN_UNROLL
          for (int i = 0; i < kChunks; ++i) wv[i] = F32::widen(wte + size_t(v) * d + c0 + i * W);
          const V scv = F32::set1(scales[size_t(v) * nb + b]);
          GPT2GEN_UNROLL
          for (int r = 0; r < R; ++r) {
            V sum = F32::zero();
            GPT2GEN_UNROLL
            for (int i = 0; i < kChunks; ++i) sum = F32::fma(xv[r][i], wv[i], sum);
            acc[r][v] = F32::fma(scv, sum, acc[r][v]);
          }
        }
        continue;
      }
      // Partial block (d not a multiple of kBlock): the same sums, chunk by chunk, the last one
      // masked.
      GPT2GEN_UNROLL
      for (int v = 0; v < NV; ++v) {
        const V scv = F32::set1(scales[size_t(v) * nb + b]);
        GPT2GEN_UNROLL
        for (int r = 0; r < R; ++r) {
          V sum = F32::zero();
          for (int c = c0; c < ce; c += W) {
            const int len = std::min(W, ce - c);
            sum = F32::fma(F32::load(x + size_t(r) * d + c, F32::mask(len)),
                           F32::widen(wte + size_t(v) * d + c, len), sum);
          }
          acc[r][v] = F32::fma(scv, sum, acc[r][v]);
        }
      }
    }
    GPT2GEN_UNROLL
    for (int r = 0; r < R; ++r) {
      GPT2GEN_UNROLL
      for (int v = 0; v < NV; ++v) out[size_t(r) * ldo + v] = F32::sum(acc[r][v]);
    }
  }

  // R rows of x against the NV vocabulary rows from v.
  template <typename Format, int R, int NV>
  static void group(const float* x, const typename Format::Storage* wte, const float* scales, int d,
                    int v, float* out, int ldo) {
    const auto* w = wte + size_t(v) * d;
    if constexpr (Format::kBlock > 0) {
      const int n_scales = (d + Format::kBlock - 1) / Format::kBlock;  // per vocabulary row
      scaled_tile<R, NV, Format::kBlock>(x, w, scales + size_t(v) * n_scales, d, out, ldo);
    } else {
      tile<R, NV>(x, w, d, out, ldo);
    }
  }

  // The vocabulary rows [v0, v1) for every row of x.
  template <typename Format, int R, int NV>
  static void vocabulary_rows(const float* x, int n, const typename Format::Storage* wte,
                              const float* scales, int d, int n_vocab, float* out, int v0, int v1) {
    // Passes over as many wte rows as fit in L2 read them from memory once; inside a pass, each
    // tile of x rows (L1) visits every group of NV vocabulary rows.
    const int row_bytes = d * int(sizeof(typename Format::Storage));
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
            group<Format, R, NV>(xr, wte, scales, d, v, o + v, n_vocab);
          else
            for (int rr = 0; rr < tile_rows; ++rr)
              group<Format, 1, NV>(xr + size_t(rr) * d, wte, scales, d, v,
                                   o + size_t(rr) * n_vocab + v, n_vocab);
        }
        for (; v < p1; ++v)
          for (int rr = 0; rr < tile_rows; ++rr)
            group<Format, 1, 1>(xr + size_t(rr) * d, wte, scales, d, v,
                                o + size_t(rr) * n_vocab + v, n_vocab);
      }
    }
  }

  template <typename Format>
  static void unembed(Format, const float* x, int n, const float* wte, const Packed& wte_packed,
                      int n_vocab, int d, float* out) {
    const auto* values = stored_values<Format>(wte, wte_packed);
    using Tile = Tiles<Format>;
#pragma omp parallel num_threads(num_threads()) if (n_vocab >= 64)
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
      const int v0 = int(int64_t(n_vocab) * t / nt), v1 = int(int64_t(n_vocab) * (t + 1) / nt);
      if (n == 1)
        vocabulary_rows<Format, 1, Tile::kDecodeVocab>(x, n, values, wte_packed.scales, d, n_vocab,
                                                       out, v0, v1);
      else
        vocabulary_rows<Format, Tile::kRows, Tile::kVocab>(x, n, values, wte_packed.scales, d,
                                                           n_vocab, out, v0, v1);
    }
  }
};

}  // namespace

template <typename T>
void unembed(const T* x, int n, const T* wte, Packed wte_packed, int n_vocab, int d, T* out) {
  with_weight_format<T>(wte_packed.format, [&](auto format) {
    if constexpr (simd::kHasVec<T>)
      VectorUnembed<simd::Vec<T>>::unembed(format, x, n, wte, wte_packed, n_vocab, d, out);
    else
      portable::unembed(format, x, n, wte, wte_packed, n_vocab, d, out);
  });
}

template void unembed<float>(const float*, int, const float*, Packed, int, int, float*);
template void unembed<double>(const double*, int, const double*, Packed, int, int, double*);

}  // namespace GPT2GEN_ISA_NS
}  // namespace gpt2gen
