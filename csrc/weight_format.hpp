// The weight formats (model.hpp's WeightFormat), each described by one traits type, and
// with_weight_format(): the one place a run-time format becomes a compile-time one. The kernels
// are written once against the traits; what differs between formats is here and in simd.hpp's
// widening loads.
#pragma once

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
//   kFormat    its WeightFormat;
//   Storage    the type of one stored value (matrices keep GPT-2's layout, one value each);
//   widen(s)   the stored value as the activations' type, exactly;
//   kBlock     0, or the number of consecutive values along the dimension a product reduces over
//              that share one float32 scale (value = widen(s)·scale, see model.hpp's Packed).
// Packed formats hold float32 models' weights only (python/gpt2gen/packing.py).
template <typename T>
struct NativeFormat {
  static constexpr WeightFormat kFormat = WeightFormat::native;
  using Storage = T;
  static constexpr int kBlock = 0;
  static T widen(T w) { return w; }
};

struct Bf16Format {
  static constexpr WeightFormat kFormat = WeightFormat::bf16;
  using Storage = Bf16;
  static constexpr int kBlock = 0;
  static float widen(Bf16 w) {
    const uint32_t bits = uint32_t(w) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
};

struct Int8Format {
  static constexpr WeightFormat kFormat = WeightFormat::int8;
  using Storage = int8_t;
  static constexpr int kBlock = kQuantBlock;
  static float widen(int8_t q) { return float(q); }
};

// The stored values of a matrix given as a native array (null when packed) and its Packed view.
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
    default: throw std::invalid_argument("unknown weight format " + std::to_string(int(format)));
  }
  throw std::invalid_argument("packed weights belong to float32 models only");
}

}  // namespace GPT2GEN_ISA_NS
}  // namespace gpt2gen
