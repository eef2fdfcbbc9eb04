// Continuous batching: one thread owns the decode loop of a model. Requests arrive at any time
// and join the running batch between steps; each step runs one forward pass over every running
// sequence's next position plus chunks of newcomers' prompts (up to a token budget), so a long
// prompt never stalls the others for a whole prefill. Finished or cancelled sequences leave at
// once and free their KV cache.
//
// A request's tokens do not depend on what else runs: every kernel computes a row the same way
// alone or in a batch, attention is per row, a prompt gives the same cache in one chunk or many,
// and each sequence has its own sampler (options, seed, penalties).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "generation.hpp"
#include "model.hpp"
#include "request.hpp"
#include "sampling.hpp"
#include "thread_governor.hpp"

namespace gpt2gen {

struct SchedulerLimits {
  int max_batch = 16;     // sequences running at once
  int max_queue = 256;    // requests waiting for a slot, for submissions that are bounded
  int step_tokens = 256;  // positions one forward pass may process (decode rows + prompt chunks)
  size_t kv_bytes = 0;    // KV-cache memory the running sequences may hold; 0: all there is

  void validate() const;  // std::invalid_argument naming the limit
};

// A bounded submission found the queue full.
class QueueFull : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Sequences whose state (KV cache, sampler) is allocated, in every scheduler of the process.
long live_sequences();

template <typename T>
class Scheduler {
 public:
  Scheduler(const Weights<T>& weights, const SchedulerLimits& limits);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Refuses (std::length_error, saying how much) prompts of these lengths that could not fit in
  // memory: together, the prompts are one batch that must fit at once; otherwise each alone must.
  // options: one per prompt, or one for all.
  void check_memory(const std::vector<size_t>& prompt_lengths,
                    const std::vector<GenerationOptions>& options, bool together) const;

  // Queues one request per prompt after validating its options (one per prompt, or one for all)
  // and checking memory as above; nothing is queued if any is refused. bounded: refuse
  // (QueueFull) past max_queue waiting requests.
  std::vector<std::shared_ptr<Request>> submit(const std::vector<std::vector<int32_t>>& prompts,
                                               const std::vector<GenerationOptions>& options,
                                               bool bounded, bool together);

  // Cancels every request, queued or running, and stops the thread. Idempotent.
  void shutdown();

  // False in a forked child, whose copy of this scheduler has no thread and whose locks and
  // condition variables may be held or waited on by threads that do not exist there: such a
  // copy must be leaked, never destroyed.
  bool owned_by_this_process() const;

  int running() const { return running_count_.load(); }
  int waiting() const { return waiting_count_.load(); }
  const SchedulerLimits& limits() const { return limits_; }
  int n_vocab() const { return weights_.n_vocab; }
  // Readable (one byte per step that produced something) for event loops; never blocks writes.
  int notify_fd() const { return notify_pipe_[0]; }

 private:
  struct Sequence;
  struct Queued {
    std::shared_ptr<Request> request;
    std::vector<int32_t> prompt;
    GenerationOptions options;
    size_t bytes;  // its KV cache and sampler state
  };
  // What reaches the scheduler's thread; shared with the requests, which poke it to stop.
  struct Inbox {
    std::mutex mutex;
    std::condition_variable cv;
    std::deque<Queued> queue;
    bool stopping = false;
    bool poked = false;
    void poke();
  };

  void loop();
  void admit(std::vector<Queued>& admitted);
  void step();
  void choose(Sequence& s, const T* logits);
  void retire_finished();
  size_t request_bytes(size_t prompt_length, const GenerationOptions& options) const;
  void signal_event_loop();

  Weights<T> weights_;
  SchedulerLimits limits_;
  size_t kv_budget_;
  size_t kv_used_ = 0;  // by running sequences; the scheduler's thread only
  std::shared_ptr<Inbox> inbox_;
  std::vector<std::unique_ptr<Sequence>> running_;  // admission order; the scheduler's thread only
  std::atomic<int> running_count_{0}, waiting_count_{0};
  int notify_pipe_[2] = {-1, -1};
  pid_t owner_pid_;
  std::thread thread_;

  ThreadGovernor governor_{ThreadGovernor::last_choice()};  // the scheduler's thread only

  // Step scratch, grown on demand and reused.
  std::unique_ptr<Workspace<T>> workspace_;
  int workspace_rows_ = 0, workspace_capacity_ = 0;
  std::vector<T> logits_;
  std::vector<Chunk<T>> chunks_;
  struct LogitRow {
    Sequence* sequence;
    int position;  // in the sequence's context
  };
  std::vector<LogitRow> logit_rows_;
  std::vector<int> row_indices_;
};

}  // namespace gpt2gen
