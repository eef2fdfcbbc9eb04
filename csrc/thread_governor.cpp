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
constexpr int64_t kFirstProbe = 2;   // steps at the start before the first probe
constexpr int64_t kMinInterval = 4;  // steps between probes after a change of count...
constexpr int64_t kMaxInterval = 64;  // ...doubling up to this while probes lose (~1% of quiet speed)
constexpr double kMargin = 0.9;   // a probe must take < 90% of the current count's recent median
constexpr double kSlower = 1.3;   // steps 1.3x slower than the best since the change: probe now
constexpr int64_t kFreshSteps = 8;  // a size's recent steps older than this are not compared with

}  // namespace

bool adaptive_threads() { return adaptive.load(); }
void set_adaptive_threads(bool on) { adaptive.store(on); }

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

void ThreadGovernor::start_over(int threads) {
  current_ = threads;
  recent_ = {};
  interval_ = kMinInterval;
  next_probe_ = step_ + interval_;
}

int ThreadGovernor::neighbour() const {
  const int n = current_ + direction_;
  if (n >= 1 && n <= allowed_) return n;
  return std::clamp(current_ - direction_, 1, allowed_);
}

int ThreadGovernor::choose(int rows, int allowed) {
  allowed = std::max(1, allowed);
  if (allowed != allowed_) {
    allowed_ = allowed;
    start_over(allowed);
    next_probe_ = step_ + kFirstProbe;
  }
  const Recent& r = recent_[size_class(rows)];
  const bool comparable = r.count >= 2 && step_ - r.last_step <= kFreshSteps;
  if (step_ >= next_probe_ && comparable) return neighbour();
  return current_;
}

void ThreadGovernor::record(int rows, int threads, double seconds) {
  const double t = seconds / (rows + kRowsPerPass);
  Recent& r = recent_[size_class(rows)];
  if (threads != current_) {  // a probe
    if (r.count > 0 && t < kMargin * r.median()) {
      direction_ = threads < current_ ? -1 : 1;  // keep going that way next
      start_over(threads);
    } else {
      direction_ = -direction_;
      interval_ = std::min(2 * interval_, kMaxInterval);
      next_probe_ = step_ + interval_;
    }
  } else {
    r.times[r.next] = t;
    r.next = (r.next + 1) % 3;
    r.count = std::min(r.count + 1, 3);
    r.last_step = step_;
    if (r.count == 3) {
      const double m = r.median();
      if (r.best == 0 || m < r.best) r.best = m;
      if (m > kSlower * r.best) {  // slower than it was: probe now (once per slowdown)
        r.best = m;
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
  governor_->record(rows_, threads_, took.count());
}

}  // namespace gpt2gen
