// Every instruction-set intrinsic the kernels use, behind one type: simd::Vec<float>, the float32
// vector of the instruction set this copy is compiled for (AVX-512: 16 lanes, AVX2: 8), with its
// arithmetic, masked loads/stores for tails, a vectorised exp, the widening loads of each weight
// format's storage type, and prefetch.
//
// Where the instruction set has no such vector (the generic build, or a machine this file does
// not know yet) Vec<float> is left undefined and kHasVec<float> is false: the vector kernels are
// templates over Vec<float> that are then never instantiated, and the portable kernels run. So
// porting the vector kernels to a new instruction set (ARM NEON, ...) is one more Vec<float>
// specialization here (see csrc/README.md).
//
// Included inside each per-instruction-set copy's namespace (via kernels.hpp), so each copy gets
// its own Vec.
#pragma once

#include <cstdint>
#include <cstring>

#include "isa.hpp"
#include "weight_format.hpp"  // the storage types the widening loads take

#if defined(__AVX512F__) || defined(__AVX2__)
// gcc 12's AVX-512 header warns about its own deliberately undefined registers (gcc bug 105593,
// fixed in gcc 13) wherever its functions are inlined.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

// Register tiles: loops over a tile's rows and vectors must unroll fully so arrays stay in
// registers.
#define GPT2GEN_UNROLL _Pragma("GCC unroll 32")

namespace gpt2gen {
namespace GPT2GEN_ISA_NS {
namespace simd {

// The vector type of T on this instruction set: defined only where there is one.
template <typename T>
struct Vec;
template <typename T>
inline constexpr bool kHasVec = false;

#if defined(__AVX512F__)

template <>
inline constexpr bool kHasVec<float> = true;

template <>
struct Vec<float> {
  using V = __m512;
  using Mask = __mmask16;
  static constexpr int W = 16;  // lanes

  static Mask mask(int n) { return n >= W ? Mask(0xFFFF) : Mask((1u << n) - 1); }
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void store(float* p, V v, Mask m) { _mm512_mask_storeu_ps(p, m, v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V keep(V v, Mask m) { return _mm512_maskz_mov_ps(m, v); }  // lanes outside m → 0
  // Masked-off lanes of a max reduction must not win: fill them with -inf.
  static V load_or_neg_inf(const float* p, Mask m) {
    return _mm512_mask_loadu_ps(_mm512_set1_ps(-__builtin_inff()), m, p);
  }
  // Horizontal sums in one fixed order (the compiler's fixed shuffle tree).
  static float sum(V v) { return _mm512_reduce_add_ps(v); }
  static float max_all(V v) { return _mm512_reduce_max_ps(v); }

  // exp(x) lane by lane: Cephes' expf polynomial on x − n·ln2, |error| ≲ 1 ulp for normal
  // results; scalef gives inf on overflow and 0 / subnormals on underflow; NaN propagates.
  static V exp(V x) {
    // exp(89) = inf and exp(-104) = 0 in float32: clamping there keeps r small (operand order
    // lets NaN through: max/min return the second operand when one is NaN).
    const V xc = _mm512_min_ps(_mm512_set1_ps(89.f), _mm512_max_ps(_mm512_set1_ps(-104.f), x));
    const V n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    V r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    V p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    const V r2 = _mm512_mul_ps(r, r);
    const V y = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(y, n);
  }

  // W stored weights as float32 (see weight_format.hpp): bf16 is a 16-bit shift of the
  // zero-extended bits. The partial forms read only the
  // first n < W values and zero the other lanes (never reading past them: the matrix may end).
  static V widen(const float* p) { return load(p); }
  static V widen(const Bf16* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
  }
  static V widen(const float* p, int n) { return n >= W ? widen(p) : load(p, mask(n)); }
  static V widen(const Bf16* p, int n) {
    if (n >= W) return widen(p);
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask(n), p)), 16));
  }
  // Two rows of W bf16 columns stored as interleaved pairs (a linear's bf16 matrix, model.hpp):
  // each 32-bit lane holds a column's value of the even row in its low half, of the odd row in
  // its high half. The partial form reads n < W columns.
  static void widen_pair(const Bf16* p, V& even, V& odd) {
    __m512i v = _mm512_loadu_si512(p);
    // One load for both halves: GCC would otherwise fold the load into both the shift and the
    // and, reading the line twice (decode is bound by load slots, not arithmetic).
    __asm__("" : "+v"(v));
    split_pair(v, even, odd);
  }
  static void widen_pair(const Bf16* p, int n, V& even, V& odd) {
    split_pair(_mm512_maskz_loadu_epi32(mask(n), p), even, odd);
  }
  static void split_pair(__m512i v, V& even, V& odd) {
    even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    odd = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(int(0xFFFF0000u))));
  }

  // Into L1, ahead of a stream the hardware prefetchers do not keep up with.
  static void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
  // Into L2, far ahead of a stream read slowly (much arithmetic per byte).
  static void prefetch_far(const void* p) {
    _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1);
  }

  // --- integer dot products of the quantized formats (linear_quantized.cpp) ---------------------
  // I holds W 32-bit lanes; a lane of weight bytes is four values of k of one column.
  using I = __m512i;
  // Activations are signed digits of kPlaneBits bits; dot_bytes must not overflow with them.
  static constexpr int kPlaneBits = 8;
  static I izero() { return _mm512_setzero_si512(); }
  static I iset1(int32_t x) { return _mm512_set1_epi32(x); }
  static I iload(const void* p) { return _mm512_loadu_si512(p); }
  static I iadd(I a, I b) { return _mm512_add_epi32(a, b); }
  template <int kBits>
  static I ishl(I a) {
    return _mm512_slli_epi32(a, kBits);
  }
  // acc + Σ_i u[4l + i]·s[4l + i] per lane l, u unsigned and s signed bytes (VNNI vpdpbusd).
  static I dot_bytes(I acc, I u, I s) { return _mm512_dpbusd_epi32(acc, u, s); }
  static I low_nibbles(I v) { return _mm512_and_si512(v, _mm512_set1_epi8(0x0F)); }
  static I high_nibbles(I v) {
    return _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(0x0F));
  }
  static V to_float(I v) { return _mm512_cvtepi32_ps(v); }
  static V abs(V v) { return _mm512_abs_ps(v); }
  static I to_int(V v) { return _mm512_cvtps_epi32(v); }  // round to nearest even
  static I isub(I a, I b) { return _mm512_sub_epi32(a, b); }
  static I iand(I a, I b) { return _mm512_and_si512(a, b); }
  static I ior(I a, I b) { return _mm512_or_si512(a, b); }
  template <int kBits>
  static I isra(I a) {
    return _mm512_srai_epi32(a, kBits);
  }
  static int32_t isum(I v) { return _mm512_reduce_add_epi32(v); }
  // |v|'s bits as integers order as the values do, with inf and then NaN above every finite one.
  static I abs_bits(V v) { return _mm512_castps_si512(abs(v)); }
  static I imax(I a, I b) { return _mm512_max_epi32(a, b); }
  static int32_t imax_all(I v) { return _mm512_reduce_max_epi32(v); }
  // The W lanes' low bytes (each lane in [-128, 127]) to p[0 .. W).
  static void store_bytes(int8_t* p, I v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(v));
  }
  static V load_half(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
};

#elif defined(__AVX2__) && defined(__FMA__)

template <>
inline constexpr bool kHasVec<float> = true;

template <>
struct Vec<float> {
  using V = __m256;
  using Mask = __m256i;
  static constexpr int W = 8;

  static Mask mask(int n) {
    alignas(32) static const int32_t table[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                  0,  0,  0,  0,  0,  0,  0,  0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + 8 - (n >= W ? W : n)));
  }
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void store(float* p, V v, Mask m) { _mm256_maskstore_ps(p, m, v); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V keep(V v, Mask m) { return _mm256_and_ps(v, _mm256_castsi256_ps(m)); }
  static V load_or_neg_inf(const float* p, Mask m) {
    return _mm256_blendv_ps(_mm256_set1_ps(-__builtin_inff()), _mm256_maskload_ps(p, m),
                            _mm256_castsi256_ps(m));
  }
  static float sum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float max_all(V v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }

  // exp(x) lane by lane (Cephes' expf): ~1 ulp for normal results; x > 88.72 gives inf, results
  // below FLT_MIN are flushed to 0, NaN propagates.
  static V exp(V x) {
    const V hi = _mm256_set1_ps(88.7228317f), lo = _mm256_set1_ps(-87.3365479f);
    const V xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);  // NaN → lo (fixed below)
    const V n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    V r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    V p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    const V y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    // 2^n built in the exponent field; n ∈ [-126, 128] after the clamp: split
    // 2^n = 2^(n/2)·2^(n−n/2).
    const __m256i ni = _mm256_cvtps_epi32(n);
    const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    const V s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    const V s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    V out = _mm256_mul_ps(_mm256_mul_ps(y, s1), s2);
    out = _mm256_blendv_ps(out, _mm256_set1_ps(__builtin_inff()), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
    out = _mm256_blendv_ps(out, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
    return _mm256_blendv_ps(out, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));  // NaN in, NaN out
  }

  // W stored weights as float32, as in the AVX-512 Vec; AVX2 has no masked narrow loads, so a
  // partial vector goes through a zeroed buffer.
  static V widen(const float* p) { return load(p); }
  static V widen(const Bf16* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
  }
  static V widen(const float* p, int n) { return n >= W ? widen(p) : load(p, mask(n)); }
  template <typename E>
  static V widen(const E* p, int n) {
    if (n >= W) return widen(p);
    alignas(32) E buf[W] = {};
    std::memcpy(buf, p, sizeof(E) * n);
    return widen(buf);
  }
  static void widen_pair(const Bf16* p, V& even, V& odd) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    odd = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(int(0xFFFF0000u))));
  }
  static void widen_pair(const Bf16* p, int n, V& even, V& odd) {
    if (n >= W) return widen_pair(p, even, odd);
    alignas(32) Bf16 buf[2 * W] = {};
    std::memcpy(buf, p, 2 * sizeof(Bf16) * n);
    widen_pair(buf, even, odd);
  }

  static void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
  static void prefetch_far(const void* p) {
    _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1);
  }

  // --- integer dot products of the quantized formats, as in the AVX-512 Vec -------------------
  using I = __m256i;
  // Without VNNI, pairs of products are summed in 16 bits (vpmaddubsw saturates): 255·64·2 fits,
  // 255·128·2 does not, so activations are 7-bit digits.
  static constexpr int kPlaneBits = 7;
  static I izero() { return _mm256_setzero_si256(); }
  static I iset1(int32_t x) { return _mm256_set1_epi32(x); }
  static I iload(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
  static I iadd(I a, I b) { return _mm256_add_epi32(a, b); }
  template <int kBits>
  static I ishl(I a) {
    return _mm256_slli_epi32(a, kBits);
  }
  static I dot_bytes(I acc, I u, I s) {
    return _mm256_add_epi32(acc,
                            _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
  }
  static I low_nibbles(I v) { return _mm256_and_si256(v, _mm256_set1_epi8(0x0F)); }
  static I high_nibbles(I v) {
    return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0F));
  }
  static V to_float(I v) { return _mm256_cvtepi32_ps(v); }
  static V abs(V v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }
  static I to_int(V v) { return _mm256_cvtps_epi32(v); }
  static I isub(I a, I b) { return _mm256_sub_epi32(a, b); }
  static I iand(I a, I b) { return _mm256_and_si256(a, b); }
  static I ior(I a, I b) { return _mm256_or_si256(a, b); }
  template <int kBits>
  static I isra(I a) {
    return _mm256_srai_epi32(a, kBits);
  }
  static int32_t isum(I v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
  }
  static I abs_bits(V v) { return _mm256_castps_si256(abs(v)); }
  static I imax(I a, I b) { return _mm256_max_epi32(a, b); }
  static int32_t imax_all(I v) {
    __m128i m = _mm_max_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0x4E));
    m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0xB1));
    return _mm_cvtsi128_si32(m);
  }
  static void store_bytes(int8_t* p, I v) {
    const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(v, v), _mm256_setzero_si256());
    const __m128i lo = _mm256_castsi256_si128(b), hi = _mm256_extracti128_si256(b, 1);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_unpacklo_epi32(lo, hi));
  }
  static V load_half(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
};

#endif

}  // namespace simd
}  // namespace GPT2GEN_ISA_NS
}  // namespace gpt2gen
