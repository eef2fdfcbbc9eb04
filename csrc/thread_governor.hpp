// The thread count of a loop's steps, chosen from their measured times.
//
// On a busy machine a thread of the OpenMP team loses its core for whole scheduler time slices,
// and every barrier of a step waits for it: with one CPU-bound process beside it, a 2-thread
// decode step on 2 cores took 3-4x its quiet time, while one thread (which keeps a core to
// itself) took its quiet time. Barriers that sleep instead of spinning halve the loss but slow
// the quiet machine (measured, benchmarks/bench_busy.py). So each loop (a scheduler, a caller of
// forward/score) times its steps and runs them at the thread count that is fastest now: it
// occasionally runs one step at a neighbouring count (a probe) and keeps that count if the step
// was clearly faster than the recent steps of the same size at the current one, and it probes at
// once when its steps become clearly slower than they were. Results do not depend on the thread
// count, so this changes speed only. A probe that wins moves only if it also beats the next step
// at the current count (if not, it is repeated once a few steps later): a shared VM's noise (a
// neighbour's burst slowing a few steps) made a quiet machine move to one thread for a probe
// interval in 3 of 10 64-token calls, each then ~15% slower.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>

namespace gpt2gen {

// On unless GPT2GEN_ADAPTIVE_THREADS=0 (read once) or set_adaptive_threads(false). Off, every
// step uses the thread count that set_num_threads chose.
bool adaptive_threads();
void set_adaptive_threads(bool on);

class ThreadGovernor {
 public:
  // first_guess (if > 0): the count to start from, for example last_choice().
  explicit ThreadGovernor(int first_guess = 0) : first_guess_(first_guess) {}

  // The count the process's governors moved to last (0 before any did): the machine's load is
  // shared, so a new loop starts from it rather than from every thread.
  static int last_choice();

  // The thread count for a step of `rows` positions: in [1, allowed] (the user's setting is the
  // most the governor may use). A new `allowed` starts over from it.
  int choose(int rows, int allowed);
  // The step chosen by the last choose() ran `threads` threads for `seconds`.
  void record(int rows, int threads, double seconds);
  int current() const { return current_; }

  // Times one step of the calling thread and limits its parallel regions to the governor's
  // choice for that step (nothing when adaptation is off). A step left by an exception is not
  // recorded.
  class Step {
   public:
    Step(ThreadGovernor& governor, int rows);
    ~Step();
    Step(const Step&) = delete;
    Step& operator=(const Step&) = delete;

   private:
    ThreadGovernor* governor_;  // null: adaptation off or a single thread allowed
    int rows_, threads_, exceptions_;
    std::chrono::steady_clock::time_point start_;
  };

 private:
  // Steps are compared only with steps of about the same size: rows in [2^k, 2^(k+1)).
  static constexpr int kSizes = 16;
  // Recent steps of one size at the current thread count (time per unit of work).
  struct Recent {
    std::array<double, 3> times{};
    int count = 0, next = 0;
    int64_t last_step = -1;
    double best = 0;  // the lowest median of 3 since the current count was chosen
    double median() const;
  };
  // The count a probe moved away from, until the new count's steps confirm the move.
  struct Left {
    int threads = 0, size = 0;
    double time = 0;  // its steps of that size: the lower of their median and the last step
  };
  // A probe that beat the recent steps, until a step of its size at the current count is timed.
  struct Winner {
    int threads = 0, size = 0;
    double time = 0;
    int64_t step = 0;
    bool rechecked = false;  // the probe repeated one whose win the next step did not confirm
  };

  static int size_class(int rows);
  void move_to(int threads, int64_t interval);
  // A probe took `loss` more per unit of work than the current count's steps (< 0: it won, but
  // not by the margin): probe less often.
  void probe_lost(double loss);
  // A probe's win was not confirmed by the next step at the current count (or no such step came):
  // repeat the probe soon if it was not a repeat already, else count it as lost.
  void win_unconfirmed(bool rechecked, double loss);
  int probe_target() const;

  int first_guess_;
  int allowed_ = 0, current_ = 0;
  int probe_kind_ = 0;  // of the next probe: 0 one fewer thread, 1 one more, 2 half
  int64_t step_ = 0, next_probe_ = 0, interval_ = 0;
  std::array<Recent, kSizes> recent_{};
  Left left_;
  Winner winner_;
  bool recheck_ = false;  // the next probe repeats one whose win was not confirmed
};

}  // namespace gpt2gen
