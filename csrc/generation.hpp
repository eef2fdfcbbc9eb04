// What one generation request asks for, and how it can end.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "sampling.hpp"

namespace gpt2gen {

// out_of_memory: the request's state could not be allocated (the consumer raises MemoryError).
enum class FinishReason : uint8_t { none, length, eos, stopped, cancelled, out_of_memory };
const char* to_string(FinishReason reason);

// Every option of one sequence's generation; each sequence of a batch has its own.
struct GenerationOptions {
  int max_new_tokens = 16;
  SamplingOptions sampling;            // with the sequence's seed
  std::vector<int32_t> eos_token_ids;  // stop at one of these (it is kept in the output)
  // Each new token's log-probability and this many alternatives.
  std::optional<int> top_logprobs;
  // The same for every prompt token after the first, from the model's raw distribution.
  std::optional<int> prompt_logprobs;
  bool slide_context = false;  // past n_ctx: keep the newest half of the window and recompute

  // Throws std::invalid_argument naming the option, or the prompt (`which`) when it does not fit.
  void validate(int n_vocab, int n_ctx, size_t prompt_length,
                const std::string& which = "the prompt") const;

  // Positions the sequence's KV cache must hold.
  int cache_capacity(int n_ctx, size_t prompt_length) const;
};

// The part of a prompt the model sees: all of it, or with a sliding window its last n_ctx tokens.
std::vector<int32_t> visible_context(const std::vector<int32_t>& prompt, int n_ctx, bool slide);

}  // namespace gpt2gen
