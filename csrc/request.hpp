// A request's side of the hand-off between the scheduler's thread, which appends what the
// request produced after every step, and its consumer (any thread), which takes it at its own
// pace. Everything here is thread-safe.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

#include "generation.hpp"
#include "sampling.hpp"

namespace gpt2gen {

// A token with its log-probability and the most likely alternatives (best first).
struct ScoredToken {
  TokenLogprob token;
  std::vector<TokenLogprob> top;
};

class Request {
 public:
  // wake_scheduler is called (from the consumer's thread) when the consumer asks to stop.
  explicit Request(std::function<void()> wake_scheduler);
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;

  struct Update {
    std::vector<int32_t> tokens;
    std::vector<ScoredToken> logprobs;         // one per token, when the request asked for logprobs
    FinishReason finish = FinishReason::none;  // set with the last update
  };

  // --- the consumer ---
  Update take();              // what is new since the last take()
  bool wait(double seconds);  // true once take() has something new (or the request finished)
  // true once the request finished: a consumer that reads the tokens only at the end sleeps
  // through the steps (waking a Python thread costs ~130 µs of CPU a token on 2 cores).
  bool wait_finished(double seconds);
  void stop(FinishReason reason);  // cancelled, or stopped by the consumer (a stop string)
  bool finished() const;
  // The prompt's tokens after the first, scored (when asked for); complete once the first new
  // token or the finish has been published.
  std::vector<ScoredToken> prompt_logprobs() const;

  // --- the scheduler's thread ---
  FinishReason stop_requested() const { return stop_.load(); }
  void publish_token(int32_t token, const ScoredToken* scored);
  void publish_prompt_logprobs(std::vector<ScoredToken> scored);
  void publish_finish(FinishReason reason);  // the last thing a request gets
  void notify();                             // wakes the consumer after a step's publishing

 private:
  mutable std::mutex mutex_;
  std::condition_variable cv_;           // a step published, or the finish
  std::condition_variable finished_cv_;  // the finish only
  std::vector<int32_t> tokens_;
  std::vector<ScoredToken> logprobs_;
  std::vector<ScoredToken> prompt_logprobs_;
  size_t taken_ = 0;
  bool finish_taken_ = false;
  FinishReason finish_ = FinishReason::none;
  std::atomic<FinishReason> stop_{FinishReason::none};
  std::function<void()> wake_scheduler_;
};

}  // namespace gpt2gen
