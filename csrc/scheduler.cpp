#include "scheduler.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>

#include "backend.hpp"
#include "forward_pass.hpp"
#include "memory.hpp"
#include "token_scores.hpp"

namespace gpt2gen {

namespace {

std::atomic<long> live_sequence_count{0};

constexpr std::chrono::milliseconds kReleaseWorkersAfter{100};  // idle time (loop)

}  // namespace

long live_sequences() { return live_sequence_count.load(); }

void SchedulerLimits::validate() const {
  auto fail = [](const std::string& message) { throw std::invalid_argument(message); };
  if (max_batch < 1) fail("max_batch must be >= 1, got " + std::to_string(max_batch));
  if (max_queue < 0) fail("max_queue must be >= 0, got " + std::to_string(max_queue));
  if (step_tokens < 1) fail("step_tokens must be >= 1, got " + std::to_string(step_tokens));
}

// One running request: its context, sampler and KV cache.
template <typename T>
struct Scheduler<T>::Sequence {
  std::shared_ptr<Request> request;
  GenerationOptions options;
  std::vector<int32_t> tokens;  // the model's context: prompt, then output (after any slides)
  size_t prompt_length;
  size_t bytes;
  Sampler sampler;
  KVCache<T> cache;
  int generated = 0;
  bool prefilled = false;  // the prompt's first pass is complete (prompt log-probabilities done)
  std::vector<ScoredToken> prompt_scores;
  FinishReason finish = FinishReason::none;

  Sequence(const Weights<T>& w, Queued& q)
      : request(std::move(q.request)),
        options(std::move(q.options)),
        tokens(visible_context(q.prompt, w.n_ctx, options.slide_context)),
        prompt_length(tokens.size()),
        bytes(q.bytes),
        sampler(options.sampling, w.n_vocab, q.prompt),
        cache(w, options.cache_capacity(w.n_ctx, tokens.size())) {
    ++live_sequence_count;
  }
  ~Sequence() { --live_sequence_count; }

  int pending() const { return static_cast<int>(tokens.size()) - cache.length; }
};

template <typename T>
void Scheduler<T>::Inbox::poke() {
  {
    std::lock_guard<std::mutex> lock(mutex);
    poked = true;
  }
  cv.notify_one();
}

template <typename T>
Scheduler<T>::Scheduler(const Weights<T>& weights, const SchedulerLimits& limits)
    : weights_(weights), limits_(limits), inbox_(std::make_shared<Inbox>()), owner_pid_(getpid()) {
  limits_.validate();
  kv_budget_ = limits_.kv_bytes > 0 ? limits_.kv_bytes : memory_budget().bytes;
  if (pipe(notify_pipe_) != 0) throw std::runtime_error("gpt2gen: cannot create a pipe");
  for (int fd : notify_pipe_) {
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
  }
  thread_ = std::thread([this] { loop(); });
}

template <typename T>
bool Scheduler<T>::owned_by_this_process() const {
  return getpid() == owner_pid_;
}

template <typename T>
Scheduler<T>::~Scheduler() {
  shutdown();
  if (getpid() != owner_pid_) return;  // a forked child: the descriptors are the parent's too
  for (int fd : notify_pipe_) close(fd);
}

template <typename T>
void Scheduler<T>::shutdown() {
  if (!thread_.joinable()) return;
  if (getpid() != owner_pid_) {
    // A forked child has no scheduler thread, and the parent's thread may have held the
    // inbox's lock at the fork: touch nothing, and let the handle go without joining.
    new std::thread(std::move(thread_));
    return;
  }
  {
    std::lock_guard<std::mutex> lock(inbox_->mutex);
    inbox_->stopping = true;
  }
  inbox_->cv.notify_one();
  thread_.join();
}

template <typename T>
size_t Scheduler<T>::request_bytes(size_t prompt_length, const GenerationOptions& options) const {
  const size_t context = std::min<size_t>(prompt_length, size_t(weights_.n_ctx));
  return KVCache<T>::bytes(weights_, options.cache_capacity(weights_.n_ctx, context)) +
         size_t(weights_.n_vocab) * 32;  // the sampler's per-token state
}

template <typename T>
void Scheduler<T>::check_memory(const std::vector<size_t>& prompt_lengths,
                                const std::vector<GenerationOptions>& options,
                                bool together) const {
  if (options.size() != 1 && options.size() != prompt_lengths.size())
    throw std::invalid_argument("give one set of options, or one per prompt");
  const MemoryBudget budget = limits_.kv_bytes > 0
                                  ? MemoryBudget{limits_.kv_bytes, "the KV-cache budget of"}
                                  : memory_budget();
  size_t total = 0, max_rows = prompt_lengths.size();
  int max_capacity = 0;
  for (size_t i = 0; i < prompt_lengths.size(); ++i) {
    const GenerationOptions& o = options[options.size() == 1 ? 0 : i];
    const size_t bytes = request_bytes(prompt_lengths[i], o);
    if (!together) refuse_if_over(bytes, budget);
    total += bytes;
    const size_t context = std::min<size_t>(prompt_lengths[i], size_t(weights_.n_ctx));
    max_rows = std::max(max_rows, std::min<size_t>(context, size_t(limits_.step_tokens)));
    max_capacity = std::max(max_capacity, o.cache_capacity(weights_.n_ctx, context));
  }
  // The batch's caches at once, the activations of its widest pass and their logits.
  if (together)
    refuse_if_over(total + Workspace<T>::bytes(weights_, int(max_rows), max_capacity) +
                       sizeof(T) * size_t(weights_.n_vocab) * max_rows,
                   budget);
}

template <typename T>
std::vector<std::shared_ptr<Request>> Scheduler<T>::submit(
    const std::vector<std::vector<int32_t>>& prompts, const std::vector<GenerationOptions>& options,
    bool bounded, bool together) {
  std::vector<size_t> lengths;
  for (const auto& p : prompts) lengths.push_back(p.size());
  check_memory(lengths, options, together);
  auto options_of = [&](size_t i) -> const GenerationOptions& {
    return options[options.size() == 1 ? 0 : i];
  };
  std::vector<size_t> bytes(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::string which = prompts.size() > 1 ? "prompt " + std::to_string(i) : "the prompt";
    options_of(i).validate(weights_.n_vocab, weights_.n_ctx, prompts[i].size(), which);
    bytes[i] = request_bytes(prompts[i].size(), options_of(i));
  }

  std::vector<std::shared_ptr<Request>> requests;
  std::weak_ptr<Inbox> inbox = inbox_;
  for (size_t i = 0; i < prompts.size(); ++i)
    requests.push_back(std::make_shared<Request>([inbox] {
      if (auto alive = inbox.lock()) alive->poke();
    }));
  {
    std::lock_guard<std::mutex> lock(inbox_->mutex);
    if (inbox_->stopping) throw std::runtime_error("this engine has been shut down");
    if (bounded && inbox_->queue.size() + prompts.size() > size_t(limits_.max_queue))
      throw QueueFull("the queue is full (" + std::to_string(inbox_->queue.size()) +
                      " requests waiting, max_queue = " + std::to_string(limits_.max_queue) +
                      "); retry later");
    for (size_t i = 0; i < prompts.size(); ++i)
      inbox_->queue.push_back({requests[i], prompts[i], options_of(i), bytes[i]});
    waiting_count_ = static_cast<int>(inbox_->queue.size());
  }
  inbox_->cv.notify_one();
  return requests;
}

template <typename T>
void Scheduler<T>::admit(std::vector<Queued>& admitted) {
  auto& queue = inbox_->queue;
  for (auto it = queue.begin(); it != queue.end();) {  // stopped while waiting: leave now
    const FinishReason stop = it->request->stop_requested();
    if (stop == FinishReason::none) {
      ++it;
      continue;
    }
    it->request->publish_finish(stop);
    it = queue.erase(it);
  }
  // First come, first served: the head waits for memory rather than being overtaken.
  while (!queue.empty() && running_.size() + admitted.size() < size_t(limits_.max_batch) &&
         kv_used_ + queue.front().bytes <= kv_budget_) {
    kv_used_ += queue.front().bytes;
    admitted.push_back(std::move(queue.front()));
    queue.pop_front();
  }
  waiting_count_ = static_cast<int>(queue.size());
}

template <typename T>
void Scheduler<T>::loop() {
  std::vector<Queued> admitted;
  for (;;) {
    admitted.clear();
    {
      std::unique_lock<std::mutex> lock(inbox_->mutex);
      auto has_work = [this] {
        return inbox_->stopping || inbox_->poked || !inbox_->queue.empty() || !running_.empty();
      };
      // Idle for a while: free the OpenMP workers (backend.hpp). Not at once: a request arriving
      // soon after the last reuses them (a new worker's start would land in a ThreadGovernor's
      // probe step and could mislead it).
      if (!inbox_->cv.wait_for(lock, kReleaseWorkersAfter, has_work)) {
        lock.unlock();
        release_thread_pool();
        lock.lock();
        inbox_->cv.wait(lock, has_work);
      }
      if (inbox_->stopping) break;
      inbox_->poked = false;
      admit(admitted);
    }
    for (Queued& q : admitted) {
      const std::shared_ptr<Request> request = q.request;
      try {
        if (q.options.max_new_tokens == 0 && !q.options.prompt_logprobs) {
          kv_used_ -= q.bytes;  // nothing to compute
          request->publish_finish(FinishReason::length);
          continue;
        }
        running_.push_back(std::make_unique<Sequence>(weights_, q));  // allocates, unlocked
      } catch (const std::bad_alloc&) {
        kv_used_ -= q.bytes;
        request->publish_finish(FinishReason::out_of_memory);
      }
    }
    try {
      for (auto& s : running_) {
        const FinishReason stop = s->request->stop_requested();
        if (stop != FinishReason::none && s->finish == FinishReason::none) s->finish = stop;
      }
      retire_finished();
      if (!running_.empty()) step();
      retire_finished();
    } catch (const std::bad_alloc&) {
      // Out of memory for a step's scratch: the running requests end rather than the process.
      for (auto& s : running_) s->finish = FinishReason::out_of_memory;
      retire_finished();
    }
    running_count_ = static_cast<int>(running_.size());
    signal_event_loop();
  }
  // Shutdown: everything still in flight is cancelled, and its consumer woken.
  std::deque<Queued> queued;
  {
    std::lock_guard<std::mutex> lock(inbox_->mutex);
    queued.swap(inbox_->queue);
    waiting_count_ = 0;
  }
  for (Queued& q : queued) q.request->publish_finish(FinishReason::cancelled);
  for (auto& s : running_) s->finish = FinishReason::cancelled;
  retire_finished();
  running_count_ = 0;
  signal_event_loop();
}

template <typename T>
void Scheduler<T>::retire_finished() {
  auto finished = [](const std::unique_ptr<Sequence>& s) {
    return s->finish != FinishReason::none;
  };
  auto first = std::stable_partition(running_.begin(), running_.end(),
                                     [&](const auto& s) { return !finished(s); });
  std::vector<std::pair<std::shared_ptr<Request>, FinishReason>> ended;
  for (auto it = first; it != running_.end(); ++it) {
    kv_used_ -= (*it)->bytes;
    ended.emplace_back((*it)->request, (*it)->finish);
  }
  running_.erase(first, running_.end());  // the memory is free before the consumers hear of it
  for (auto& [request, reason] : ended) request->publish_finish(reason);
}

template <typename T>
void Scheduler<T>::step() {
  const int n_vocab = weights_.n_vocab;
  // A window that is full slides: the newest half is kept and its cache recomputed, as a prompt.
  for (auto& s : running_)
    if (s->cache.length == s->cache.capacity) {
      const size_t keep = std::max(1, weights_.n_ctx / 2);
      s->tokens.erase(s->tokens.begin(), s->tokens.end() - keep);
      s->cache.length = 0;
    }

  // Every sequence with one position to go gets it; prompts share the rest of the budget in
  // admission order.
  int decode_rows = 0;
  for (auto& s : running_) decode_rows += s->pending() == 1;
  int budget = std::max(1, limits_.step_tokens - decode_rows);
  chunks_.clear();
  logit_rows_.clear();
  row_indices_.clear();
  int rows = 0, max_capacity = 0;
  for (auto& sp : running_) {
    Sequence& s = *sp;
    const int pending = s.pending(), start = s.cache.length;
    int n = 1;
    if (pending > 1) {
      if (budget == 0) continue;
      n = std::min(pending, budget);
      budget -= n;
    }
    chunks_.push_back({&s.cache, s.tokens.data() + start, n});
    const bool completes = n == pending;
    const bool scores_prompt = !s.prefilled && s.options.prompt_logprobs.has_value();
    for (int k = scores_prompt ? 0 : n - 1; k < n && (scores_prompt || completes); ++k) {
      row_indices_.push_back(rows + k);
      logit_rows_.push_back({&s, start + k});
    }
    rows += n;
    max_capacity = std::max(max_capacity, s.cache.capacity);
  }

  if (rows > workspace_rows_ || max_capacity > workspace_capacity_) {
    workspace_rows_ = std::max(rows, workspace_rows_);
    workspace_capacity_ = std::max(max_capacity, workspace_capacity_);
    workspace_.reset();  // free the old one first
    workspace_ = std::make_unique<Workspace<T>>(weights_, workspace_rows_, workspace_capacity_);
  }
  const size_t logit_count = logit_rows_.size() * size_t(n_vocab);
  if (logits_.size() < logit_count) logits_.resize(logit_count);
  {
    ThreadGovernor::Step timed(governor_, rows);
    forward_pass(weights_, chunks_.data(), static_cast<int>(chunks_.size()), *workspace_,
                 row_indices_.data(), static_cast<int>(row_indices_.size()), logits_.data());
  }

  for (size_t j = 0; j < logit_rows_.size(); ++j) {
    Sequence& s = *logit_rows_[j].sequence;
    const int position = logit_rows_[j].position;
    const T* row = logits_.data() + j * n_vocab;
    if (!s.prefilled && s.options.prompt_logprobs && size_t(position) + 1 < s.prompt_length)
      s.prompt_scores.push_back(
          score_token(row, n_vocab, s.tokens[position + 1], *s.options.prompt_logprobs));
    if (size_t(position) + 1 != s.tokens.size()) continue;
    if (!s.prefilled) {
      s.prefilled = true;
      if (s.options.prompt_logprobs) s.request->publish_prompt_logprobs(std::move(s.prompt_scores));
    }
    if (s.generated < s.options.max_new_tokens)
      choose(s, row);
    else
      s.finish = FinishReason::length;
  }
  for (auto& s : running_) s->request->notify();
}

template <typename T>
void Scheduler<T>::choose(Sequence& s, const T* logits) {
  ScoredToken scored;
  const int32_t token =
      s.sampler.choose(logits, s.options.top_logprobs.value_or(-1), &scored.token, &scored.top);
  s.tokens.push_back(token);
  ++s.generated;
  s.request->publish_token(token, s.options.top_logprobs ? &scored : nullptr);
  const auto& eos = s.options.eos_token_ids;
  if (std::find(eos.begin(), eos.end(), token) != eos.end())
    s.finish = FinishReason::eos;
  else if (s.generated >= s.options.max_new_tokens)
    s.finish = FinishReason::length;
}

template <typename T>
void Scheduler<T>::signal_event_loop() {
  const char byte = 1;
  // A full pipe already has the reader's attention.
  [[maybe_unused]] const ssize_t written = write(notify_pipe_[1], &byte, 1);
}

template class Scheduler<float>;
template class Scheduler<double>;

}  // namespace gpt2gen
