#include "whole_sequence.hpp"

#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "backend.hpp"
#include "forward_pass.hpp"
#include "thread_governor.hpp"
#include "token_scores.hpp"

namespace gpt2gen {

namespace {

// The calling thread's governor for a model's chunks, so that its successive calls learn from one
// another; a few models per thread at most (a model freed and another allocated at its address
// only inherits a thread count, which the governor revises). Shared: a call keeps its governor
// even if a nested call (a signal handler's) pushed it out.
std::shared_ptr<ThreadGovernor> governor_for(const void* model) {
  thread_local std::vector<std::pair<const void*, std::shared_ptr<ThreadGovernor>>> governors;
  for (auto& [key, governor] : governors)
    if (key == model) return governor;
  if (governors.size() == 8) governors.erase(governors.begin());
  return governors
      .emplace_back(model, std::make_shared<ThreadGovernor>(ThreadGovernor::last_choice()))
      .second;
}

// Runs ids through the model chunk by chunk; consume(first, n, logits) sees each chunk's rows.
template <typename T, typename Consume>
void in_chunks(const Weights<T>& weights, const std::vector<int32_t>& ids, T* logits_buffer,
               bool advance_buffer, const std::function<void()>& between_chunks,
               Consume&& consume) {
  const ThreadPoolReleaser caller_thread;  // see release_thread_pool
  const int n = static_cast<int>(ids.size());
  const int chunk_rows = std::min(n, kWholeSequenceChunk);
  KVCache<T> cache(weights, n);
  Workspace<T> workspace(weights, chunk_rows, n);
  std::vector<int> rows(chunk_rows);
  const std::shared_ptr<ThreadGovernor> governor = governor_for(&weights);
  for (int i = 0; i < chunk_rows; ++i) rows[i] = i;
  for (int first = 0; first < n; first += chunk_rows) {
    const int count = std::min(chunk_rows, n - first);
    Chunk<T> chunk{&cache, ids.data() + first, count};
    T* logits = logits_buffer + (advance_buffer ? size_t(first) * weights.n_vocab : 0);
    {
      ThreadGovernor::Step timed(*governor, count);
      forward_pass(weights, &chunk, 1, workspace, rows.data(), count, logits);
    }
    consume(first, count, logits);
    if (between_chunks && first + count < n) between_chunks();
  }
}

}  // namespace

template <typename T>
void forward_all(const Weights<T>& weights, const std::vector<int32_t>& ids, T* logits,
                 const std::function<void()>& between_chunks) {
  in_chunks(weights, ids, logits, true, between_chunks, [](int, int, const T*) {});
}

template <typename T>
std::vector<double> score(const Weights<T>& weights, const std::vector<int32_t>& ids,
                          const std::function<void()>& between_chunks) {
  std::vector<double> out;
  if (ids.size() < 2) return out;
  std::vector<T> logits(size_t(std::min<size_t>(ids.size(), kWholeSequenceChunk)) *
                        weights.n_vocab);
  in_chunks(weights, ids, logits.data(), false, between_chunks,
            [&](int first, int count, const T* chunk_logits) {
              for (int r = 0; r < count && size_t(first + r) + 1 < ids.size(); ++r)
                out.push_back(score_token(chunk_logits + size_t(r) * weights.n_vocab,
                                          weights.n_vocab, ids[first + r + 1], 0)
                                  .token.logprob);
            });
  return out;
}

template void forward_all<float>(const Weights<float>&, const std::vector<int32_t>&, float*,
                                 const std::function<void()>&);
template void forward_all<double>(const Weights<double>&, const std::vector<int32_t>&, double*,
                                  const std::function<void()>&);
template std::vector<double> score<float>(const Weights<float>&, const std::vector<int32_t>&,
                                          const std::function<void()>&);
template std::vector<double> score<double>(const Weights<double>&, const std::vector<int32_t>&,
                                           const std::function<void()>&);

}  // namespace gpt2gen
