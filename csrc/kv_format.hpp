// The KV cache's storage formats (model.hpp's KVFormat), each described by one traits type, and
// with_kv_format(): the one place a cache's run-time format becomes a compile-time one. The
// attention kernels are written once against the traits (widening loads: simd.hpp).
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "isa.hpp"
#include "model.hpp"
#include "weight_format.hpp"  // Bf16

namespace gpt2gen {
namespace GPT2GEN_ISA_NS {

// A cache format's traits:
//   kFormat    its KVFormat;
//   Storage    the type of one stored key or value;
//   narrow(x)  a computed key or value as stored;
//   widen(s)   a stored one as the activations' type, exactly.
template <typename T>
struct NativeKV {
  static constexpr KVFormat kFormat = KVFormat::native;
  using Storage = T;
  static T narrow(T x) { return x; }
  static T widen(T s) { return s; }
};

struct Bf16KV {
  static constexpr KVFormat kFormat = KVFormat::bf16;
  using Storage = Bf16;
  // Round to nearest even, as python/gpt2gen/packing.py's float_to_bf16 (NaN stays NaN, quiet).
  static Bf16 narrow(float x) {
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return Bf16((bits >> 16) | 0x40u);
    return Bf16((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
  }
  static float widen(Bf16 s) { return Bf16Format::widen(s); }
};

// f(Format{}) with the traits of a cache of `format` for a model of dtype T. Call it before any
// parallel region (it throws).
template <typename T, typename Fn>
void with_kv_format(KVFormat format, Fn&& f) {
  switch (format) {
    case KVFormat::native: return f(NativeKV<T>{});
    case KVFormat::bf16:
      if constexpr (std::is_same_v<T, float>) return f(Bf16KV{});
      throw std::invalid_argument("a bf16 KV cache belongs to float32 models only");
  }
  throw std::invalid_argument("unknown KV cache format " + std::to_string(int(format)));
}

}  // namespace GPT2GEN_ISA_NS
}  // namespace gpt2gen
