// This instruction set's kernel table (backend.hpp), which the engine calls through.
#include "kernels.hpp"

namespace gpt2gen {
namespace GPT2GEN_ISA_NS {

namespace {

template <typename T>
Kernels<T> kernel_table() {
  Kernels<T> k;
  k.embedding = embedding<T>;
  k.layer_norm = layer_norm<T>;
  k.gelu = gelu<T>;
  k.softmax = softmax<T>;
  k.linear = linear<T>;
  k.unembed = unembed<T>;
  k.kv_cache_append = kv_cache_append<T>;
  k.causal_attention = causal_attention<T>;
  k.transformer = transformer<T>;
  k.lm_head = lm_head<T>;
  return k;
}

}  // namespace

const Backend& get_backend() {
  static const Backend table{GPT2GEN_STRINGIFY(GPT2GEN_ISA), kernel_table<float>(),
                             kernel_table<double>()};
  return table;
}

}  // namespace GPT2GEN_ISA_NS
}  // namespace gpt2gen
