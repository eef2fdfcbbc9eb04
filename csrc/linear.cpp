// y = x·w + b for weights of any format (float32 with vectors where the instruction set has them,
// simd.hpp; otherwise the portable loops, portable.hpp). The quantized formats (int8, int4,
// int6) have kernels of their own, with integer dot products: linear_quantized.cpp.
//
// The vector kernels convert the weights to float32 in registers as they stream in (simd.hpp's
// widening loads; bf16 rows come in interleaved pairs, two rows per load); activations and every
// accumulation stay float32 (no vdpbf16ps: it would round the activations). Native weights are
// read in GPT-2's row layout (row streaming below for a few rows, register tiles for more); bf16
// ones in their panels (model.hpp), by register tiles of one panel for any row count. Order of
// every output element (one instruction set; the same for every row count, tiling and thread
// count): the rows of w in segments of kSegmentRows; per segment s:
//   p_s = 0; p_s = fma(x[k], w[k, j], p_s) for k in the segment in order;
//   out = ((p_0 + p_1) + …) + b[j].
// The segments let threads split a decode step over contiguous rows of w (each thread streams one
// contiguous stretch of memory: a float32 decode step took 22% less time than with column bands)
// without making the sum depend on the thread count.
#include <algorithm>
#include <array>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels.hpp"
#include "linear_quantized.hpp"
#include "openmp.hpp"
#include "portable.hpp"
#include "simd.hpp"
#include "weight_format.hpp"

namespace gpt2gen {
namespace GPT2GEN_ISA_NS {

namespace {

template <typename F32>  // simd::Vec<float>
struct VectorLinear {
  using V = typename F32::V;
  using Mask = typename F32::Mask;
  static constexpr int W = F32::W;

  static constexpr int kSegmentRows = 128;

  // --- reading w ---------------------------------------------------------------------------------
  // bf16 stores its rows in interleaved pairs (model.hpp): one load widens rows k and k + 1 of a
  // column vector (a shift and an and, no shuffle); other formats load one row at a time.
  template <typename E>
  static constexpr int kRowsPerLoad = std::is_same_v<E, Bf16> ? 2 : 1;

  // w's stored values in its format's layout: GPT-2's rows, or bf16's panels (model.hpp).
  template <typename E>
  struct Matrix {
    const E* w;
    int d_in, d_out;
    // Where the values of row k (of the pair holding k) of column vector v start.
    const E* at(int k, int v) const {
      if constexpr (kRowsPerLoad<E> == 2)
        return w + bf16_index(k & ~1, v * W, d_in);
      else
        return w + size_t(k) * d_out + size_t(v) * W;
    }
  };

  // wv[i] = row k + i of column vector v as float32 (k even for pairs), the vector holding `last`
  // columns when kMasked.
  template <int kRows, bool kMasked, typename E>
  static void widen_rows(const Matrix<E>& m, int k, int v, int last, V (&wv)[kRows]) {
    if constexpr (kRowsPerLoad<E> == 2) {
      GPT2GEN_UNROLL
      for (int i = 0; i < kRows; i += 2) {
        V odd;
        const E* p = m.at(k + i, v);
        if (kMasked)
          F32::widen_pair(p, last, wv[i], odd);
        else
          F32::widen_pair(p, wv[i], odd);
        if (i + 1 < kRows) wv[i + 1] = odd;
      }
    } else {
      GPT2GEN_UNROLL
      for (int i = 0; i < kRows; ++i) {
        const E* p = m.at(k + i, v);
        wv[i] = kMasked ? F32::widen(p, last) : F32::widen(p);
      }
    }
  }

  // --- native weights, n ≤ kStreamMaxRows: row streaming ----------------------------------------
  // Columns [v0, v1) of kStreamRows rows of w at a time (sequential streams for the prefetchers;
  // one row at a time for one row of x and short rows: kShortRowBytes).
  // Each vector of w is loaded (and widened) once and used for the R rows of x; the segment's
  // partial sums live in `part` (L1/L2), each continued by the rows' FMAs in k order, starting
  // from zero at the segment's first row (`first`).
  static constexpr int kStreamMaxRows = 8;
  static constexpr int kStreamRows = 8;
  // For one row of x, rows of w no longer than this are read one at a time, a single sequential
  // stream: kStreamRows interleaved 3 KB rows (d_out = 768) streamed ~25% slower (2 threads, a
  // loop alternating both patterns), while longer rows stream faster interleaved.
  static constexpr size_t kShortRowBytes = 4096;

  // kRows rows of w from k0. Software prefetch of the next group of rows, for R > 1 only: at
  // R = 1 the hardware prefetchers keep up with each thread's contiguous stream (float32 decode
  // step 11% slower with the prefetch instructions; prefetching 2–8 KB ahead into L2, as the
  // quantized kernels do, measured no faster); with R FMAs per weight they fall behind (n = 8:
  // 1.3× faster).
  template <int R, int kRows, typename E>
  static void stream_rows(const float* __restrict x, int ldx, const Matrix<E>& w,
                          float* __restrict part, int v0, int v1, int k0, int last, bool first) {
    const int d_out = w.d_out;
    x += k0;
    // One row of x: its kRows values broadcast once for every column vector (as memory operands
    // of the FMAs they would take a load slot each time, and decode is bound by load slots).
    V xb[kRows];
    if constexpr (R == 1) {
      GPT2GEN_UNROLL
      for (int i = 0; i < kRows; ++i) {
        xb[i] = F32::set1(x[i]);
        __asm__("" : "+v"(xb[i]));
      }
    }
    auto step = [&](int v, auto masked_c) {
      constexpr bool kMasked = decltype(masked_c)::value;
      const Mask m = F32::mask(kMasked ? last : W);
      if constexpr (R > 1) {
        if (v * W * sizeof(E) * kRowsPerLoad<E> % 64 == 0) {  // once per cache line
          GPT2GEN_UNROLL
          for (int i = 0; i < kRows; i += kRowsPerLoad<E>)
            F32::prefetch(w.at(k0 + kStreamRows + i, v));
        }
      }
      V wv[kRows];
      widen_rows<kRows, kMasked>(w, k0, v, last, wv);
      GPT2GEN_UNROLL
      for (int r = 0; r < R; ++r) {
        float* o = part + size_t(r) * d_out + v * W;
        const float* xr = x + size_t(r) * ldx;
        V acc = first ? F32::zero() : kMasked ? F32::load(o, m) : F32::load(o);
        GPT2GEN_UNROLL
        for (int i = 0; i < kRows; ++i)
          acc = F32::fma(R == 1 ? xb[i] : F32::set1(xr[i]), wv[i], acc);
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

  // part[r, j] = Σ_{k in segment s} x[r, k]·w[k, j] for R rows and the column vectors [v0, v1)
  // of w[d_in, d_out].
  template <int R, typename E>
  static void stream_segment_rows(const float* x, const Matrix<E>& w, int s, float* part, int v0,
                                  int v1) {
    if (v0 >= v1) return;
    const int d_in = w.d_in, d_out = w.d_out;
    const int nvec = (d_out + W - 1) / W;
    const int last = v1 == nvec ? d_out - (nvec - 1) * W : W;
    const int k0 = s * kSegmentRows, k1 = std::min(d_in, k0 + kSegmentRows);
    int k = k0;
    if (R == 1 && size_t(d_out) * sizeof(E) <= kShortRowBytes) {
      for (; k < k1; ++k) stream_rows<1, 1>(x, d_in, w, part, v0, v1, k, last, k == k0);
      return;
    }
    for (; k + kStreamRows <= k1; k += kStreamRows)
      stream_rows<R, kStreamRows>(x, d_in, w, part, v0, v1, k, last, k == k0);
    // The rest (fewer than kStreamRows rows) in groups of 4, 2 and 1.
    static_assert(kStreamRows == 8, "the rest of a segment must be covered by 4 + 2 + 1 rows");
    if (k1 - k >= 4) {
      stream_rows<R, 4>(x, d_in, w, part, v0, v1, k, last, k == k0);
      k += 4;
    }
    if (k1 - k >= 2) {
      stream_rows<R, 2>(x, d_in, w, part, v0, v1, k, last, k == k0);
      k += 2;
    }
    if (k1 - k >= 1) stream_rows<R, 1>(x, d_in, w, part, v0, v1, k, last, k == k0);
  }

  // stream_segment_rows with the row count chosen at run time (1 ≤ n ≤ kStreamMaxRows).
  template <typename E>
  static void stream_segment(const float* x, int n, const Matrix<E>& w, int s, float* part, int v0,
                             int v1) {
    auto run = [&](auto rows_c) {
      stream_segment_rows<decltype(rows_c)::value>(x, w, s, part, v0, v1);
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

  // out[r, j] = ((part_0 + part_1) + …) + b[j] (b may be null) over the segments' partial sums,
  // column vectors [v0, v1).
  static void add_segments(const float* parts, int n_segments, int n, int d_out, const float* b,
                           float* out, int v0, int v1) {
    const int nvec = (d_out + W - 1) / W;
    const size_t stride = size_t(n) * d_out;
    for (int r = 0; r < n; ++r)
      for (int v = v0; v < v1; ++v) {
        const Mask m = F32::mask(v == nvec - 1 ? d_out - v * W : W);
        const float* p = parts + size_t(r) * d_out + v * W;
        V acc = F32::load(p, m);
        for (int s = 1; s < n_segments; ++s) acc = F32::add(acc, F32::load(p + s * stride, m));
        if (b) acc = F32::add(acc, F32::load(b + v * W, m));
        F32::store(out + size_t(r) * d_out + v * W, acc, m);
      }
  }

  // The segments' partial sums, [segments][n][d_out]; grown once per calling thread, so the
  // decode loop does not allocate.
  static float* segment_partials(size_t count) {
    thread_local std::vector<float> buffer;
    if (buffer.size() < count) buffer.resize(count);
    return buffer.data();
  }

  template <typename Format>
  static void stream(const float* x, int n, const LinearWeights<float>& lin, float* out) {
    const int nvec = (lin.d_out + W - 1) / W;
    const int n_segments = (lin.d_in + kSegmentRows - 1) / kSegmentRows;
    const size_t segment_stride = size_t(n) * lin.d_out;
    float* parts = segment_partials(n_segments * segment_stride);
    const Matrix<typename Format::Storage> w{stored_values<Format>(lin.w, lin.packed), lin.d_in,
                                             lin.d_out};
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
        stream_segment(x, n, w, s, parts + s * segment_stride, v0, v1);
        u = int64_t(s) * nvec + v1;
      }
#pragma omp barrier
      add_segments(parts, n_segments, n, lin.d_out, lin.b, out, int(int64_t(nvec) * t / nt),
                   int(int64_t(nvec) * (t + 1) / nt));
    }
  }

  // --- register tiles: n > kStreamMaxRows, or bf16 ---------------------------------------------
  static constexpr int kTileRows = W == 16 ? 6 : 4;  // 6 (4) rows × 4 (3) vectors
  static constexpr int kTileVecs = W == 16 ? 4 : 3;
  static constexpr int kPassRows = 256;  // rows of w per pass over the tiles of x's rows
  static_assert(kPassRows % kSegmentRows == 0, "a pass must hold whole segments");

  // acc[r][p] = fma(x[r, k + i], w[k + i, (v + p)·W + lane], acc[r][p]) for kRows (one load's)
  // rows of w from k, in order. One row of x (decode): widen and use each vector at once;
  // several: widen the P vectors first, then one broadcast of x per row.
  template <int R, int P, int kRows, typename E>
  static void row_step(const float* x, int ldx, int k, const Matrix<E>& w, int v, int last,
                       V (&acc)[R][P]) {
    if constexpr (R == 1) {
      V xb[kRows];  // in registers, as in stream_rows
      GPT2GEN_UNROLL
      for (int i = 0; i < kRows; ++i) {
        xb[i] = F32::set1(x[k + i]);
        __asm__("" : "+v"(xb[i]));
      }
      GPT2GEN_UNROLL
      for (int p = 0; p < P; ++p) {
        V wv[kRows];
        if (p == P - 1)
          widen_rows<kRows, true>(w, k, v + p, last, wv);
        else
          widen_rows<kRows, false>(w, k, v + p, last, wv);
        GPT2GEN_UNROLL
        for (int i = 0; i < kRows; ++i) acc[0][p] = F32::fma(xb[i], wv[i], acc[0][p]);
      }
    } else {
      V wv[P][kRows];
      GPT2GEN_UNROLL
      for (int p = 0; p < P; ++p) {
        if (p == P - 1)
          widen_rows<kRows, true>(w, k, v + p, last, wv[p]);
        else
          widen_rows<kRows, false>(w, k, v + p, last, wv[p]);
      }
      GPT2GEN_UNROLL
      for (int i = 0; i < kRows; ++i) {
        GPT2GEN_UNROLL
        for (int r = 0; r < R; ++r) {
          const V xv = F32::set1(x[size_t(r) * ldx + k + i]);
          GPT2GEN_UNROLL
          for (int p = 0; p < P; ++p) acc[r][p] = F32::fma(xv, wv[p][i], acc[r][p]);
        }
      }
    }
  }

  // acc[r][p] = Σ_{k0 ≤ k < k1} x[r, k]·w[k, (v + p)·W + lane], from zero, k in order (k0 even).
  template <int R, int P, typename E>
  static void sum_rows(const float* x, int ldx, const Matrix<E>& w, int v, int k0, int k1, int last,
                       V (&acc)[R][P]) {
    GPT2GEN_UNROLL
    for (int r = 0; r < R; ++r) {
      GPT2GEN_UNROLL
      for (int p = 0; p < P; ++p) acc[r][p] = F32::zero();
    }
    constexpr int kStep = kRowsPerLoad<E>;
    int k = k0;
    for (; k + kStep <= k1; k += kStep) row_step<R, P, kStep>(x, ldx, k, w, v, last, acc);
    if (k < k1) row_step<R, P, 1>(x, ldx, k, w, v, last, acc);  // a pair's first row
  }

  // out[r, p·W + lane] for R rows and the P column vectors from v of w (the last holding `last`
  // columns) over the rows [k0, k1) of w, k0 a segment boundary: each segment's sum starts at
  // zero in registers and is added to out (or is out, for the first segment); bias, if given, is
  // added at the end. out and bias point at column v·W.
  template <int R, int P, typename E>
  static void dense_tile(const float* x, int ldx, const Matrix<E>& w, int v, int k0, int k1,
                         const float* bias, float* out, int ldo, int last) {
    const Mask m = F32::mask(last);
    auto load = [&](const float* p, int p_index) {
      return p_index == P - 1 ? F32::load(p, m) : F32::load(p);
    };
    for (int s0 = k0; s0 < k1; s0 += kSegmentRows) {
      const int s1 = std::min(k1, s0 + kSegmentRows);
      V acc[R][P];
      sum_rows<R, P>(x, ldx, w, v, s0, s1, last, acc);
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

  // One tile: R rows × P column vectors starting at column vector v, over the rows [k0, k1) of w.
  template <typename Format, int R, int P>
  static void tile(const float* x, int ldx, const LinearWeights<float>& lin, int v, int k0, int k1,
                   bool with_bias, float* out, int ldo, int last) {
    const int j0 = v * W;
    const float* bias = with_bias && lin.b ? lin.b + j0 : nullptr;
    const Matrix<typename Format::Storage> w{stored_values<Format>(lin.w, lin.packed), lin.d_in,
                                             lin.d_out};
    dense_tile<R, P>(x, ldx, w, v, k0, k1, bias, out + j0, ldo, last);
  }

  // The tiles of kTileRows × kTileVecs and every smaller size, as [rows − 1][vecs − 1].
  using TileFn = void (*)(const float*, int, const LinearWeights<float>&, int, int, int, bool,
                          float*, int, int);
  template <typename Format, int R, int... Ps>
  static constexpr std::array<TileFn, sizeof...(Ps)> tiles_of_rows(
      std::integer_sequence<int, Ps...>) {
    return {&tile<Format, R, Ps + 1>...};
  }
  template <typename Format, int... Rs>
  static constexpr std::array<std::array<TileFn, kTileVecs>, sizeof...(Rs)> tile_table(
      std::integer_sequence<int, Rs...>) {
    return {tiles_of_rows<Format, Rs + 1>(std::make_integer_sequence<int, kTileVecs>())...};
  }

  // The column vectors of a panel: bf16's stored panel (model.hpp), or one tile's for native
  // weights.
  template <typename Format>
  static constexpr int kPanelVecs =
      Format::kFormat == WeightFormat::bf16 ? kPanelColumns / W : kTileVecs;

  // One panel, in passes of kPassRows rows of w; in each pass every tile of kTileRows rows of x
  // and up to kTileVecs column vectors, reusing the pass's rows of w from cache. One row of x
  // (decode) takes the whole panel in one tile: one sequential stream (narrower tiles would read
  // it as strided ones).
  template <typename Format>
  static void panel(const float* x, int n, const LinearWeights<float>& lin, float* out, int index) {
    static constexpr auto kTiles = tile_table<Format>(std::make_integer_sequence<int, kTileRows>());
    static constexpr auto kDecodeTiles =
        tiles_of_rows<Format, 1>(std::make_integer_sequence<int, kPanelVecs<Format>>());
    const int nvec = (lin.d_out + W - 1) / W;
    const int v0 = index * kPanelVecs<Format>, v_end = std::min(nvec, v0 + kPanelVecs<Format>);
    const int tile_vecs = n == 1 ? kPanelVecs<Format> : kTileVecs;
    for (int k0 = 0; k0 < lin.d_in; k0 += kPassRows) {
      const int k1 = std::min(lin.d_in, k0 + kPassRows);
      for (int v = v0; v < v_end; v += tile_vecs) {
        const int vecs = std::min(tile_vecs, v_end - v);
        const int last = v + vecs == nvec ? lin.d_out - (nvec - 1) * W : W;
        for (int r = 0; r < n; r += kTileRows) {
          const int rows = std::min(kTileRows, n - r);
          const TileFn tile = n == 1 ? kDecodeTiles[vecs - 1] : kTiles[rows - 1][vecs - 1];
          tile(x + size_t(r) * lin.d_in, lin.d_in, lin, v, k0, k1, k1 == lin.d_in,
               out + size_t(r) * lin.d_out, lin.d_out, last);
        }
      }
    }
  }

  template <typename Format>
  static void linear(Format, const float* x, int n, const LinearWeights<float>& lin, float* out) {
    if (n <= 0 || lin.d_out <= 0) return;
    if (lin.d_in <= 0) {  // an empty sum: out = b
      for (int r = 0; r < n; ++r) std::copy(lin.b, lin.b + lin.d_out, out + size_t(r) * lin.d_out);
      return;
    }
    if constexpr (Format::kFormat == WeightFormat::native)
      if (n <= kStreamMaxRows) return stream<Format>(x, n, lin, out);
    const int nvec = (lin.d_out + W - 1) / W;
    const int n_panels = (nvec + kPanelVecs<Format> - 1) / kPanelVecs<Format>;
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n_panels > 1)
    for (int p = 0; p < n_panels; ++p) panel<Format>(x, n, lin, out, p);
  }
};

}  // namespace

template <typename T>
void linear(const T* x, int n, LinearWeights<T> lin, T* out) {
  with_weight_format<T>(lin.packed.format, [&](auto format) {
    if constexpr (decltype(format)::kQuantized)
      quantized_linear<decltype(format)>(x, n, lin, out);
    else if constexpr (simd::kHasVec<T>)
      VectorLinear<simd::Vec<T>>::linear(format, x, n, lin, out);
    else
      portable::linear(format, x, n, lin, out);
  });
}

template void linear<float>(const float*, int, LinearWeights<float>, float*);
template void linear<double>(const double*, int, LinearWeights<double>, double*);

}  // namespace GPT2GEN_ISA_NS
}  // namespace gpt2gen
