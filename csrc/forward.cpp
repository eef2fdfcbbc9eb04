// The GPT-2 forward pass, written as the math (pre-LN blocks, as GPT-2; the exercise's prose is
// post-LN). The twin of python/gpt2gen/reference.py's mha / ffn / transformer_block / gpt2, with
// a KV cache: only the n new positions are computed, attending to all cached ones.
#include "kernels.hpp"

namespace gpt2gen {
namespace GPT2GEN_ISA_NS {

namespace {

// out = c_proj(causal_self_attention(c_attn(x)))
template <typename T>
void mha(const T* x, int n, const BlockWeights<T>& block, int n_head, T* keys, T* values,
         int capacity, int pos0, Workspace<T>& ws, T* out) {
  const int n_embd = block.c_attn.d_in;
  linear(x, n, block.c_attn, ws.qkv.data());
  attention(ws.qkv.data(), n, n_embd, n_head, pos0, keys, values, capacity, ws.scores.data(),
            ws.att.data());
  linear(ws.att.data(), n, block.attn_proj, out);
}

// out = c_proj(gelu(c_fc(x)))
template <typename T>
void ffn(const T* x, int n, const BlockWeights<T>& block, Workspace<T>& ws, T* out) {
  linear(x, n, block.c_fc, ws.mlp.data());
  gelu(ws.mlp.data(), int64_t(n) * block.c_fc.d_out);
  linear(ws.mlp.data(), n, block.mlp_proj, out);
}

// x = x + mha(ln_1(x)); x = x + ffn(ln_2(x))
template <typename T>
void transformer_block(T* x, int n, const BlockWeights<T>& block, int layer, KVCache<T>& cache,
                       Workspace<T>& ws) {
  const int n_embd = block.c_attn.d_in;
  T* h = ws.h.data();
  T* delta = ws.h2.data();
  layer_norm(x, n, n_embd, block.ln_1, h);
  mha(h, n, block, cache.n_head, cache.keys(layer), cache.values(layer), cache.capacity,
      cache.length, ws, delta);
  residual_add(x, delta, int64_t(n) * n_embd);
  layer_norm(x, n, n_embd, block.ln_2, h);
  ffn(h, n, block, ws, delta);
  residual_add(x, delta, int64_t(n) * n_embd);
}

}  // namespace

template <typename T>
void forward(const Weights<T>& w, KVCache<T>& cache, Workspace<T>& ws, const int32_t* ids, int n,
             bool all_rows, T* logits) {
  T* x = ws.x.data();
  embedding(w.wte, w.wpe, w.n_embd, ids, n, cache.length, x);
  for (int layer = 0; layer < w.n_layer(); ++layer)
    transformer_block(x, n, w.blocks[layer], layer, cache, ws);
  cache.length += n;

  const int rows = all_rows ? n : 1;  // generation needs only the last position's logits
  layer_norm(x + size_t(n - rows) * w.n_embd, rows, w.n_embd, w.ln_f, ws.h.data());
  unembed(ws.h.data(), rows, w.wte, w.n_vocab, w.n_embd, logits);
}

template void forward<float>(const Weights<float>&, KVCache<float>&, Workspace<float>&,
                             const int32_t*, int, bool, float*);
template void forward<double>(const Weights<double>&, KVCache<double>&, Workspace<double>&,
                              const int32_t*, int, bool, double*);

template <typename T>
static Kernels<T> kernel_table() {
  return {embedding<T>, layer_norm<T>, gelu<T>, softmax<T>, linear<T>,
          unembed<T>,   attention<T>,  forward<T>};
}

const Backend& get_backend() {
  static const Backend table{GPT2GEN_STRINGIFY(GPT2GEN_ISA), kernel_table<float>(),
                             kernel_table<double>()};
  return table;
}

}  // namespace GPT2GEN_ISA_NS
}  // namespace gpt2gen
