// This instruction set's kernel table (backend.hpp), which the engine calls through.
#include "kernels.hpp"

namespace gpt2gen {
namespace GPT2GEN_ISA_NS {

namespace {

// In the order of Kernels' members: a missing one is a -Wextra warning, a misplaced one a type
// error.
template <typename T>
Kernels<T> kernel_table() {
  return {
      embedding<T>,       layer_norm<T>,       gelu<T>,        softmax<T>, linear<T>, unembed<T>,
      kv_cache_append<T>, causal_attention<T>, transformer<T>, lm_head<T>};
}

}  // namespace

const Backend& get_backend() {
  static const Backend table{GPT2GEN_STRINGIFY(GPT2GEN_ISA), kernel_table<float>(),
                             kernel_table<double>()};
  return table;
}

}  // namespace GPT2GEN_ISA_NS
}  // namespace gpt2gen
