// The math of GPT-2, one function per piece, each the twin of a function in
// python/gpt2gen/reference.py. This header is included by the per-instruction-set copies of
// kernels.cpp and forward.cpp; GPT2GEN_ISA names the copy's namespace.
#pragma once

#include <cstdint>

#include "backend.hpp"
#include "model.hpp"

#ifndef GPT2GEN_ISA
#error "GPT2GEN_ISA must name the instruction set this file is compiled for"
#endif
#define GPT2GEN_CONCAT_(a, b) a##b
#define GPT2GEN_CONCAT(a, b) GPT2GEN_CONCAT_(a, b)
#define GPT2GEN_ISA_NS GPT2GEN_CONCAT(isa_, GPT2GEN_ISA)
#define GPT2GEN_STRINGIFY_(x) #x
#define GPT2GEN_STRINGIFY(x) GPT2GEN_STRINGIFY_(x)

namespace gpt2gen {
namespace GPT2GEN_ISA_NS {

// out[t] = wte[ids[t]] + wpe[pos0 + t]  (wte read from wte_packed when packed)
template <typename T>
void embedding(const T* wte, Packed wte_packed, const T* wpe, int n_embd, const int32_t* ids,
               int n, int pos0, T* out);

// Per row: g·(x − mean)/√(var + 1e-5) + b, biased variance.
template <typename T>
void layer_norm(const T* x, int n, int d, LayerNormWeights<T> ln, T* out);

// In place, tanh form: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
template <typename T>
void gelu(T* x, int64_t n);

// In place, exp(x − max x) / Σ exp(x − max x).
template <typename T>
void softmax(T* x, int n);

// out[n, d_out] = x[n, d_in]·w + b.
template <typename T>
void linear(const T* x, int n, LinearWeights<T> lin, T* out);

// Logits against the tied embedding: out[n, n_vocab] = x[n, d]·wteᵀ.
template <typename T>
void unembed(const T* x, int n, const T* wte, Packed wte_packed, int n_vocab, int d, T* out);

// Causal multi-head attention of n new positions (starting at pos0) over the cache:
// qkv[n, 3·n_embd] is c_attn's output; the new keys and values are appended to the cache
// (keys/values: [n_head][capacity][head_dim]); out[n, n_embd] = per head softmax(q·kᵀ/√d)·v.
template <typename T>
void attention(const T* qkv, int n, int n_embd, int n_head, int pos0, T* keys, T* values,
               int capacity, T* scores, T* out);

// x += y
template <typename T>
void residual_add(T* x, const T* y, int64_t n);

template <typename T>
void transformer(const Weights<T>& w, const Chunk<T>* chunks, int n_chunks, Workspace<T>& ws);

template <typename T>
void lm_head(const Weights<T>& w, const T* x, int n, Workspace<T>& ws, T* logits);

const Backend& get_backend();

}  // namespace GPT2GEN_ISA_NS
}  // namespace gpt2gen
