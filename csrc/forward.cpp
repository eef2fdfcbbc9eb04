// The GPT-2 forward pass, written as the math (pre-LN blocks, as GPT-2; the exercise's prose is
// post-LN). The twin of python/gpt2gen/reference.py's mha / ffn / transformer_block / gpt2, with
// a KV cache: only the n new positions are computed, attending to all cached ones.
#include <algorithm>

#include "kernels.hpp"

namespace gpt2gen {
namespace GPT2GEN_ISA_NS {

namespace {

// out = c_proj(causal_self_attention(c_attn(x))); each segment attends over its own cache.
template <typename T>
void mha(const T* x, int rows, const BlockWeights<T>& block, int layer, const Segment<T>* segments,
         int n_segments, Workspace<T>& ws, T* out) {
  const int n_embd = block.c_attn.d_in;
  linear(x, rows, block.c_attn, ws.qkv.data());
  for (int s = 0, row = 0; s < n_segments; row += segments[s++].n) {
    KVCache<T>& cache = *segments[s].cache;
    attention(ws.qkv.data() + size_t(row) * 3 * n_embd, segments[s].n, n_embd, cache.n_head,
              cache.length, cache.keys(layer), cache.values(layer), cache.capacity,
              ws.scores.data(), ws.att.data() + size_t(row) * n_embd);
  }
  linear(ws.att.data(), rows, block.attn_proj, out);
}

// out = c_proj(gelu(c_fc(x)))
template <typename T>
void ffn(const T* x, int rows, const BlockWeights<T>& block, Workspace<T>& ws, T* out) {
  linear(x, rows, block.c_fc, ws.mlp.data());
  gelu(ws.mlp.data(), int64_t(rows) * block.c_fc.d_out);
  linear(ws.mlp.data(), rows, block.mlp_proj, out);
}

// x = x + mha(ln_1(x)); x = x + ffn(ln_2(x))
template <typename T>
void transformer_block(T* x, int rows, const BlockWeights<T>& block, int layer,
                       const Segment<T>* segments, int n_segments, Workspace<T>& ws) {
  const int n_embd = block.c_attn.d_in;
  T* h = ws.h.data();
  T* delta = ws.h2.data();
  layer_norm(x, rows, n_embd, block.ln_1, h);
  mha(h, rows, block, layer, segments, n_segments, ws, delta);
  residual_add(x, delta, int64_t(rows) * n_embd);
  layer_norm(x, rows, n_embd, block.ln_2, h);
  ffn(h, rows, block, ws, delta);
  residual_add(x, delta, int64_t(rows) * n_embd);
}

}  // namespace

template <typename T>
void forward(const Weights<T>& w, const Segment<T>* segments, int n_segments, Workspace<T>& ws,
             bool all_rows, T* logits) {
  const size_t d = w.n_embd;
  T* x = ws.x.data();
  int rows = 0;
  for (int s = 0; s < n_segments; rows += segments[s++].n)
    embedding(w.wte, w.wte_packed, w.wpe, w.n_embd, segments[s].ids, segments[s].n, segments[s].cache->length,
              x + rows * d);
  for (int layer = 0; layer < w.n_layer(); ++layer)
    transformer_block(x, rows, w.blocks[layer], layer, segments, n_segments, ws);
  for (int s = 0; s < n_segments; ++s) segments[s].cache->length += segments[s].n;

  if (!all_rows) {  // generation needs only each segment's last row: gather them in front
    int row = 0;
    for (int s = 0; s < n_segments; ++s) {
      row += segments[s].n;
      if (row - 1 != s) std::copy(x + (row - 1) * d, x + row * d, x + s * d);
    }
    rows = n_segments;
  }
  layer_norm(x, rows, w.n_embd, w.ln_f, ws.h.data());
  unembed(ws.h.data(), rows, w.wte, w.wte_packed, w.n_vocab, w.n_embd, logits);
}

template void forward<float>(const Weights<float>&, const Segment<float>*, int, Workspace<float>&,
                             bool, float*);
template void forward<double>(const Weights<double>&, const Segment<double>*, int,
                              Workspace<double>&, bool, double*);

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
