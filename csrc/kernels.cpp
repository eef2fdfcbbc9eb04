// Kernels: the math of GPT-2, one function each (declared and documented in kernels.hpp).
//
// Reproducibility rule: parallel work is split over output elements (columns, vocabulary rows,
// heads, positions) or over fixed segments of a reduction whose partial sums are added in one
// order (never at thread-dependent boundaries), and every output element is accumulated in one
// fixed order whatever the tiling. So the results do not depend on the thread count, and a row
// computed alone (decode) is bit-identical to the same row computed in a batch (prefill).
#include "kernels.hpp"

#include <omp.h>

#include "simd.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

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

// Calls run(std::integral_constant<int, P>(), v) over the column vectors [v0, v1): panels of
// kWidest vectors, then one each of 16, 8, 4, 2, 1 for the rest, so that every panel width is a
// compile-time constant (its accumulators stay in registers).
template <int kWidest, typename Run>
inline void for_each_panel(int v0, int v1, Run&& run) {
  int v = v0;
  for (; v1 - v >= kWidest; v += kWidest) run(std::integral_constant<int, kWidest>(), v);
  if constexpr (kWidest > 16)
    if (v1 - v >= 16) { run(std::integral_constant<int, 16>(), v); v += 16; }
  if (v1 - v >= 8) { run(std::integral_constant<int, 8>(), v); v += 8; }
  if (v1 - v >= 4) { run(std::integral_constant<int, 4>(), v); v += 4; }
  if (v1 - v >= 2) { run(std::integral_constant<int, 2>(), v); v += 2; }
  if (v1 - v >= 1) run(std::integral_constant<int, 1>(), v);
}

#if GPT2GEN_SIMD_F32
// --- linear for weights of any format (float32, bf16, int8) with explicit SIMD (AVX-512 or AVX2)
// The weights are converted to float32 in registers as they stream in: bf16 is a 16-bit shift of
// the zero-extended bits, int8 a sign extension and a conversion. Activations and every
// accumulation stay float32 (no vdpbf16ps / VNNI: they would round the activations).
//
// Canonical order of every output element (one ISA; the same for every row count, tiling and
// thread count):
//   float, bf16:  the rows of w in segments of kSegmentRows; for each segment s:
//                   p_s = 0; p_s = fma(x[k], w[k, j], p_s) for k in the segment in order;
//                 out = ((p_0 + p_1) + …) + b[j].
//   int8:         acc = 0; for each block of 32 rows of w in order:
//                   s = 0; s = fma(x[k], q[k, j], s) for k in the block in order;
//                   acc = fma(scale[block, j], s, acc);
//                 out = acc + b[j].
// The segments let threads split a decode step over contiguous rows of w (each thread streams one
// contiguous stretch of memory: a float32 decode step took 22% less time than with column bands)
// without making the sum depend on the thread count.
namespace simd_linear {

constexpr int kSegmentRows = 128;

// Register tiles: the loops over rows and vectors must unroll fully so arrays stay in registers.
#define GPT2GEN_UNROLL _Pragma("GCC unroll 32")

using simd::F32;
using V = F32::V;
using Mask = F32::Mask;
constexpr int W = F32::W;

// W weights starting at p, as float32; the partial form reads only the first n (< W) and zeroes
// the other lanes (never reading past them: the matrix may end there).
inline V load_w(const float* p) { return F32::load(p); }
inline V load_w(const uint16_t* p) {
#if defined(__AVX512F__)
  return _mm512_castsi512_ps(_mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
#else
  return _mm256_castsi256_ps(_mm256_slli_epi32(
      _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
#endif
}
inline V load_w(const int8_t* p) {
#if defined(__AVX512F__)
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#else
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#endif
}
template <typename E>
inline V load_w(const E* p, int n) {
  if (n >= W) return load_w(p);
  if constexpr (std::is_same_v<E, float>) {
    return F32::load(p, F32::mask(n));
  } else {
#if defined(__AVX512F__)
    const __mmask16 m = __mmask16((1u << n) - 1);
    if constexpr (std::is_same_v<E, uint16_t>)
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
    else
      return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p)));
#else
    alignas(32) E buf[W] = {};
    std::memcpy(buf, p, sizeof(E) * n);
    return load_w(buf);
#endif
  }
}

// Build-time knobs for A/B runs with benchmarks/ab_micro.py (defaults are the measured choice):
// GPT2GEN_DECODE_MODE 1 = row streaming (below), 0 = register panels of kDecodeVecs
// vectors with software prefetch kPrefetchRows ahead (linear_decode).
#ifndef GPT2GEN_DECODE_MODE
#define GPT2GEN_DECODE_MODE 1
#endif
#ifndef GPT2GEN_STREAM_ROWS
#define GPT2GEN_STREAM_ROWS 8
#endif
constexpr int kStreamRows = GPT2GEN_STREAM_ROWS;

// n ≤ kStreamMaxRows, row streaming: columns [v0, v1) of kStreamRows rows of w at a time (sequential
// streams for the prefetchers). Each vector of w is loaded (and converted) once and used for the R
// rows of x; the segment's partial sums live in `part` (L1/L2), each continued by kStreamRows FMAs
// in k order, starting from zero at the segment's first row (`first`).
constexpr int kStreamMaxRows = 8;
// Software prefetch of the next group of rows, for R > 1 only: at R = 1 the hardware prefetchers
// keep up with each thread's contiguous stream (float32 decode step 11% slower with the prefetch
// instructions, bf16 no different); with R FMAs per weight they fall behind (n = 8: 1.3× faster).
#ifndef GPT2GEN_STREAM_PF
#define GPT2GEN_STREAM_PF 1
#endif
constexpr int kStreamPrefetchGroups = GPT2GEN_STREAM_PF;  // groups of kStreamRows rows ahead (0: off)
template <int R>
constexpr bool kStreamPrefetch = kStreamPrefetchGroups > 0 && R > 1;

template <int R, typename Rows, typename E>
inline void linear_stream_rows(const float* __restrict x, int ldx, const E* __restrict w, int d_out,
                               float* __restrict part, int v0, int v1, int k0, Rows rows, int last,
                               bool first) {
  const size_t ld = d_out;
  w += size_t(k0) * ld;
  x += k0;
  auto step = [&](int v, auto masked_c) {
    constexpr bool kMasked = decltype(masked_c)::value;
    const Mask m = F32::mask(kMasked ? last : W);
    V wv[kStreamRows];
    if constexpr (kStreamPrefetch<R>) {
      if (v * W * sizeof(E) % 64 == 0) {  // once per cache line
        const E* ahead = w + size_t(kStreamPrefetchGroups) * kStreamRows * ld + v * W;
        GPT2GEN_UNROLL
        for (int i = 0; i < int(rows); ++i)
          _mm_prefetch(reinterpret_cast<const char*>(ahead + i * ld), _MM_HINT_T0);
      }
    }
    GPT2GEN_UNROLL
    for (int i = 0; i < int(rows); ++i)
      wv[i] = kMasked ? load_w(w + i * ld + v * W, last) : load_w(w + i * ld + v * W);
    GPT2GEN_UNROLL
    for (int r = 0; r < R; ++r) {
      float* o = part + size_t(r) * d_out + v * W;
      const float* xr = x + size_t(r) * ldx;
      V acc = first ? F32::zero() : kMasked ? F32::load(o, m) : F32::load(o);
      GPT2GEN_UNROLL
      for (int i = 0; i < int(rows); ++i) acc = F32::fma(F32::set1(xr[i]), wv[i], acc);
      if (kMasked)
        F32::store(o, acc, m);
      else
        F32::store(o, acc);
    }
  };
  const int vend = last < W ? v1 - 1 : v1;
  for (int v = v0; v < vend; ++v) step(v, std::false_type());
  if (last < W) step(v1 - 1, std::true_type());
}

// part[r, j] = Σ_{k in segment s} x[r, k]·w[k, j] for R rows and the column vectors [v0, v1) of
// w[d_in, d_out] (float or bf16).
template <int R, typename E>
inline void linear_stream_segment(const float* x, const E* w, int d_in, int d_out, int s, float* part,
                                  int v0, int v1) {
  if (v0 >= v1) return;
  const int nvec = (d_out + W - 1) / W;
  const int last = v1 == nvec ? d_out - (nvec - 1) * W : W;
  const int k0 = s * kSegmentRows, k1 = std::min(d_in, k0 + kSegmentRows);
  int k = k0;
  for (; k + kStreamRows <= k1; k += kStreamRows)
    linear_stream_rows<R>(x, d_in, w, d_out, part, v0, v1, k,
                          std::integral_constant<int, kStreamRows>(), last, k == k0);
  if (k < k1) linear_stream_rows<R>(x, d_in, w, d_out, part, v0, v1, k, k1 - k, last, k == k0);
}

// linear_stream_segment with the row count chosen at run time (1 ≤ n ≤ kStreamMaxRows).
template <typename E>
inline void linear_stream_segment(const float* x, int n, const E* w, int d_in, int d_out, int s,
                                  float* part, int v0, int v1) {
  auto run = [&](auto rows_c) {
    linear_stream_segment<decltype(rows_c)::value>(x, w, d_in, d_out, s, part, v0, v1);
  };
  switch (n) {
    case 1: run(std::integral_constant<int, 1>()); break;
    case 2: run(std::integral_constant<int, 2>()); break;
    case 3: run(std::integral_constant<int, 3>()); break;
    case 4: run(std::integral_constant<int, 4>()); break;
    case 5: run(std::integral_constant<int, 5>()); break;
    case 6: run(std::integral_constant<int, 6>()); break;
    case 7: run(std::integral_constant<int, 7>()); break;
    default: run(std::integral_constant<int, kStreamMaxRows>()); break;
  }
}

// out[r, j] = ((part_0 + part_1) + …) + b[j] over the segments' partial sums, column vectors [v0, v1).
inline void add_segments(const float* parts, int n_segments, int n, int d_out, const float* b,
                         float* out, int v0, int v1) {
  const int nvec = (d_out + W - 1) / W;
  const size_t stride = size_t(n) * d_out;
  for (int r = 0; r < n; ++r)
    for (int v = v0; v < v1; ++v) {
      const Mask m = F32::mask(v == nvec - 1 ? d_out - v * W : W);
      const float* p = parts + size_t(r) * d_out + v * W;
      V acc = F32::load(p, m);
      for (int s = 1; s < n_segments; ++s) acc = F32::add(acc, F32::load(p + s * stride, m));
      F32::store(out + size_t(r) * d_out + v * W, F32::add(acc, F32::load(b + v * W, m)), m);
    }
}

#ifndef GPT2GEN_PF_HINT  // -DGPT2GEN_PF_HINT=_MM_HINT_NTA to try non-temporal prefetch of weights
#define GPT2GEN_PF_HINT _MM_HINT_T0
#endif
constexpr int kLine = 64;
// Prefetch the panel row `rows` rows ahead: every cache line of P vectors of E.
template <typename E, int P>
inline void prefetch_row(const E* row) {
  for (int off = 0; off < int(P * W * sizeof(E)); off += kLine)
    _mm_prefetch(reinterpret_cast<const char*>(row) + off, GPT2GEN_PF_HINT);
}

constexpr int kDecodeVecs = W == 16 ? 24 : 12;  // n = 1: 1 row × 24 (12) vectors of columns
constexpr int kTileRows = W == 16 ? 6 : 4;      // n > 1: 6 (4) rows × 4 (3) vectors
constexpr int kTileVecs = W == 16 ? 4 : 3;
constexpr int kKBlock = 256;                    // rows of w per pass (a multiple of kQuantBlock)
static_assert(kKBlock % kQuantBlock == 0 && kKBlock % kSegmentRows == 0,
              "k-blocks must hold whole quantization blocks and segments");
template <typename E>  // decode: prefetch distance in rows of w (~8-12 KB ahead of a 24-vector panel)
constexpr int kPrefetchRows = sizeof(E) == 4 ? 8 : sizeof(E) == 2 ? 12 : 24;

// acc[r][p] = fma(x[r, k], w[k, p·W + lane], acc[r][p]) for one row k of w (wk), converting each
// weight vector once. One row of x (decode): convert and use each vector at once (P + 2
// registers); several: convert the P vectors first, then one broadcast of x per row.
template <int R, int P, typename E>
inline void row_step(const float* x, int ldx, int k, const E* wk, int last, V (&acc)[R][P]) {
  if constexpr (R == 1) {
    const V xv = F32::set1(x[k]);
    GPT2GEN_UNROLL
    for (int p = 0; p < P; ++p)
      acc[0][p] = F32::fma(xv, p == P - 1 ? load_w(wk + p * W, last) : load_w(wk + p * W), acc[0][p]);
  } else {
    V wv[P];
    GPT2GEN_UNROLL
    for (int p = 0; p < P; ++p) wv[p] = p == P - 1 ? load_w(wk + p * W, last) : load_w(wk + p * W);
    GPT2GEN_UNROLL
    for (int r = 0; r < R; ++r) {
      const V xv = F32::set1(x[size_t(r) * ldx + k]);
      GPT2GEN_UNROLL
      for (int p = 0; p < P; ++p) acc[r][p] = F32::fma(xv, wv[p], acc[r][p]);
    }
  }
}

// acc[r][p] = Σ_{k0 ≤ k < k1} x[r, k]·w[k, p·W + lane], from zero, k in order.
template <int R, int P, bool kPrefetch, typename E>
inline void sum_rows(const float* x, int ldx, const E* w, int ldw, int k0, int k1, int last,
                     V (&acc)[R][P]) {
  GPT2GEN_UNROLL
  for (int r = 0; r < R; ++r) {
    GPT2GEN_UNROLL
    for (int p = 0; p < P; ++p) acc[r][p] = F32::zero();
  }
  for (int k = k0; k < k1; ++k) {
    const E* wk = w + size_t(k) * ldw;
    if constexpr (kPrefetch) prefetch_row<E, P>(wk + size_t(kPrefetchRows<E>) * ldw);
    row_step<R, P>(x, ldx, k, wk, last, acc);
  }
}

// float or bf16: out[r, p·W + lane] for R rows and P column vectors (the last holding `last`
// columns) over the rows [k0, k1) of w, k0 a segment boundary: each segment's sum starts at zero in
// registers and is added to out (or is out, for the first segment); bias, if given, is added at the end.
template <int R, int P, bool kPrefetch, typename E>
inline void dense_tile(const float* x, int ldx, const E* w, int ldw, int k0, int k1,
                       const float* bias, float* out, int ldo, int last) {
  const Mask m = F32::mask(last);
  auto load = [&](const float* p, int p_index) { return p_index == P - 1 ? F32::load(p, m) : F32::load(p); };
  for (int s0 = k0; s0 < k1; s0 += kSegmentRows) {
    const int s1 = std::min(k1, s0 + kSegmentRows);
    V acc[R][P];
    sum_rows<R, P, kPrefetch>(x, ldx, w, ldw, s0, s1, last, acc);
    const bool add_bias = bias && s1 == k1;
    GPT2GEN_UNROLL
    for (int r = 0; r < R; ++r) {
      GPT2GEN_UNROLL
      for (int p = 0; p < P; ++p) {
        float* o = out + size_t(r) * ldo + p * W;
        V v = s0 == 0 ? acc[r][p] : F32::add(load(o, p), acc[r][p]);
        if (add_bias) v = F32::add(v, load(bias + p * W, p));
        if (p == P - 1)
          F32::store(o, v, m);
        else
          F32::store(o, v);
      }
    }
  }
}

// int8: the same for q with scales [blocks, ldw] (pointing at the tile's first column); k0 is a
// multiple of kQuantBlock. The block sums live in registers, the running sums in out (exactly).
template <int R, int P, bool kPrefetch>
inline void int8_tile(const float* x, int ldx, const int8_t* q, const float* scales, int ldw,
                      int k0, int k1, const float* bias, float* out, int ldo, int last) {
  const Mask m = F32::mask(last);
  for (int kb = k0; kb < k1; kb += kQuantBlock) {
    const int ke = std::min(k1, kb + kQuantBlock);
    V s[R][P];
    sum_rows<R, P, kPrefetch>(x, ldx, q, ldw, kb, ke, last, s);
    const float* sc = scales + size_t(kb / kQuantBlock) * ldw;
    GPT2GEN_UNROLL
    for (int p = 0; p < P; ++p) {
      const bool tail = p == P - 1;
      const V scv = tail ? F32::load(sc + p * W, m) : F32::load(sc + p * W);
      GPT2GEN_UNROLL
      for (int r = 0; r < R; ++r) {
        float* o = out + size_t(r) * ldo + p * W;
        V acc = kb == 0 ? F32::zero() : (tail ? F32::load(o, m) : F32::load(o));
        acc = F32::fma(scv, s[r][p], acc);
        if (kb + kQuantBlock >= k1 && bias)
          acc = F32::add(acc, tail ? F32::load(bias + p * W, m) : F32::load(bias + p * W));
        if (tail)
          F32::store(o, acc, m);
        else
          F32::store(o, acc);
      }
    }
  }
}

// One tile of any format: rows × vecs column vectors starting at column vector v.
template <int R, int P, bool kPrefetch>
inline void tile(const float* x, int ldx, const LinearWeights<float>& lin, int v, int k0, int k1,
                 bool with_bias, float* out, int ldo, int last) {
  const int j0 = v * W;
  const float* bias = with_bias ? lin.b + j0 : nullptr;
  if (lin.packed.format == WeightFormat::native)
    dense_tile<R, P, kPrefetch>(x, ldx, lin.w + j0, lin.d_out, k0, k1, bias, out + j0, ldo, last);
  else if (lin.packed.format == WeightFormat::bf16)
    dense_tile<R, P, kPrefetch>(x, ldx, static_cast<const uint16_t*>(lin.packed.data) + j0, lin.d_out,
                                k0, k1, bias, out + j0, ldo, last);
  else
    int8_tile<R, P, kPrefetch>(x, ldx, static_cast<const int8_t*>(lin.packed.data) + j0,
                               lin.packed.scales + j0, lin.d_out, k0, k1, bias, out + j0, ldo, last);
}

using TileFn = void (*)(const float*, int, const LinearWeights<float>&, int, int, int, bool, float*,
                        int, int);
template <int R, int... Ps>
constexpr std::array<TileFn, sizeof...(Ps)> tiles_for_rows(std::integer_sequence<int, Ps...>) {
  return {&tile<R, Ps + 1, false>...};
}
template <int... Rs>
constexpr std::array<std::array<TileFn, kTileVecs>, sizeof...(Rs)> tile_table(
    std::integer_sequence<int, Rs...>) {
  return {tiles_for_rows<Rs + 1>(std::make_integer_sequence<int, kTileVecs>())...};
}
constexpr auto kTiles = tile_table(std::make_integer_sequence<int, kTileRows>());  // [rows−1][vecs−1]

// n = 1: column vectors [v0, v1) of the thread in panels as wide as the registers allow, each
// streaming its rows of w once with software prefetch.
inline void linear_decode(const float* x, const LinearWeights<float>& lin, float* out, int v0, int v1) {
  const int nvec = (lin.d_out + W - 1) / W;
  const int tail = lin.d_out - (nvec - 1) * W;
  auto run = [&](auto vecs_c, int v) {
    constexpr int P = decltype(vecs_c)::value;
    const int last = v + P == nvec ? tail : W;
    tile<1, P, true>(x, lin.d_in, lin, v, 0, lin.d_in, true, out, lin.d_out, last);
  };
  for_each_panel<kDecodeVecs>(v0, v1, run);
}

// n > 1: one panel of kTileVecs column vectors, blocked over k, every kTileRows rows of x reusing
// the (converted) block of w from cache.
inline void linear_panel(const float* x, int n, const LinearWeights<float>& lin, float* out, int panel) {
  const int nvec = (lin.d_out + W - 1) / W;
  const int v = panel * kTileVecs;
  const int vecs = std::min(kTileVecs, nvec - v);
  const int last = v + vecs == nvec ? lin.d_out - (nvec - 1) * W : W;
  for (int k0 = 0; k0 < lin.d_in; k0 += kKBlock) {
    const int k1 = std::min(lin.d_in, k0 + kKBlock);
    for (int r = 0; r < n; r += kTileRows) {
      const int rows = std::min(kTileRows, n - r);
      kTiles[rows - 1][vecs - 1](x + size_t(r) * lin.d_in, lin.d_in, lin, v, k0, k1, k1 == lin.d_in,
                                 out + size_t(r) * lin.d_out, lin.d_out, last);
    }
  }
}

// The segments' partial sums, [segments][n][d_out]; grown once per calling thread, so the decode
// loop does not allocate.
inline float* segment_partials(size_t count) {
  thread_local std::vector<float> buffer;
  if (buffer.size() < count) buffer.resize(count);
  return buffer.data();
}


inline void linear(const float* x, int n, const LinearWeights<float>& lin, float* out) {
  if (n <= 0 || lin.d_out <= 0) return;
  if (lin.d_in <= 0) {  // an empty sum: out = b
    for (int r = 0; r < n; ++r) std::copy(lin.b, lin.b + lin.d_out, out + size_t(r) * lin.d_out);
    return;
  }
  const int nvec = (lin.d_out + W - 1) / W;
  const WeightFormat format = lin.packed.format;
  // Up to kStreamMaxRows rows stream whole rows of w (float, bf16); int8 needs its block sums in
  // registers, so it decodes in register panels.
  const bool stream = n <= kStreamMaxRows && format != WeightFormat::int8 &&
                      !(n == 1 && GPT2GEN_DECODE_MODE == 0);
  if (stream) {
    const int n_segments = (lin.d_in + kSegmentRows - 1) / kSegmentRows;
    const size_t segment_stride = size_t(n) * lin.d_out;
    float* parts = segment_partials(n_segments * segment_stride);
#pragma omp parallel num_threads(num_threads()) if (nvec >= 8)
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
      // The work is n_segments · nvec units (a column vector of a segment), segment-major; each
      // thread takes an equal run of them: whole segments (contiguous rows of w), cut by columns
      // only where its run begins or ends inside a segment.
      const int64_t units = int64_t(n_segments) * nvec;
      const int64_t u1 = units * (t + 1) / nt;
      for (int64_t u = units * t / nt; u < u1;) {
        const int s = int(u / nvec), v0 = int(u % nvec);
        const int v1 = int(std::min<int64_t>(nvec, u1 - int64_t(s) * nvec));
        float* part = parts + s * segment_stride;
        if (format == WeightFormat::native)
          linear_stream_segment(x, n, lin.w, lin.d_in, lin.d_out, s, part, v0, v1);
        else
          linear_stream_segment(x, n, static_cast<const uint16_t*>(lin.packed.data), lin.d_in,
                                lin.d_out, s, part, v0, v1);
        u = int64_t(s) * nvec + v1;
      }
#pragma omp barrier
      add_segments(parts, n_segments, n, lin.d_out, lin.b, out, int(int64_t(nvec) * t / nt),
                   int(int64_t(nvec) * (t + 1) / nt));
    }
    return;
  }
  if (n == 1) {
#pragma omp parallel num_threads(num_threads()) if (nvec >= 8)
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
      linear_decode(x, lin, out, int(int64_t(nvec) * t / nt), int(int64_t(nvec) * (t + 1) / nt));
    }
    return;
  }
  const int n_panels = (nvec + kTileVecs - 1) / kTileVecs;
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n_panels > 1)
  for (int p = 0; p < n_panels; ++p) linear_panel(x, n, lin, out, p);
}

}  // namespace simd_linear

// --- float32 with explicit SIMD (AVX-512 or AVX2) ---------------------------------------------
namespace f32 {

using simd::F32;
using V = F32::V;
using Mask = F32::Mask;
constexpr int W = F32::W;

// unembed, canonical order of every logit: acc = 0; acc = fma(x[r, c·W:], wte[v, c·W:], acc) over
// the vector chunks c of d in order (the last one masked); logit = F32::sum(acc).
constexpr int kUnembedDecodeVocab = 8;                 // n = 1: 8 vocabulary rows at a time
constexpr int kUnembedRows = W == 16 ? 4 : 3;          // n > 1: 4 (3) rows × 6 (4) vocabulary rows
constexpr int kUnembedVocab = W == 16 ? 6 : 4;

template <int R, int NV>
inline void unembed_tile(const float* x, const float* wte, int d, float* out, int ldo) {
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = F32::zero();
  int c = 0;
  for (; c + W <= d; c += W) {
    V xv[R];
    for (int r = 0; r < R; ++r) xv[r] = F32::load(x + size_t(r) * d + c);
    for (int v = 0; v < NV; ++v) {
      const V wv = F32::load(wte + size_t(v) * d + c);
      for (int r = 0; r < R; ++r) acc[r][v] = F32::fma(xv[r], wv, acc[r][v]);
    }
  }
  if (c < d) {
    const Mask m = F32::mask(d - c);
    V xv[R];
    for (int r = 0; r < R; ++r) xv[r] = F32::load(x + size_t(r) * d + c, m);
    for (int v = 0; v < NV; ++v) {
      const V wv = F32::load(wte + size_t(v) * d + c, m);
      for (int r = 0; r < R; ++r) acc[r][v] = F32::fma(xv[r], wv, acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) out[size_t(r) * ldo + v] = F32::sum(acc[r][v]);
}

template <int R, int NV>
inline void unembed_rows(const float* x, int n, const float* wte, int d, int n_vocab, float* out,
                         int v0, int v1) {
  // Blocks of wte rows small enough for L2 are read from memory once; inside a block, each tile
  // of x rows (L1) visits every group of NV vocabulary rows.
  const int block = std::max(NV, (256 * 1024 / (d * int(sizeof(float)) + 1)) / NV * NV);
  for (int b0 = v0; b0 < v1; b0 += block) {
    const int b1 = std::min(v1, b0 + block);
    int r = 0;
    for (; r < n; r += R) {
      const int rows = std::min(R, n - r);
      const float* xr = x + size_t(r) * d;
      float* o = out + size_t(r) * n_vocab;
      int v = b0;
      for (; v + NV <= b1; v += NV) {
        if (rows == R)
          unembed_tile<R, NV>(xr, wte + size_t(v) * d, d, o + v, n_vocab);
        else
          for (int rr = 0; rr < rows; ++rr)
            unembed_tile<1, NV>(xr + size_t(rr) * d, wte + size_t(v) * d, d, o + size_t(rr) * n_vocab + v, n_vocab);
      }
      for (; v < b1; ++v)
        for (int rr = 0; rr < rows; ++rr)
          unembed_tile<1, 1>(xr + size_t(rr) * d, wte + size_t(v) * d, d, o + size_t(rr) * n_vocab + v, n_vocab);
    }
  }
}

inline void unembed(const float* x, int n, const float* wte, int n_vocab, int d, float* out) {
#pragma omp parallel num_threads(num_threads()) if (n_vocab >= 64)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int v0 = int(int64_t(n_vocab) * t / nt), v1 = int(int64_t(n_vocab) * (t + 1) / nt);
    if (n == 1)
      unembed_rows<1, kUnembedDecodeVocab>(x, n, wte, d, n_vocab, out, v0, v1);
    else
      unembed_rows<kUnembedRows, kUnembedVocab>(x, n, wte, d, n_vocab, out, v0, v1);
  }
}

// 0.5·x·(1 + tanh(y)) = x / (1 + exp(−2y)) exactly, y = √(2/π)·(x + 0.044715·x³); the right-hand
// side has no cancellation for negative x and needs only exp.
inline V gelu(V x) {
  const V inner = F32::fma(F32::mul(F32::set1(0.044715f), F32::mul(x, x)), x, x);
  const V e = F32::exp(F32::mul(F32::set1(float(-2 * 0.7978845608028654)), inner));
  return F32::div(x, F32::add(F32::set1(1.0f), e));
}

inline void gelu(float* x, int64_t n) {
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

inline void softmax(float* x, int n) {
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

inline void layer_norm_row(const float* x, int d, LayerNormWeights<float> ln, float* out) {
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
    F32::store(out + i, F32::fma(F32::load(ln.g + i), F32::mul(F32::sub(F32::load(x + i), mean_v), inv_std),
                                 F32::load(ln.b + i)));
  if (full < d)
    F32::store(out + full,
               F32::fma(F32::load(ln.g + full, m), F32::mul(F32::sub(F32::load(x + full, m), mean_v), inv_std),
                        F32::load(ln.b + full, m)),
               m);
}

// Attention scores: q·k_t for NK keys at once, each in the canonical order (fma over the vector
// chunks of the head in order, the last masked, then F32::sum), so a key's score is the same
// whichever group it falls in.
template <int NK>
inline void dots(const float* q, const float* k, int hd, float* out) {
  V acc[NK];
  for (int j = 0; j < NK; ++j) acc[j] = F32::zero();
  int c = 0;
  for (; c + W <= hd; c += W) {
    const V qv = F32::load(q + c);
    for (int j = 0; j < NK; ++j) acc[j] = F32::fma(qv, F32::load(k + size_t(j) * hd + c), acc[j]);
  }
  if (c < hd) {
    const Mask m = F32::mask(hd - c);
    const V qv = F32::load(q + c, m);
    for (int j = 0; j < NK; ++j) acc[j] = F32::fma(qv, F32::load(k + size_t(j) * hd + c, m), acc[j]);
  }
  for (int j = 0; j < NK; ++j) out[j] = F32::sum(acc[j]);
}

// o[c·W + lane] = Σ_t p[t]·v[t, c·W + lane] for NV vectors of the head starting at column c0.
template <int NV>
inline void weighted_values(const float* p, const float* v, int n_keys, int hd, int c0, float* o) {
  V acc[NV];
  for (int j = 0; j < NV; ++j) acc[j] = F32::zero();
  const Mask m = F32::mask(hd - (c0 + (NV - 1) * W));
  for (int t = 0; t < n_keys; ++t) {
    const V pv = F32::set1(p[t]);
    const float* vt = v + size_t(t) * hd + c0;
    for (int j = 0; j < NV; ++j)
      acc[j] = F32::fma(pv, j == NV - 1 ? F32::load(vt + j * W, m) : F32::load(vt + j * W), acc[j]);
  }
  for (int j = 0; j < NV; ++j) {
    if (j == NV - 1)
      F32::store(o + c0 + j * W, acc[j], m);
    else
      F32::store(o + c0 + j * W, acc[j]);
  }
}

// One query row of one head over keys/values [0, n_keys).
inline void attend(const float* q, const float* k, const float* v, int n_keys, int hd, float* s,
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

}  // namespace f32
#endif  // GPT2GEN_SIMD_F32

#if GPT2GEN_SIMD_F32
// --- packed weights with explicit SIMD (AVX-512 or AVX2): unembed ------------------------------
// Canonical order of every logit (one ISA; the same for every row count, tiling and thread count):
//   unembed bf16: as f32::unembed (vector lanes over d, fma over the chunks in order, F32::sum).
//   unembed int8: lanes over d; per block of 32 columns in order: s = 0; s = fma over the block's
//                 chunks in order; acc = fma(scale[v, block], s, acc); logit = F32::sum(acc).
namespace simd_packed {

using simd_linear::load_w;

using simd::F32;
using V = F32::V;
using Mask = F32::Mask;
constexpr int W = F32::W;

// unembed: R rows of x against NV consecutive rows of the packed wte.
template <int R, int NV>
inline void unembed_tile_bf16(const float* x, const uint16_t* wte, int d, float* out, int ldo) {
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
      const V wv = load_w(wte + size_t(v) * d + c);
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
      const V wv = load_w(wte + size_t(v) * d + c, d - c);
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

template <int R, int NV>
inline void unembed_tile_int8(const float* x, const int8_t* wte, const float* scales, int d,
                              float* out, int ldo) {
  constexpr int kChunks = kQuantBlock / W;
  const int nb = (d + kQuantBlock - 1) / kQuantBlock;
  V acc[R][NV];
  GPT2GEN_UNROLL
  for (int r = 0; r < R; ++r) {
    GPT2GEN_UNROLL
    for (int v = 0; v < NV; ++v) acc[r][v] = F32::zero();
  }
  for (int b = 0; b < nb; ++b) {
    const int c0 = b * kQuantBlock, ce = std::min(d, c0 + kQuantBlock);
    if (ce - c0 == kQuantBlock) {
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
        for (int i = 0; i < kChunks; ++i) wv[i] = load_w(wte + size_t(v) * d + c0 + i * W);
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
    // Partial block (d not a multiple of kQuantBlock): the same sums, chunk by chunk, the last
    // one masked.
    GPT2GEN_UNROLL
    for (int v = 0; v < NV; ++v) {
      const V scv = F32::set1(scales[size_t(v) * nb + b]);
      GPT2GEN_UNROLL
      for (int r = 0; r < R; ++r) {
        V sum = F32::zero();
        for (int c = c0; c < ce; c += W) {
          const int len = std::min(W, ce - c);
          sum = F32::fma(F32::load(x + size_t(r) * d + c, F32::mask(len)),
                         load_w(wte + size_t(v) * d + c, len), sum);
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

template <WeightFormat F, int R, int NV>
inline void unembed_group(const float* x, const Packed& wte, int d, int v, float* out, int ldo) {
  const size_t off = size_t(v) * d;
  if constexpr (F == WeightFormat::bf16)
    unembed_tile_bf16<R, NV>(x, static_cast<const uint16_t*>(wte.data) + off, d, out, ldo);
  else
    unembed_tile_int8<R, NV>(x, static_cast<const int8_t*>(wte.data) + off,
                             wte.scales + size_t(v) * ((d + kQuantBlock - 1) / kQuantBlock), d, out, ldo);
}

// Tile sizes by format (bf16 as f32::unembed; int8 keeps x's whole block in registers).
template <WeightFormat F> struct UnembedTiles;
template <> struct UnembedTiles<WeightFormat::bf16> {
  static constexpr int kDecodeVocab = 8;          // n = 1: 8 vocabulary rows at a time
  static constexpr int kRows = W == 16 ? 4 : 3;   // n > 1: 4 (3) rows × 6 (4) vocabulary rows
  static constexpr int kVocab = W == 16 ? 6 : 4;
};
template <> struct UnembedTiles<WeightFormat::int8> {
  static constexpr int kDecodeVocab = W == 16 ? 8 : 4;
  static constexpr int kRows = W == 16 ? 3 : 2;   // n > 1: 3 (2) rows × 6 (2) vocabulary rows
  static constexpr int kVocab = W == 16 ? 6 : 2;
};

template <WeightFormat F, int R, int NV>
inline void unembed_rows(const float* x, int n, const Packed& wte, int d, int n_vocab, float* out,
                         int v0, int v1) {
  // Vocabulary groups outside, rows inside: each group of wte rows is read from memory once.
  int v = v0;
  for (; v + NV <= v1; v += NV) {
    int r = 0;
    for (; r + R <= n; r += R)
      unembed_group<F, R, NV>(x + size_t(r) * d, wte, d, v, out + size_t(r) * n_vocab + v, n_vocab);
    for (; r < n; ++r)
      unembed_group<F, 1, NV>(x + size_t(r) * d, wte, d, v, out + size_t(r) * n_vocab + v, n_vocab);
  }
  for (; v < v1; ++v)
    for (int r = 0; r < n; ++r)
      unembed_group<F, 1, 1>(x + size_t(r) * d, wte, d, v, out + size_t(r) * n_vocab + v, n_vocab);
}

inline void unembed(const float* x, int n, const Packed& wte, int n_vocab, int d, float* out) {
#pragma omp parallel num_threads(num_threads()) if (n_vocab >= 64)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int v0 = int(int64_t(n_vocab) * t / nt), v1 = int(int64_t(n_vocab) * (t + 1) / nt);
    auto run = [&](auto format_c) {
      constexpr WeightFormat F = decltype(format_c)::value;
      using Tiles = UnembedTiles<F>;
      if (n == 1)
        unembed_rows<F, 1, Tiles::kDecodeVocab>(x, n, wte, d, n_vocab, out, v0, v1);
      else
        unembed_rows<F, Tiles::kRows, Tiles::kVocab>(x, n, wte, d, n_vocab, out, v0, v1);
    };
    if (wte.format == WeightFormat::bf16)
      run(std::integral_constant<WeightFormat, WeightFormat::bf16>());
    else
      run(std::integral_constant<WeightFormat, WeightFormat::int8>());
  }
}

}  // namespace simd_packed
#endif  // GPT2GEN_SIMD_F32


// Packed (bf16, int8) float32 weights, read in the same accumulation order for every row count
// and thread count. int8: each output accumulates Σ_blocks scale·(Σ_{k in block} x[k]·q[k]).
namespace packed {

inline float bf16_to_float(uint16_t bits) {
  const uint32_t u = uint32_t(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

constexpr int kCols = 64;  // output columns per panel: fixed, so the accumulators vectorise

// out[r, j0 : j0 + cols] = x[r]·w[:, j0 : j0 + cols] + b for every row r.
inline void linear_panel(const float* x, int n, const LinearWeights<float>& lin, int j0, int cols,
                         float* out) {
  const int d_in = lin.d_in, d_out = lin.d_out;
  for (int r = 0; r < n; ++r) {
    const float* xr = x + size_t(r) * d_in;
    float acc[kCols] = {};
    if (lin.packed.format == WeightFormat::bf16) {
      const uint16_t* w = static_cast<const uint16_t*>(lin.packed.data) + j0;
      for (int k = 0; k < d_in; ++k) {
        const uint16_t* wk = w + size_t(k) * d_out;
        for (int j = 0; j < cols; ++j) acc[j] += xr[k] * bf16_to_float(wk[j]);
      }
    } else {
      const int8_t* q = static_cast<const int8_t*>(lin.packed.data) + j0;
      for (int k0 = 0; k0 < d_in; k0 += kQuantBlock) {
        float block[kCols] = {};
        for (int k = k0; k < std::min(d_in, k0 + kQuantBlock); ++k) {
          const int8_t* qk = q + size_t(k) * d_out;
          for (int j = 0; j < cols; ++j) block[j] += xr[k] * float(qk[j]);
        }
        const float* scale = lin.packed.scales + size_t(k0 / kQuantBlock) * d_out + j0;
        for (int j = 0; j < cols; ++j) acc[j] += scale[j] * block[j];
      }
    }
    float* o = out + size_t(r) * d_out + j0;
    for (int j = 0; j < cols; ++j) o[j] = acc[j] + lin.b[j0 + j];
  }
}

inline void linear(const float* x, int n, const LinearWeights<float>& lin, float* out) {
  const int n_panels = (lin.d_out + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n_panels > 1)
  for (int p = 0; p < n_panels; ++p)
    linear_panel(x, n, lin, p * kCols, std::min(kCols, lin.d_out - p * kCols), out);
}

// Row v of a packed [rows, d] matrix (int8 scales [rows, ceil(d / kQuantBlock)]) as float32.
inline void unpack_row(Packed m, int v, int d, float* out) {
  if (m.format == WeightFormat::bf16) {
    const uint16_t* row = static_cast<const uint16_t*>(m.data) + size_t(v) * d;
    for (int c = 0; c < d; ++c) out[c] = bf16_to_float(row[c]);
  } else {
    const int8_t* row = static_cast<const int8_t*>(m.data) + size_t(v) * d;
    const float* scale = m.scales + size_t(v) * ((d + kQuantBlock - 1) / kQuantBlock);
    for (int c = 0; c < d; ++c) out[c] = float(row[c]) * scale[c / kQuantBlock];
  }
}

// x[r]·wte[v] for a packed wte row, in the order of the int8 formula above.
inline float dot_row(const float* x, Packed m, int v, int d) {
  float acc = 0;
  if (m.format == WeightFormat::bf16) {
    const uint16_t* row = static_cast<const uint16_t*>(m.data) + size_t(v) * d;
    for (int c = 0; c < d; ++c) acc += x[c] * bf16_to_float(row[c]);
    return acc;
  }
  const int8_t* row = static_cast<const int8_t*>(m.data) + size_t(v) * d;
  const float* scale = m.scales + size_t(v) * ((d + kQuantBlock - 1) / kQuantBlock);
  for (int c0 = 0; c0 < d; c0 += kQuantBlock) {
    float block = 0;
    for (int c = c0; c < std::min(d, c0 + kQuantBlock); ++c) block += x[c] * float(row[c]);
    acc += scale[c0 / kQuantBlock] * block;
  }
  return acc;
}

inline void unembed(const float* x, int n, Packed wte, int n_vocab, int d, float* out) {
#if GPT2GEN_SIMD_F32
  return simd_packed::unembed(x, n, wte, n_vocab, d, out);
#endif
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int v = 0; v < n_vocab; ++v)
    for (int r = 0; r < n; ++r) out[size_t(r) * n_vocab + v] = dot_row(x + size_t(r) * d, wte, v, d);
}

}  // namespace packed

}  // namespace

template <typename T>
void embedding(const T* wte, Packed wte_packed, const T* wpe, int n_embd, const int32_t* ids,
               int n, int pos0, T* out) {
  for (int t = 0; t < n; ++t) {
    const T* pos = wpe + size_t(pos0 + t) * n_embd;
    T* o = out + size_t(t) * n_embd;
    if constexpr (std::is_same_v<T, float>)
      if (wte_packed.format != WeightFormat::native) {
        packed::unpack_row(wte_packed, ids[t], n_embd, o);
        for (int i = 0; i < n_embd; ++i) o[i] += pos[i];
        continue;
      }
    const T* tok = wte + size_t(ids[t]) * n_embd;
    for (int i = 0; i < n_embd; ++i) o[i] = tok[i] + pos[i];
  }
}

template <typename T>
void layer_norm(const T* x, int n, int d, LayerNormWeights<T> ln, T* out) {
#if GPT2GEN_SIMD_F32
  if constexpr (std::is_same_v<T, float>) {
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n > 8)
    for (int r = 0; r < n; ++r) f32::layer_norm_row(x + size_t(r) * d, d, ln, out + size_t(r) * d);
    return;
  }
#endif
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
#if GPT2GEN_SIMD_F32
  if constexpr (std::is_same_v<T, float>) return f32::gelu(x, n);
#endif
  const T c = T(std::sqrt(2.0 / M_PI));
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n > 16384)
  for (int64_t i = 0; i < n; ++i) {
    const T v = x[i];
    x[i] = T(0.5) * v * (T(1) + std::tanh(c * (v + T(0.044715) * v * v * v)));
  }
}

template <typename T>
void softmax(T* x, int n) {
#if GPT2GEN_SIMD_F32
  if constexpr (std::is_same_v<T, float>) return f32::softmax(x, n);
#endif
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
#if GPT2GEN_SIMD_F32
  if constexpr (std::is_same_v<T, float>) return simd_linear::linear(x, n, lin, out);
#endif
  if constexpr (std::is_same_v<T, float>)
    if (lin.packed.format != WeightFormat::native) return packed::linear(x, n, lin, out);
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
void unembed(const T* x, int n, const T* wte, Packed wte_packed, int n_vocab, int d, T* out) {
  if constexpr (std::is_same_v<T, float>)
    if (wte_packed.format != WeightFormat::native)
      return packed::unembed(x, n, wte_packed, n_vocab, d, out);
#if GPT2GEN_SIMD_F32
  if constexpr (std::is_same_v<T, float>) return f32::unembed(x, n, wte, n_vocab, d, out);
#endif
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
#if GPT2GEN_SIMD_F32
      if constexpr (std::is_same_v<T, float>) {
        f32::attend(q, k, v, n_keys, hd, s, out + size_t(i) * n_embd + h * hd);
        continue;
      }
#endif
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
  template void embedding<T>(const T*, Packed, const T*, int, const int32_t*, int, int, T*); \
  template void layer_norm<T>(const T*, int, int, LayerNormWeights<T>, T*);                 \
  template void gelu<T>(T*, int64_t);                                                       \
  template void softmax<T>(T*, int);                                                        \
  template void linear<T>(const T*, int, LinearWeights<T>, T*);                             \
  template void unembed<T>(const T*, int, const T*, Packed, int, int, T*);                  \
  template void attention<T>(const T*, int, int, int, int, T*, T*, int, T*, T*);            \
  template void residual_add<T>(T*, const T*, int64_t);
GPT2GEN_INSTANTIATE(float)
GPT2GEN_INSTANTIATE(double)

}  // namespace GPT2GEN_ISA_NS
}  // namespace gpt2gen
