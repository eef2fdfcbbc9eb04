// The weight formats (model.hpp's WeightFormat), each described by one traits type, and
// with_weight_format(): the one place a run-time format becomes a compile-time one. The kernels
// are written once against the traits; what differs between formats is here and in simd.hpp's
// widening loads.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "isa.hpp"
#include "model.hpp"

namespace gpt2gen {
namespace GPT2GEN_ISA_NS {

// The storage of a bf16 weight: the high half of a float32. A type of its own, so that an
// overload on the storage type (simd.hpp's widening loads) cannot take it for another 16-bit
// format.
enum class Bf16 : uint16_t {};

// A weight format's traits:
//   kFormat     its WeightFormat;
//   kQuantized  false: one stored value per element in GPT-2's layout, of type Storage, widen(s)
//               its value as the activations' type, exactly; true: the quantized layout of
//               model.hpp, read through QuantizedMatrix below.
// Packed formats hold float32 models' weights only (python/gpt2gen/packing.py).
template <typename T>
struct NativeFormat {
  static constexpr WeightFormat kFormat = WeightFormat::native;
  static constexpr bool kQuantized = false;
  using Storage = T;
  static T widen(T w) { return w; }
};

// bf16 matrices are stored in panels, rows in interleaved pairs (model.hpp): bf16_index below.
struct Bf16Format {
  static constexpr WeightFormat kFormat = WeightFormat::bf16;
  static constexpr bool kQuantized = false;
  using Storage = Bf16;
  static float widen(Bf16 w) {
    const uint32_t bits = uint32_t(w) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
};

// float16 bits → float32, exactly (the quantized formats' scales).
inline float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1Fu,
                 mantissa = h & 0x3FFu;
  uint32_t bits;
  if (exponent == 0) {  // zero or subnormal: mantissa·2^-24, exact in float32
    const float magnitude = std::ldexp(float(mantissa), -24);
    std::memcpy(&bits, &magnitude, sizeof bits);
  } else if (exponent == 31) {  // inf / NaN
    bits = 0x7F800000u | (mantissa << 13);
  } else {
    bits = ((exponent + 112) << 23) | (mantissa << 13);
  }
  bits |= sign;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// The quantized formats (model.hpp): q stored as q + kOffset in kWords words of four bytes per
// column per group of kGroup values of k (a column's words kWordStride bytes apart); q(bytes, i)
// reads the i-th value of the group whose first word starts at bytes.
constexpr int kWordStride = 4 * kPanelColumns;

// What every quantized format shares: its constants from model.hpp, and float16 block scales.
template <WeightFormat F>
struct QuantizedFormat {
  static constexpr WeightFormat kFormat = F;
  static constexpr bool kQuantized = true;
  static constexpr int kGroup = quant_group(F);
  static constexpr int kWords = quant_words(F);
  static constexpr int kOffset = quant_offset(F);
  static float scale(const void* scales, size_t i) {
    return half_to_float(static_cast<const uint16_t*>(scales)[i]);
  }
};

struct Int8Format : QuantizedFormat<WeightFormat::int8> {
  static int q(const uint8_t* bytes, int i) { return int(bytes[i]) - kOffset; }
};

struct Int4Format : QuantizedFormat<WeightFormat::int4> {
  static int q(const uint8_t* bytes, int i) { return nibble(bytes, i) - kOffset; }
  // The i-th (0-7) low four bits of a word: int4's value, int6's low bits.
  static int nibble(const uint8_t* word, int i) { return i < 4 ? word[i] & 0xF : word[i - 4] >> 4; }
};

struct Int6Format : QuantizedFormat<WeightFormat::int6> {
  static int q(const uint8_t* bytes, int i) {
    const int low = Int4Format::nibble(bytes + (i / 8) * kWordStride, i % 8);
    const int high = (bytes[2 * kWordStride + i % 4] >> (2 * (i / 4))) & 3;
    return (low | high << 4) - kOffset;
  }
};

// A quantized matrix w[d_in, d_out] (the product reduces over d_in) in model.hpp's layout.
template <typename Format>
struct QuantizedMatrix {
  static_assert(Format::kQuantized, "a quantized format");
  const uint8_t* data;
  const void* scales;
  int d_in, d_out;
  int blocks;  // of kQuantBlock rows: d_in padded
  int groups;  // of Format::kGroup rows, per panel

  QuantizedMatrix(const Packed& packed, int d_in, int d_out)
      : data(static_cast<const uint8_t*>(packed.data)),
        scales(packed.scales),
        d_in(d_in),
        d_out(d_out),
        blocks((d_in + kQuantBlock - 1) / kQuantBlock),
        groups(blocks * (kQuantBlock / Format::kGroup)) {}

  // Column j's first word of the group holding row k (its others follow kWordStride apart).
  const uint8_t* group_bytes(int k, int j) const {
    return data +
           (size_t(j / kPanelColumns) * groups + k / Format::kGroup) * Format::kWords *
               kWordStride +
           (j % kPanelColumns) * 4;
  }
  // The index of column j's scale of a block among the scales.
  size_t scale_index(int block, int j) const {
    return (size_t(j / kPanelColumns) * blocks + block) * kPanelColumns + j % kPanelColumns;
  }
  float scale(int block, int j) const { return Format::scale(scales, scale_index(block, j)); }
  // The float32 value w[k, j] stands for.
  float value(int k, int j) const {
    return float(Format::q(group_bytes(k, j), k % Format::kGroup)) * scale(k / kQuantBlock, j);
  }
};

// The index of w[k, j] among bf16's stored values of a matrix with d_in rows (model.hpp's panels).
inline size_t bf16_index(int k, int j, int d_in) {
  const size_t pair = size_t(j / kPanelColumns) * ((d_in + 1) / 2) + k / 2;  // of the panel's rows
  return (pair * kPanelColumns + j % kPanelColumns) * 2 + k % 2;
}

// The index of w[k, j] among the stored values of a linear's matrix w[d_in, d_out] in an
// unquantized format: GPT-2's layout, or bf16's panels.
template <typename Format>
size_t linear_index(int k, int j, int d_in, int d_out) {
  if constexpr (Format::kFormat == WeightFormat::bf16)
    return bf16_index(k, j, d_in);
  else
    return size_t(k) * d_out + j;
}

// The float32 value w[k, j] of a packed matrix w[d_in, d_out] stands for (model.hpp).
template <typename Format>
float packed_value(const Packed& packed, int d_in, int d_out, int k, int j) {
  if constexpr (Format::kQuantized)
    return QuantizedMatrix<Format>(packed, d_in, d_out).value(k, j);
  else
    return Format::widen(static_cast<const Bf16*>(packed.data)[bf16_index(k, j, d_in)]);
}

// The stored values of a matrix of an unquantized format given as a native array (null when
// packed) and its Packed view.
template <typename Format, typename T>
const typename Format::Storage* stored_values(const T* native, const Packed& packed) {
  if constexpr (Format::kFormat == WeightFormat::native)
    return native;
  else
    return static_cast<const typename Format::Storage*>(packed.data);
}

// f(Format{}) with the traits of `format`, for weights of a model of dtype T. Call it before
// any parallel region (it throws).
template <typename T, typename Fn>
void with_weight_format(WeightFormat format, Fn&& f) {
  constexpr bool kFloat32 = std::is_same_v<T, float>;
  switch (format) {
    case WeightFormat::native: return f(NativeFormat<T>{});
    case WeightFormat::bf16:
      if constexpr (kFloat32) return f(Bf16Format{});
      break;
    case WeightFormat::int8:
      if constexpr (kFloat32) return f(Int8Format{});
      break;
    case WeightFormat::int4:
      if constexpr (kFloat32) return f(Int4Format{});
      break;
    case WeightFormat::int6:
      if constexpr (kFloat32) return f(Int6Format{});
      break;
    default: throw std::invalid_argument("unknown weight format " + std::to_string(int(format)));
  }
  throw std::invalid_argument("packed weights belong to float32 models only");
}

}  // namespace GPT2GEN_ISA_NS
}  // namespace gpt2gen
