// The quantized formats' linear (linear_quantized.cpp), called by linear() for int8, int4 and int6.
#pragma once

#include "isa.hpp"
#include "model.hpp"
#include "weight_format.hpp"

namespace gpt2gen {
namespace GPT2GEN_ISA_NS {

// out[n, d_out] = x[n, d_in]·w + b for w in a quantized format (b may be null).
template <typename Format>
void quantized_linear(const float* x, int n, const LinearWeights<float>& lin, float* out);

}  // namespace GPT2GEN_ISA_NS
}  // namespace gpt2gen
