// One sequence, every position at once: its logits (forward) or the log-probability of each of
// its tokens (score). The pass runs in chunks of positions over a KV cache, which gives the same
// values as one pass and a point between chunks where a long call can be interrupted.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model.hpp"

namespace gpt2gen {

constexpr int kWholeSequenceChunk = 128;

// logits[n, n_vocab] of every position of ids. between_chunks, if set, runs after each chunk
// and may throw to abandon the pass.
template <typename T>
void forward_all(const Weights<T>& weights, const std::vector<int32_t>& ids, T* logits,
                 const std::function<void()>& between_chunks = nullptr);

// log p(ids[i + 1] | ids[..i]) for every i.
template <typename T>
std::vector<double> score(const Weights<T>& weights, const std::vector<int32_t>& ids,
                          const std::function<void()>& between_chunks = nullptr);

}  // namespace gpt2gen
