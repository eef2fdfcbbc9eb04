#include "generation.hpp"

#include <algorithm>
#include <stdexcept>

namespace gpt2gen {

const char* to_string(FinishReason reason) {
  switch (reason) {
    case FinishReason::none: return "none";
    case FinishReason::length: return "length";
    case FinishReason::eos: return "eos";
    case FinishReason::stopped: return "stop";
    case FinishReason::cancelled: return "cancelled";
    case FinishReason::out_of_memory: return "out_of_memory";
  }
  return "none";
}

void GenerationOptions::validate(int n_vocab, int n_ctx, size_t prompt_length,
                                 const std::string& which) const {
  auto fail = [](const std::string& message) { throw std::invalid_argument(message); };
  sampling.validate(n_vocab);
  if (max_new_tokens < 0)
    fail("max_new_tokens must be >= 0, got " + std::to_string(max_new_tokens));
  for (int32_t eos : eos_token_ids)
    if (eos < 0 || eos >= n_vocab)
      fail("eos_token_id " + std::to_string(eos) +
           " is not a token id: the vocabulary has ids 0.." + std::to_string(n_vocab - 1));
  if (top_logprobs && (*top_logprobs < 0 || *top_logprobs > 1000))
    fail("logprobs (alternatives per token) must be in [0, 1000], got " +
         std::to_string(*top_logprobs));
  if (prompt_logprobs && (*prompt_logprobs < 0 || *prompt_logprobs > 1000))
    fail("prompt_logprobs (alternatives per token) must be in [0, 1000], got " +
         std::to_string(*prompt_logprobs));
  if (prompt_length == 0)
    fail(which +
         " is empty: the model needs at least one prompt token (GPT-2 models "
         "conventionally start from <|endoftext|>)");
  const size_t positions = prompt_length + size_t(max_new_tokens);
  if (!slide_context && positions > size_t(n_ctx))
    fail(which + " has " + std::to_string(prompt_length) + " tokens and " +
         std::to_string(max_new_tokens) + " more are asked for: " + std::to_string(positions) +
         " positions exceed n_ctx = " + std::to_string(n_ctx) +
         " (a sliding window can be asked for explicitly)");
  if (prompt_logprobs && prompt_length > size_t(n_ctx))
    fail("prompt_logprobs needs the whole prompt in the context: " + which + " has " +
         std::to_string(prompt_length) + " tokens, n_ctx = " + std::to_string(n_ctx));
}

int GenerationOptions::cache_capacity(int n_ctx, size_t prompt_length) const {
  if (slide_context) return n_ctx;
  return static_cast<int>(std::min<size_t>(n_ctx, prompt_length + size_t(max_new_tokens)));
}

std::vector<int32_t> visible_context(const std::vector<int32_t>& prompt, int n_ctx, bool slide) {
  if (slide && prompt.size() > size_t(n_ctx)) return {prompt.end() - n_ctx, prompt.end()};
  return prompt;
}

}  // namespace gpt2gen
