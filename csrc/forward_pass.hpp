// One forward pass with its bookkeeping: the chunks' caches advance, and the logits of the rows
// asked for are gathered. The math itself is the backend's transformer() and lm_head()
// (csrc/forward.cpp).
#pragma once

#include "model.hpp"

namespace gpt2gen {

// Runs the chunks through the model together, advances each chunk's cache by its n positions,
// and writes logits[i] for the i-th of rows (ascending indices into the chunks' concatenated
// positions). ws must hold every chunk's rows; its final hidden states are overwritten.
template <typename T>
void forward_pass(const Weights<T>& weights, const Chunk<T>* chunks, int n_chunks, Workspace<T>& ws,
                  const int* rows, int n_rows, T* logits);

}  // namespace gpt2gen
