#include "request.hpp"

#include <chrono>

namespace gpt2gen {

Request::Request(std::function<void()> wake_scheduler)
    : wake_scheduler_(std::move(wake_scheduler)) {}

Request::Update Request::take() {
  std::lock_guard<std::mutex> lock(mutex_);
  Update update;
  update.tokens.assign(tokens_.begin() + taken_, tokens_.end());
  if (!logprobs_.empty()) update.logprobs.assign(logprobs_.begin() + taken_, logprobs_.end());
  taken_ = tokens_.size();
  if (finish_ != FinishReason::none && !finish_taken_) {
    update.finish = finish_;
    finish_taken_ = true;
  }
  return update;
}

bool Request::wait(double seconds) {
  std::unique_lock<std::mutex> lock(mutex_);
  auto ready = [this] {
    return taken_ < tokens_.size() || (finish_ != FinishReason::none && !finish_taken_);
  };
  return cv_.wait_for(lock, std::chrono::duration<double>(seconds), ready);
}

bool Request::wait_finished(double seconds) {
  std::unique_lock<std::mutex> lock(mutex_);
  return finished_cv_.wait_for(lock, std::chrono::duration<double>(seconds),
                               [this] { return finish_ != FinishReason::none; });
}

void Request::stop(FinishReason reason) {
  FinishReason expected = FinishReason::none;
  if (stop_.compare_exchange_strong(expected, reason) && wake_scheduler_) wake_scheduler_();
}

bool Request::finished() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return finish_ != FinishReason::none;
}

std::vector<ScoredToken> Request::prompt_logprobs() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return prompt_logprobs_;
}

void Request::publish_token(int32_t token, const ScoredToken* scored) {
  std::lock_guard<std::mutex> lock(mutex_);
  tokens_.push_back(token);
  if (scored) logprobs_.push_back(*scored);
}

void Request::publish_prompt_logprobs(std::vector<ScoredToken> scored) {
  std::lock_guard<std::mutex> lock(mutex_);
  prompt_logprobs_ = std::move(scored);
}

void Request::publish_finish(FinishReason reason) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (finish_ != FinishReason::none) return;
    finish_ = reason;
  }
  notify();
  finished_cv_.notify_all();
}

void Request::notify() { cv_.notify_all(); }

}  // namespace gpt2gen
