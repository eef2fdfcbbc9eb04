// y = x·w + b for the quantized formats (int8, int4, int6; model.hpp's layout), with integer dot
// products: each block of kQuantBlock activations is written exactly enough as a fixed-point
// integer X = x·2^e (|X| < 2^kBits, about 22 bits: the block's largest value keeps float32's
// precision to a few units in the last place, smaller ones the same absolute precision), split
// into three signed digits of kPlaneBits bits (byte planes); the sum of q·digit over a block is
// then exact in 32-bit integers whatever the order, on every instruction set's dot_bytes (VNNI's
// vpdpbusd on AVX-512).
//
// Order of every output element (one instruction set; the same for every row count, tiling and
// thread count, as the block sums are exact):
//   acc = 0; per block in order:
//     D_p = Σ_k q[k, j]·digit_p[k] for the planes p = high, mid, low (exact integers);
//     f = fma(float(D_high), 2^(2·kPlaneBits), float(D_mid·2^kPlaneBits + D_low));
//     acc = fma(scale[block, j]·2^-e, f, acc);
//   out = acc + b[j].
// Weights are stored as q + kOffset (unsigned bytes, as dot_bytes wants them): the kernels sum
// (q + kOffset)·digit and start each plane's sum from −kOffset·Σ digit instead of zero.
//
// Machines without vectors (the generic build) run portable::quantized_linear: float products
// of the dequantized values, like the reference.
#include "linear_quantized.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "openmp.hpp"
#include "portable.hpp"
#include "simd.hpp"

namespace gpt2gen {
namespace GPT2GEN_ISA_NS {

namespace {

constexpr int kPlanes = 3;

template <typename F32>  // simd::Vec<float>
struct VectorQuantizedLinear {
  using V = typename F32::V;
  using I = typename F32::I;
  using Mask = typename F32::Mask;
  static constexpr int W = F32::W;
  static constexpr int kBase = 1 << F32::kPlaneBits;
  // The balanced digits of |X| < 2^kBits stay in [−kBase/2, kBase/2): the top one is at most
  // 2^(kBits − 2·kPlaneBits) + 1.
  static constexpr int kBits = 3 * F32::kPlaneBits - 2;
  // Blocks whose largest |x| is below 2^kTiny count as zero (their 2^e would overflow float32);
  // such activations change no sum by more than ~1e-30 of a weight.
  static constexpr int kTiny = -100;
  static constexpr int kMantissaBits = 23;
  static constexpr int32_t kInfBits = 0x7f800000;

  // 2^e for e in float32's normal range (|e| ≤ kBits − kTiny here).
  static float power_of_two(int e) {
    const int32_t bits = (e + 127) << kMantissaBits;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }

  // x[n, d_in] as digits, per row: digits [kPlanes][blocks·kQuantBlock] (high plane first),
  // the value of one unit of X per block (2^-e; 0 for a zero block, NaN if the block holds inf
  // or NaN, which then reaches every output of the row), and Σ digits per block and plane.
  struct Activations {
    int n = 0, blocks = 0;
    int8_t* digits = nullptr;
    float* unit = nullptr;
    int32_t* digit_sums = nullptr;

    int8_t* plane(int r, int p) const {
      return digits + (size_t(r) * kPlanes + p) * blocks * kQuantBlock;
    }
  };

  static Activations quantize(const float* x, int n, int d_in) {
    thread_local std::vector<int8_t> digits;
    thread_local std::vector<float> units;
    thread_local std::vector<int32_t> sums;
    Activations a;
    a.n = n;
    a.blocks = (d_in + kQuantBlock - 1) / kQuantBlock;
    const size_t row_digits = size_t(kPlanes) * a.blocks * kQuantBlock;
    if (digits.size() < n * row_digits) digits.resize(n * row_digits);
    if (units.size() < size_t(n) * a.blocks) units.resize(size_t(n) * a.blocks);
    if (sums.size() < size_t(n) * a.blocks * kPlanes) sums.resize(size_t(n) * a.blocks * kPlanes);
    a.digits = digits.data();
    a.unit = units.data();
    a.digit_sums = sums.data();
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n >= 16)
    for (int r = 0; r < n; ++r)
      for (int b = 0; b < a.blocks; ++b) quantize_block(x + size_t(r) * d_in, d_in, r, b, a);
    return a;
  }

  static void quantize_block(const float* row, int d_in, int r, int b, Activations& a) {
    constexpr int kVecs = kQuantBlock / W;
    const int k0 = b * kQuantBlock;
    V v[kVecs];
    GPT2GEN_UNROLL
    for (int i = 0; i < kVecs; ++i) {
      const int k = k0 + i * W;
      v[i] =
          k + W <= d_in ? F32::load(row + k) : F32::load(row + k, F32::mask(std::max(0, d_in - k)));
    }
    // The largest |x| by its bits (one integer maximum that also tells inf or NaN), its frexp
    // exponent and the powers of two below from bits too: libm's frexp and ldexp and a second
    // reduction per block took ~3/4 of this function's time (5.7 → 1.7 µs a decode linear).
    I largest = F32::abs_bits(v[0]);
    for (int i = 1; i < kVecs; ++i) largest = F32::imax(largest, F32::abs_bits(v[i]));
    const int32_t m_bits = F32::imax_all(largest);
    float& unit = a.unit[size_t(r) * a.blocks + b];
    int32_t* sums = a.digit_sums + (size_t(r) * a.blocks + b) * kPlanes;
    int8_t* out[kPlanes];
    for (int p = 0; p < kPlanes; ++p) out[p] = a.plane(r, p) + k0;
    const bool finite = m_bits < kInfBits;
    const int exponent = (m_bits >> kMantissaBits) - 126;  // m = f·2^exponent, f in [0.5, 1)
    if (!finite || exponent < kTiny) {  // zero and subnormal m included (exponent ≤ −126)
      unit = finite ? 0.0f : NAN;
      for (int p = 0; p < kPlanes; ++p) {
        std::memset(out[p], 0, kQuantBlock);
        sums[p] = 0;
      }
      return;
    }
    const int e = kBits - exponent;  // m·2^e in [2^(kBits − 1), 2^kBits)
    unit = power_of_two(-e);
    const V scale = F32::set1(power_of_two(e));
    const I low_mask = F32::iset1(kBase - 1), half = F32::iset1(kBase / 2);
    I digit_sum[kPlanes];
    for (int p = 0; p < kPlanes; ++p) digit_sum[p] = F32::izero();
    GPT2GEN_UNROLL
    for (int i = 0; i < kVecs; ++i) {
      I rest = F32::to_int(F32::mul(v[i], scale));  // exact scaling, then round to nearest even
      for (int p = kPlanes - 1; p > 0; --p) {       // balanced digits, lowest first
        const I digit = F32::isub(F32::iand(F32::iadd(rest, half), low_mask), half);
        F32::store_bytes(out[p] + i * W, digit);
        digit_sum[p] = F32::iadd(digit_sum[p], digit);
        rest = F32::template isra<F32::kPlaneBits>(F32::isub(rest, digit));
      }
      F32::store_bytes(out[0] + i * W, rest);
      digit_sum[0] = F32::iadd(digit_sum[0], rest);
    }
    for (int p = 0; p < kPlanes; ++p) sums[p] = F32::isum(digit_sum[p]);
  }

  // Tiles: n = 1, a whole panel (kDecodeVecs column vectors); n > 1, kTileRows rows × kTileVecs
  // vectors. A tile's integer sums stay in registers: kSumRegisters of them per sweep over the
  // weights (tile).
  static constexpr int kDecodeVecs = kPanelColumns / W;
  static constexpr int kSumRegisters = W == 16 ? 24 : 12;
  static constexpr int kTileRows = 2;
  static constexpr int kTileVecs = W == 16 ? 4 : 1;
  static constexpr int kPassBlocks = 8;  // blocks of w per pass (see linear)
  // Each load of weights asks for the bytes this far ahead in the stream into L2: with three
  // digit planes' arithmetic per byte the hardware prefetchers alone fall behind (2-thread
  // decode, alternating in one process: int8 124 → 145 tok/s, int4 155 → 182–192; flat from 4
  // to 16 KB).
  static constexpr int kPrefetchBytes = 4096;

  // Column vector v's four bytes per column of group g, and its scales of block b.
  template <typename Format>
  static const uint8_t* weights(const QuantizedMatrix<Format>& m, int v, int g) {
    return m.group_bytes(g * Format::kGroup, v * W);
  }
  template <typename Format>
  static V scales(const QuantizedMatrix<Format>& m, int v, int b) {
    return F32::load_half(static_cast<const uint16_t*>(m.scales) + m.scale_index(b, v * W));
  }

  // A column vector's group of weights (its first word at `group`) as kGroup / 4 vectors of
  // four-value quads, q + kOffset as unsigned bytes; each word's bytes kPrefetchBytes ahead are
  // asked for.
  template <typename Format>
  static void unpack(const uint8_t* group, I* wq) {
    I word[Format::kWords];
    GPT2GEN_UNROLL
    for (int w = 0; w < Format::kWords; ++w) {
      F32::prefetch_far(group + w * kWordStride + kPrefetchBytes);
      word[w] = F32::iload(group + w * kWordStride);
    }
    if constexpr (Format::kFormat == WeightFormat::int8) {
      wq[0] = word[0];
    } else {
      GPT2GEN_UNROLL
      for (int w = 0; w < Format::kGroup / 8; ++w) {
        wq[2 * w] = F32::low_nibbles(word[w]);
        wq[2 * w + 1] = F32::high_nibbles(word[w]);
      }
    }
    if constexpr (Format::kFormat == WeightFormat::int6) {
      // Quad i's top two bits are bits 2i, 2i + 1 of word 2's bytes: moved to bits 4-5. The
      // 32-bit shifts carry bits across bytes only into the bits the mask clears.
      const I top = word[2], bits_4_5 = F32::iset1(0x30303030);
      wq[0] = F32::ior(wq[0], F32::iand(F32::template ishl<4>(top), bits_4_5));
      wq[1] = F32::ior(wq[1], F32::iand(F32::template ishl<2>(top), bits_4_5));
      wq[2] = F32::ior(wq[2], F32::iand(top, bits_4_5));
      wq[3] = F32::ior(wq[3], F32::iand(F32::template isra<2>(top), bits_4_5));
    }
  }

  // out[r0 + r, (v + p)·W + lane] for R rows and P column vectors, blocks [b0, b1): each block's
  // integer sums in registers, the running sums in out (the first block starts them); the last
  // column vector holds `last` columns of out. bias (may be null) is added after the last block.
  // The planes' sums come from one sweep over the block's weights when they all fit in
  // kSumRegisters, else from a sweep per plane (AVX2's whole-panel decode tile; the block's
  // weights are then in L1). Not inlined: in its caller's loops GCC keeps fewer of the sums in
  // registers (int4 decode ~15% slower, measured with the weights in L2).
  template <typename Format, int R, int P>
  [[gnu::noinline]] static void tile(const Activations& a, int r0, const QuantizedMatrix<Format>& m,
                                     int v, int b0, int b1, const float* bias, float* out, int ldo,
                                     int last) {
    constexpr int kQuads = Format::kGroup / 4;  // four-value quads per group
    constexpr int kGroupsPerBlock = kQuantBlock / Format::kGroup;
    constexpr int kSweepPlanes = kPlanes * R * P <= kSumRegisters ? kPlanes : 1;
    const Mask tail = F32::mask(last);
    for (int b = b0; b < b1; ++b) {
      I acc[kPlanes][R][P];
      GPT2GEN_UNROLL
      for (int pl0 = 0; pl0 < kPlanes; pl0 += kSweepPlanes) {
        GPT2GEN_UNROLL
        for (int pl = pl0; pl < pl0 + kSweepPlanes; ++pl) {
          GPT2GEN_UNROLL
          for (int r = 0; r < R; ++r) {
            const I start = F32::iset1(
                -Format::kOffset * a.digit_sums[(size_t(r0 + r) * a.blocks + b) * kPlanes + pl]);
            GPT2GEN_UNROLL
            for (int p = 0; p < P; ++p) acc[pl][r][p] = start;
          }
        }
        GPT2GEN_UNROLL
        for (int gi = 0; gi < kGroupsPerBlock; ++gi) {
          const int g = b * kGroupsPerBlock + gi;
          I xq[kQuads][kSweepPlanes][R];  // four digits of each quad, broadcast
          GPT2GEN_UNROLL
          for (int qd = 0; qd < kQuads; ++qd) {
            GPT2GEN_UNROLL
            for (int i = 0; i < kSweepPlanes; ++i) {
              GPT2GEN_UNROLL
              for (int r = 0; r < R; ++r) {
                int32_t four;
                std::memcpy(&four, a.plane(r0 + r, pl0 + i) + g * Format::kGroup + qd * 4, 4);
                xq[qd][i][r] = F32::iset1(four);
              }
            }
          }
          GPT2GEN_UNROLL
          for (int p = 0; p < P; ++p) {
            I wq[kQuads];
            unpack<Format>(weights(m, v + p, g), wq);
            GPT2GEN_UNROLL
            for (int qd = 0; qd < kQuads; ++qd) {
              GPT2GEN_UNROLL
              for (int i = 0; i < kSweepPlanes; ++i) {
                GPT2GEN_UNROLL
                for (int r = 0; r < R; ++r)
                  acc[pl0 + i][r][p] = F32::dot_bytes(acc[pl0 + i][r][p], wq[qd], xq[qd][i][r]);
              }
            }
          }
        }
      }
      const V high = F32::set1(float(1 << (2 * F32::kPlaneBits)));
      const bool add_bias = bias && b == m.blocks - 1;
      GPT2GEN_UNROLL
      for (int p = 0; p < P; ++p) {
        const V sc = scales(m, v + p, b);
        const bool is_tail = p == P - 1 && last < W;
        GPT2GEN_UNROLL
        for (int r = 0; r < R; ++r) {
          const I low = F32::iadd(F32::template ishl<F32::kPlaneBits>(acc[1][r][p]), acc[2][r][p]);
          const V f = F32::fma(F32::to_float(acc[0][r][p]), high, F32::to_float(low));
          const V unit_scale = F32::mul(sc, F32::set1(a.unit[size_t(r0 + r) * a.blocks + b]));
          float* o = out + size_t(r) * ldo + p * W;
          V sum = b == 0 ? F32::zero() : is_tail ? F32::load(o, tail) : F32::load(o);
          sum = F32::fma(unit_scale, f, sum);
          if (add_bias)
            sum = F32::add(sum, is_tail ? F32::load(bias + p * W, tail) : F32::load(bias + p * W));
          if (is_tail)
            F32::store(o, sum, tail);
          else
            F32::store(o, sum);
        }
      }
    }
  }

  template <typename Format>
  static void linear(const float* x, int n, const LinearWeights<float>& lin, float* out) {
    const QuantizedMatrix<Format> m(lin.packed, lin.d_in, lin.d_out);
    const Activations a = quantize(x, n, lin.d_in);
    const int nvec = (lin.d_out + W - 1) / W;
    const int tail = lin.d_out - (nvec - 1) * W;
    auto last_of = [&](int v, int vecs) { return v + vecs == nvec ? tail : W; };
    // Threads take whole panels (contiguous memory). Decode's tile is the whole panel: one
    // sequential stream. Prefill's narrower tiles cover the panel in passes of kPassBlocks
    // blocks, a window at a time (the tiles one after another over the whole panel would make
    // strided streams: 2× slower, measured), each window reused from cache by every tile of rows.
    const int panels = (nvec + kDecodeVecs - 1) / kDecodeVecs;
    const int tile_vecs = n == 1 ? kDecodeVecs : kTileVecs;
    const int pass_blocks = n == 1 ? m.blocks : kPassBlocks;
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (panels > 1)
    for (int pi = 0; pi < panels; ++pi) {
      const int v_end = std::min(nvec, (pi + 1) * kDecodeVecs);
      for (int b0 = 0; b0 < m.blocks; b0 += pass_blocks) {
        const int b1 = std::min(m.blocks, b0 + pass_blocks);
        for (int v = pi * kDecodeVecs; v < v_end; v += tile_vecs) {
          const int vecs = std::min(tile_vecs, v_end - v), last = last_of(v, vecs);
          for (int r = 0; r < n; r += kTileRows) {
            float* rows = out + size_t(r) * lin.d_out;
            if (n - r >= kTileRows)
              panel_columns<Format, kTileRows>(vecs, a, r, m, v, b0, b1, lin.b, rows, lin.d_out,
                                               last);
            else
              panel_columns<Format, 1>(vecs, a, r, m, v, b0, b1, lin.b, rows, lin.d_out, last);
          }
        }
      }
    }
  }

  // tile<R, P> with P = vecs (1 ≤ vecs ≤ the widest tile) chosen at run time; out and bias
  // point at the rows' and the bias's column 0.
  template <typename Format, int R>
  static void panel_columns(int vecs, const Activations& a, int r0,
                            const QuantizedMatrix<Format>& m, int v, int b0, int b1,
                            const float* bias, float* out, int ldo, int last) {
    dispatch_vecs<(R == 1 ? kDecodeVecs : kTileVecs)>(vecs, [&](auto vecs_c) {
      tile<Format, R, decltype(vecs_c)::value>(a, r0, m, v, b0, b1, bias ? bias + v * W : nullptr,
                                               out + size_t(v) * W, ldo, last);
    });
  }

  template <int kMax, typename Run, int P = 1>
  static void dispatch_vecs(int vecs, Run&& run) {
    if constexpr (P <= kMax) {
      if (vecs == P) return run(std::integral_constant<int, P>());
      dispatch_vecs<kMax, Run, P + 1>(vecs, std::forward<Run>(run));
    }
  }
};

// T is float: a template parameter, so that an instruction set without Vec<float> never names it.
template <typename Format, typename T>
void vector_or_portable(const T* x, int n, const LinearWeights<T>& lin, T* out) {
  if constexpr (simd::kHasVec<T>)
    VectorQuantizedLinear<simd::Vec<T>>::template linear<Format>(x, n, lin, out);
  else
    portable::quantized_linear<Format>(x, n, lin, out);
}

}  // namespace

template <typename Format>
void quantized_linear(const float* x, int n, const LinearWeights<float>& lin, float* out) {
  vector_or_portable<Format>(x, n, lin, out);
}

template void quantized_linear<Int8Format>(const float*, int, const LinearWeights<float>&, float*);
template void quantized_linear<Int4Format>(const float*, int, const LinearWeights<float>&, float*);
template void quantized_linear<Int6Format>(const float*, int, const LinearWeights<float>&, float*);

}  // namespace GPT2GEN_ISA_NS
}  // namespace gpt2gen
