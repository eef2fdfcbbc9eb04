// The _core module: the model over the caller's arrays, its scheduler and the requests it
// serves, and the process-wide knobs (instruction set, threads). Long C++ work runs without the
// GIL, and the long calls made from Python's thread notice Ctrl-C between steps.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "backend.hpp"
#include "common.hpp"
#include "generation.hpp"
#include "params.hpp"
#include "scheduler.hpp"
#include "thread_governor.hpp"
#include "whole_sequence.hpp"

namespace gpt2gen::bindings {

namespace {

constexpr int kMaxThreads = 1024;  // beyond any machine; OpenMP fails on absurd team sizes

// Checks a whole-sequence input (forward, score): token ids that fit the context.
template <typename T>
std::vector<int32_t> whole_sequence_ids(const Weights<T>& w, py::handle inputs) {
  std::vector<int32_t> ids = token_ids(inputs, w.n_vocab, "inputs");
  GenerationOptions nothing_new;
  nothing_new.max_new_tokens = 0;
  nothing_new.validate(w.n_vocab, w.n_ctx, ids.size(), "inputs");
  return ids;
}

py::array model_forward(const Model& model, py::handle inputs) {
  return model.visit([&](const auto& w) -> py::array {
    using T = typename std::decay_t<decltype(w)>::value_type;
    const std::vector<int32_t> ids = whole_sequence_ids(w, inputs);
    py::array_t<T> logits({py::ssize_t(ids.size()), py::ssize_t(w.n_vocab)});
    T* out = logits.mutable_data();
    py::gil_scoped_release release;
    forward_all<T>(w, ids, out, check_signals);
    return logits;
  });
}

py::array model_score(const Model& model, py::handle inputs) {
  return model.visit([&](const auto& w) -> py::array {
    const std::vector<int32_t> ids = whole_sequence_ids(w, inputs);
    std::vector<double> logprobs;
    {
      py::gil_scoped_release release;
      logprobs = gpt2gen::score(w, ids, check_signals);
    }
    return py::array(py::ssize_t(logprobs.size()), logprobs.data());
  });
}

py::object finish_or_none(FinishReason reason) {
  if (reason == FinishReason::none) return py::none();
  return py::str(to_string(reason));
}

py::list scored_list(const std::vector<ScoredToken>& scored) {
  py::list out;
  for (const ScoredToken& s : scored) {
    py::list top;
    for (const TokenLogprob& t : s.top) top.append(py::make_tuple(t.token, t.logprob));
    out.append(py::make_tuple(s.token.token, s.token.logprob, top));
  }
  return out;
}

// A request as Python sees it: a handle on the scheduler's hand-off.
struct RequestHandle {
  std::shared_ptr<Request> request;

  // (new token ids, their [(token, logprob, [(id, logprob), ...])] or None, finish or None)
  py::tuple take() {
    Request::Update update;
    {
      py::gil_scoped_release release;
      update = request->take();
    }
    py::object logprobs = py::none();
    if (!update.logprobs.empty()) logprobs = scored_list(update.logprobs);
    return py::make_tuple(py::cast(update.tokens), logprobs, finish_or_none(update.finish));
  }
  bool wait(double seconds, bool until_finished) {
    py::gil_scoped_release release;
    return until_finished ? request->wait_finished(seconds) : request->wait(seconds);
  }
};

// The scheduler of one model, whatever its dtype; keeps the model (and its arrays) alive.
class SchedulerHandle {
 public:
  SchedulerHandle(py::object model_obj, const SchedulerLimits& limits) : model_(model_obj) {
    model_obj.cast<const Model&>().visit([&](const auto& w) {
      using T = typename std::decay_t<decltype(w)>::value_type;
      scheduler_ = std::make_unique<Scheduler<T>>(w, limits);
    });
  }
  ~SchedulerHandle() {
    const bool forked_copy =
        std::visit([](const auto& s) { return s && !s->owned_by_this_process(); }, scheduler_);
    if (forked_copy) {  // see Scheduler::owned_by_this_process
      std::visit([](auto& s) { s.release(); }, scheduler_);
      return;
    }
    py::gil_scoped_release release;
    scheduler_ = {};
  }

  // One request per prompt; options: one per prompt, or one for all (then seeds, if given,
  // gives each prompt its own seed). A batch too big for memory is refused before its prompts
  // are converted.
  std::vector<RequestHandle> submit(const py::list& prompts, std::vector<GenerationOptions> options,
                                    const std::vector<uint64_t>& seeds, bool bounded, bool together,
                                    const std::string& what) {
    if (!seeds.empty()) {
      if (options.size() != 1 || seeds.size() != prompts.size())
        throw py::value_error("seeds needs one set of options and one seed per prompt");
      const GenerationOptions shared = options[0];
      options.assign(seeds.size(), shared);
      for (size_t i = 0; i < seeds.size(); ++i) options[i].sampling.seed = seeds[i];
    }
    return std::visit(
        [&](auto& s) {
          std::vector<size_t> lengths;
          for (py::handle p : prompts)
            lengths.push_back(py::hasattr(p, "__len__") ? py::len(p) : 0);
          s->check_memory(lengths, options, together);
          const int n_vocab = s->n_vocab();
          std::vector<std::vector<int32_t>> ids;
          for (size_t i = 0; i < prompts.size(); ++i)
            ids.push_back(
                token_ids(prompts[i], n_vocab,
                          prompts.size() > 1 ? what + "[" + std::to_string(i) + "]" : what));
          std::vector<std::shared_ptr<Request>> requests;
          {
            py::gil_scoped_release release;
            requests = s->submit(ids, options, bounded, together);
          }
          std::vector<RequestHandle> out;
          for (auto& r : requests) out.push_back({r});
          return out;
        },
        scheduler_);
  }
  void shutdown() {
    py::gil_scoped_release release;
    std::visit([](auto& s) { s->shutdown(); }, scheduler_);
  }
  template <typename F>
  auto with(F&& f) const {
    return std::visit([&](const auto& s) { return f(*s); }, scheduler_);
  }

 private:
  py::object model_;
  std::variant<std::unique_ptr<Scheduler<float>>, std::unique_ptr<Scheduler<double>>> scheduler_;
};

void bind_options(py::module_& m) {
  py::class_<GenerationOptions>(m, "GenerationOptions",
                                "Every option of one sequence's generation (ranges are checked "
                                "when it is submitted).")
      .def(py::init<>())
      .def_readwrite("max_new_tokens", &GenerationOptions::max_new_tokens)
      .def_property(
          "temperature", [](const GenerationOptions& o) { return o.sampling.temperature; },
          [](GenerationOptions& o, double v) { o.sampling.temperature = v; })
      .def_property(
          "top_k", [](const GenerationOptions& o) { return o.sampling.top_k; },
          [](GenerationOptions& o, int v) { o.sampling.top_k = v; })
      .def_property(
          "top_p", [](const GenerationOptions& o) { return o.sampling.top_p; },
          [](GenerationOptions& o, double v) { o.sampling.top_p = v; })
      .def_property(
          "min_p", [](const GenerationOptions& o) { return o.sampling.min_p; },
          [](GenerationOptions& o, double v) { o.sampling.min_p = v; })
      .def_property(
          "repetition_penalty",
          [](const GenerationOptions& o) { return o.sampling.repetition_penalty; },
          [](GenerationOptions& o, double v) { o.sampling.repetition_penalty = v; })
      .def_property(
          "presence_penalty",
          [](const GenerationOptions& o) { return o.sampling.presence_penalty; },
          [](GenerationOptions& o, double v) { o.sampling.presence_penalty = v; })
      .def_property(
          "frequency_penalty",
          [](const GenerationOptions& o) { return o.sampling.frequency_penalty; },
          [](GenerationOptions& o, double v) { o.sampling.frequency_penalty = v; })
      .def_property(
          "logit_bias", [](const GenerationOptions& o) { return o.sampling.logit_bias; },
          [](GenerationOptions& o, std::vector<std::pair<int32_t, double>> v) {
            o.sampling.logit_bias = std::move(v);
          })
      .def_property(
          "seed", [](const GenerationOptions& o) { return o.sampling.seed; },
          [](GenerationOptions& o, uint64_t v) { o.sampling.seed = v; })
      .def_readwrite("eos_token_ids", &GenerationOptions::eos_token_ids)
      .def_readwrite("top_logprobs", &GenerationOptions::top_logprobs)
      .def_readwrite("prompt_logprobs", &GenerationOptions::prompt_logprobs)
      .def_readwrite("slide_context", &GenerationOptions::slide_context)
      .def("validate", &GenerationOptions::validate, py::arg("n_vocab"), py::arg("n_ctx"),
           py::arg("prompt_length"), py::arg("which") = "the prompt");
}

}  // namespace

}  // namespace gpt2gen::bindings

using namespace gpt2gen;
using namespace gpt2gen::bindings;

PYBIND11_MODULE(_core, m) {
  m.doc() = "gpt2gen's C++ engine";
  static py::exception<QueueFull> queue_full(m, "QueueFullError", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const QueueFull& e) { py::set_error(queue_full, e.what()); }
  });

  // Only 0 turns adaptation off (thread_governor.cpp); anything but 0 or 1 is a mistake to name.
  if (const char* env = std::getenv("GPT2GEN_ADAPTIVE_THREADS");
      env && *env && std::string(env) != "0" && std::string(env) != "1")
    throw py::value_error("GPT2GEN_ADAPTIVE_THREADS must be 0 or 1, got '" + std::string(env) +
                          "'");

  bind_options(m);

  py::class_<Model>(m, "Model",
                    "GPT-2 over the caller's parameter arrays (picoGPT layout), read in place.")
      .def(py::init<py::object, py::object, py::object>(), py::arg("params"), py::arg("n_head"),
           py::arg("kv_cache_dtype") = "float32",
           "kv_cache_dtype: 'float32' (the parameters' dtype) or 'bf16' (float32 models: keys "
           "and values stored rounded to bf16, half the cache's memory)")
      .def("forward", &model_forward, py::arg("inputs"),
           "Logits [len(inputs), n_vocab] of every position.")
      .def("score", &model_score, py::arg("inputs"),
           "log p(inputs[i + 1] | inputs[:i + 1]) for every i.")
      .def("addresses", &Model::addresses,
           "The address of every parameter array the engine reads, by key path.")
      .def_property_readonly("dtype", &Model::dtype)
      .def_property_readonly("kv_cache_dtype", &Model::kv_cache_dtype)
      .def_property_readonly(
          "n_vocab",
          [](const Model& m) { return m.visit([](const auto& w) { return w.n_vocab; }); })
      .def_property_readonly(
          "n_ctx", [](const Model& m) { return m.visit([](const auto& w) { return w.n_ctx; }); })
      .def_property_readonly(
          "n_embd", [](const Model& m) { return m.visit([](const auto& w) { return w.n_embd; }); })
      .def_property_readonly(
          "n_head", [](const Model& m) { return m.visit([](const auto& w) { return w.n_head; }); })
      .def_property_readonly("n_layer", [](const Model& m) {
        return m.visit([](const auto& w) { return w.n_layer(); });
      });

  py::class_<RequestHandle>(m, "Request", "One sequence's generation, produced by a Scheduler.")
      .def("take", &RequestHandle::take,
           "(new token ids, their [(token, logprob, [(id, logprob), ...])] or None, the finish "
           "reason or None) since the last take().")
      .def("wait", &RequestHandle::wait, py::arg("timeout"), py::arg("until_finished") = false,
           "Waits (without the GIL) until take() has something new (until_finished: until the "
           "request finished); False on timeout.")
      .def("cancel", [](RequestHandle& r) { r.request->stop(FinishReason::cancelled); })
      .def(
          "stop", [](RequestHandle& r) { r.request->stop(FinishReason::stopped); },
          "Ends the generation as stopped (a stop string matched).")
      .def_property_readonly("finished",
                             [](const RequestHandle& r) { return r.request->finished(); })
      .def("prompt_logprobs",
           [](const RequestHandle& r) { return scored_list(r.request->prompt_logprobs()); });

  py::class_<SchedulerHandle>(m, "Scheduler",
                              "Continuous batching: a thread that owns the model's decode loop.")
      .def(py::init([](py::object model, int max_batch, int max_queue, int step_tokens,
                       size_t kv_bytes) {
             if (!py::isinstance<Model>(model)) throw py::type_error("model must be a _core.Model");
             SchedulerLimits limits{max_batch, max_queue, step_tokens, kv_bytes};
             limits.validate();
             return std::make_unique<SchedulerHandle>(model, limits);
           }),
           py::arg("model"), py::arg("max_batch") = 16, py::arg("max_queue") = 256,
           py::arg("step_tokens") = 256, py::arg("kv_bytes") = 0)
      .def("submit", &SchedulerHandle::submit, py::arg("prompts"), py::arg("options"),
           py::arg("seeds") = std::vector<uint64_t>{}, py::arg("bounded") = false,
           py::arg("together") = false, py::arg("what") = "prompt")
      .def("shutdown", &SchedulerHandle::shutdown)
      .def_property_readonly("running",
                             [](const SchedulerHandle& s) {
                               return s.with([](const auto& x) { return x.running(); });
                             })
      .def_property_readonly("waiting",
                             [](const SchedulerHandle& s) {
                               return s.with([](const auto& x) { return x.waiting(); });
                             })
      .def_property_readonly("max_batch",
                             [](const SchedulerHandle& s) {
                               return s.with([](const auto& x) { return x.limits().max_batch; });
                             })
      .def_property_readonly("max_queue",
                             [](const SchedulerHandle& s) {
                               return s.with([](const auto& x) { return x.limits().max_queue; });
                             })
      .def_property_readonly("notify_fd", [](const SchedulerHandle& s) {
        return s.with([](const auto& x) { return x.notify_fd(); });
      });

  m.def(
      "check_scheduler_limits",
      [](int max_batch, int max_queue, int step_tokens, size_t kv_bytes) {
        SchedulerLimits{max_batch, max_queue, step_tokens, kv_bytes}.validate();
      },
      py::arg("max_batch"), py::arg("max_queue"), py::arg("step_tokens"), py::arg("kv_bytes"));
  m.def(
      "check_kv_cache_dtype",
      [](py::handle kv_cache_dtype) { kv_format(kv_cache_dtype, "float32"); },
      py::arg("kv_cache_dtype"), "Refuses a kv_cache_dtype that no model takes.");
  m.def("live_sequences", &live_sequences,
        "Sequences whose state (KV cache, sampler) is currently allocated, in every scheduler.");
  m.def(
      "backend", []() { return std::string(backend().name); },
      "The instruction set whose kernels are in use.");
  m.def("supported_backends", &supported_backends);
  m.def("set_backend", [](const std::string& name) {
    try {
      set_backend(name);
    } catch (const std::invalid_argument& e) { throw py::value_error(e.what()); }
  });
  m.def("num_threads", &num_threads);
  m.def(
      "set_num_threads",
      [](int n) {
        if (n < 0 || n > kMaxThreads)
          throw py::value_error("set_num_threads takes 1.." + std::to_string(kMaxThreads) +
                                " (0 restores the default), got " + std::to_string(n));
        set_num_threads(n);
      },
      py::arg("n"), "Threads for every parallel region; 0 restores the default (the cores).");
  m.def("adaptive_threads", &adaptive_threads,
        "Whether each decode loop picks its thread count (at most num_threads()) from its step "
        "times.");
  m.def(
      "set_adaptive_threads", &set_adaptive_threads, py::arg("on"),
      "Turns the adaptive thread count on or off (GPT2GEN_ADAPTIVE_THREADS=0 starts with it off).");
}
