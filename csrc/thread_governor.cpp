#include "thread_governor.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <exception>

#include "backend.hpp"

namespace gpt2gen {

namespace {

std::atomic<bool> adaptive{[] {
  const char* env = std::getenv("GPT2GEN_ADAPTIVE_THREADS");
  return !(env && std::strcmp(env, "0") == 0);
}()};

// A step's time is divided by rows + kRowsPerPass: a row's compute costs about 1/12 of a pass
// over the weights (124M shape, float32: a 1-row step ~7.7 ms, 256 rows ~175 ms), so steps of
// the same size class compare fairly.
constexpr double kRowsPerPass = 12;
constexpr int64_t kFirstProbe = 2;  // steps at the start before the first probe
// Steps between probes: kMinInterval after a move, then 2x, 4x... up to kMaxInterval while probes
// lose (after the first probe: 2x at once), and longer after a probe that lost badly, so that
// losing probes cost at most kProbeBudget of the time (a 2-thread probe beside a busy process
// can take several 1-thread steps' time); a competitor's leaving is noticed within that many
// steps. At the most threads allowed, losing probes back off from kMaxInterval to
// kLongestInterval: there a competitor's arrival slows the steps, which probes at once
// (kSlower), and a quiet machine's 1-thread probe costs half a step (a 64-token call: one probe).
constexpr int64_t kMinInterval = 16;
constexpr int64_t kMaxInterval = 64;
constexpr double kProbeBudget = 0.02;
constexpr int64_t kLongestInterval = 256;
constexpr double kMargin = 0.9;     // a probe must take < 90% of the current count's recent median
constexpr double kSlower = 1.5;     // steps 1.5x slower than the best since the move: probe now
constexpr int64_t kRecheck = 4;     // steps before probing again when a win was not confirmed
constexpr int64_t kFreshSteps = 8;  // a size's recent steps older than this are not compared with

std::atomic<int> last_move{0};

}  // namespace

bool adaptive_threads() { return adaptive.load(); }
void set_adaptive_threads(bool on) { adaptive.store(on); }

int ThreadGovernor::last_choice() { return last_move.load(); }

double ThreadGovernor::Recent::median() const {
  if (count == 1) return times[0];
  if (count == 2) return (times[0] + times[1]) / 2;
  return std::max(std::min(times[0], times[1]), std::min(std::max(times[0], times[1]), times[2]));
}

int ThreadGovernor::size_class(int rows) {
  int k = 0;
  while (rows > 1 && k < kSizes - 1) {
    rows >>= 1;
    ++k;
  }
  return k;
}

void ThreadGovernor::move_to(int threads, int64_t interval) {
  current_ = threads;
  recheck_ = false;
  recent_ = {};
  interval_ = interval;
  next_probe_ = step_ + interval_;
}

// One fewer, one more, or half the threads, in turn (half crosses a plateau: with 8 threads on
// 8 cores, 4 of them busy, 5-8 threads are all about as slow).
int ThreadGovernor::probe_target() const {
  for (int k = 0; k < 3; ++k) {
    const int kind = (probe_kind_ + k) % 3;
    const int n = kind == 0 ? current_ - 1 : kind == 1 ? current_ + 1 : (current_ + 1) / 2;
    if (n >= 1 && n <= allowed_ && n != current_) return n;
  }
  return current_;
}

void ThreadGovernor::probe_lost(double loss) {
  probe_kind_ = (probe_kind_ + 1) % 3;
  if (current_ == allowed_)  // see kMaxInterval
    interval_ = std::min(std::max(2 * interval_, kMaxInterval), kLongestInterval);
  else
    interval_ = std::min(2 * std::max(interval_, kMinInterval), kMaxInterval);
  const double budget_steps = std::min(loss / kProbeBudget, double(kLongestInterval));
  interval_ = std::max(interval_, int64_t(std::max(budget_steps, 0.0)));
  next_probe_ = step_ + interval_;
}

void ThreadGovernor::win_unconfirmed(bool rechecked, double loss) {
  if (rechecked) return probe_lost(loss);
  recheck_ = true;  // the same probe again soon, once
  next_probe_ = step_ + kRecheck;
}

int ThreadGovernor::choose(int rows, int allowed) {
  allowed = std::max(1, allowed);
  if (allowed != allowed_) {  // the first step, or the user changed the setting
    const bool first = allowed_ == 0;
    allowed_ = allowed;
    const int start = first && first_guess_ > 0 ? std::min(first_guess_, allowed) : allowed;
    // Starting below the maximum (a busy machine, last time), the first probe is of one more
    // thread, and as early: a machine that has become quiet would otherwise run kMinInterval slow
    // steps (13% of a quiet 64-token call), while a still busy one pays for one losing probe
    // either way.
    move_to(start, kFirstProbe);
    probe_kind_ = start < allowed ? 1 : 0;
    left_ = {};
    winner_ = {};
  }
  if (winner_.threads && step_ - winner_.step > kFreshSteps) {  // no step came to pair with
    win_unconfirmed(winner_.rechecked, 0);
    winner_ = {};
  }
  const Recent& r = recent_[size_class(rows)];
  const bool comparable = r.count >= 2 && step_ - r.last_step <= kFreshSteps;
  if (step_ >= next_probe_ && comparable && !winner_.threads) return probe_target();
  return current_;
}

void ThreadGovernor::record(int rows, int threads, double seconds) {
  const double t = seconds / (rows + kRowsPerPass);
  const int size = size_class(rows);
  Recent& r = recent_[size];
  if (threads != current_) {  // a probe
    const bool rechecked = recheck_;
    recheck_ = false;
    if (r.count > 0 && t < kMargin * r.median())
      winner_ = {threads, size, t, step_, rechecked};
    else
      probe_lost(r.count > 0 ? t / r.median() - 1 : 0);  // the loss in steps of the current count
  } else if (winner_.threads && size == winner_.size) {  // the step after a winning probe
    const Winner winner = winner_;
    winner_ = {};
    if (winner.time < kMargin * t) {
      left_ = {current_, size, std::min(t, r.median())};
      move_to(winner.threads, kMinInterval);  // the next probe goes the same way again
      ++step_;
      return;
    }
    win_unconfirmed(winner.rechecked, winner.time / t - 1);
  }
  if (threads == current_) {
    r.times[r.next] = t;
    r.next = (r.next + 1) % 3;
    r.count = std::min(r.count + 1, 3);
    r.last_step = step_;
    if (r.count == 3) {
      const double m = r.median();
      if (left_.threads && size == left_.size) {  // the move's first 3 steps of the probe's size
        const Left left = left_;
        left_ = {};
        if (m >= left.time) {  // one lucky probe: back, and probe less often
          move_to(left.threads, kMaxInterval);
          ++step_;
          return;
        }
      }
      if (r.best == 0 || m < r.best) r.best = m;
      // Slower than it was: probe fewer threads now (once per slowdown). Not more threads: if
      // the machine got busier, they would be slower still, and such a probe costs several steps.
      if (m > kSlower * r.best && current_ > 1 && !recheck_) {
        r.best = m;
        probe_kind_ = 0;
        next_probe_ = step_ + 1;
      }
    }
  }
  ++step_;
}

ThreadGovernor::Step::Step(ThreadGovernor& governor, int rows)
    : governor_(nullptr), rows_(rows), threads_(0), exceptions_(std::uncaught_exceptions()) {
  const int allowed = threads_allowed();
  if (!adaptive_threads() || allowed <= 1) return;
  governor_ = &governor;
  threads_ = governor.choose(rows, allowed);
  set_thread_limit(threads_);
  start_ = std::chrono::steady_clock::now();
}

ThreadGovernor::Step::~Step() {
  if (!governor_) return;
  set_thread_limit(0);
  if (std::uncaught_exceptions() != exceptions_) return;
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start_;
  const int before = governor_->current();
  governor_->record(rows_, threads_, took.count());
  if (governor_->current() != before) last_move.store(governor_->current());
}

}  // namespace gpt2gen
