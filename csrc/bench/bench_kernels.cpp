// Micro-benchmarks of the kernels at GPT-2 124M shapes (float32 weights, and packed bf16 / int8 /
// int4 / int6 ones: fmt 0 / 1 / 2 / 3, GB/s counting the packed bytes and scales), called through
// the backend table the engine uses (GPT2GEN_ISA / the CPU pick the instruction set,
// OMP_NUM_THREADS or the default the thread count). Each kernel's output is first checked against a
// plain scalar loop (double accumulation); a mismatch aborts with a message before anything is
// timed.
//
//   cmake -S . -B build/bench -DGPT2GEN_BENCHMARKS=ON -Dpybind11_DIR=$(python -m pybind11 --cmakedir)
//   cmake --build build/bench -j2 && build/bench/gpt2gen_bench
//
// Counters: GB/s = bytes of weights (or of the arrays a kernel must stream) read per call,
// GFLOP/s = 2·multiply-adds per call. Matrices whose weights would fit in the 32 MiB L3 are
// replicated and visited in rotation (like the layers of the real model) so decode figures are
// memory-bound figures, not cache ones.
#include <benchmark/benchmark.h>
#include "openmp.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "backend.hpp"
#include "forward_pass.hpp"
#include "model.hpp"

using namespace gpt2gen;

namespace {

constexpr int kEmbd = 768, kHead = 12, kVocab = 50257, kCtx = 1024, kLayer = 12;
constexpr size_t kRotateBytes = size_t(256) << 20;  // rotate over ≥ 256 MiB of weight copies

const Kernels<float>& K() { return backend().kernels<float>(); }

// Deterministic uniform values in [-scale, scale).
void fill(std::vector<float>& v, uint64_t seed, float scale = 1.0f) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (float& x : v) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    x = scale * (float((s >> 40) & 0xFFFFFF) / float(1 << 23) - 1.0f);
  }
}
std::vector<float> random_vec(size_t n, uint64_t seed, float scale = 1.0f) {
  std::vector<float> v(n);
  fill(v, seed, scale);
  return v;
}

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "VALIDATION FAILED: %s\n", what.c_str());
  std::exit(1);
}

// |got − want| ≤ rtol·|want| + atol·max|want|, element by element.
void check(const char* name, const float* got, const std::vector<double>& want, double rtol = 1e-4,
           double atol = 1e-4) {
  double scale = 0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  for (size_t i = 0; i < want.size(); ++i) {
    const double err = std::abs(double(got[i]) - want[i]);
    if (!(err <= rtol * std::abs(want[i]) + atol * std::max(scale, 1e-30))) {
      char buf[256];
      std::snprintf(buf, sizeof buf, "%s: element %zu is %.9g, scalar loop says %.9g", name, i,
                    double(got[i]), want[i]);
      fail(buf);
    }
  }
}

void set_counters(benchmark::State& state, double bytes, double flops) {
  if (bytes > 0)
    state.counters["GB/s"] =
        benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  if (flops > 0)
    state.counters["GFLOP/s"] =
        benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = num_threads();
}

// --- memory read bandwidth probe -------------------------------------------------------------

// Reads 1 GiB once per call, split in contiguous halves per thread (as linear splits columns);
// integer sums of the bit patterns, which the compiler may vectorise and reorder freely.
void BM_memory_read(benchmark::State& state) {
  static std::vector<uint32_t> big(size_t(1) << 28, 1u);
  const int64_t n = int64_t(big.size());
  for (auto _ : state) {
    uint32_t total = 0;
#pragma omp parallel for reduction(+ : total) num_threads(num_threads()) schedule(static)
    for (int64_t i = 0; i < n; ++i) total += big[i];
    benchmark::DoNotOptimize(total);
  }
  set_counters(state, double(n) * 4, 0);
}

// --- embedding, layer_norm, gelu, softmax ----------------------------------------------------

void BM_embedding(benchmark::State& state) {
  const int n = int(state.range(0));
  static const std::vector<float> wte = random_vec(size_t(kVocab) * kEmbd, 2),
                                  wpe = random_vec(size_t(kCtx) * kEmbd, 3);
  std::vector<int32_t> ids(n);
  for (int i = 0; i < n; ++i) ids[i] = (i * 7919) % kVocab;
  std::vector<float> out(size_t(n) * kEmbd);
  K().embedding(wte.data(), Packed{}, wpe.data(), kEmbd, ids.data(), n, 5, out.data());
  std::vector<double> want(out.size());
  for (int t = 0; t < n; ++t)
    for (int i = 0; i < kEmbd; ++i)
      want[size_t(t) * kEmbd + i] =
          double(wte[size_t(ids[t]) * kEmbd + i] + wpe[size_t(5 + t) * kEmbd + i]);
  check("embedding", out.data(), want, 0, 0);
  for (auto _ : state) {
    K().embedding(wte.data(), Packed{}, wpe.data(), kEmbd, ids.data(), n, 5, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, 3.0 * n * kEmbd * 4, 0);
}

void BM_layer_norm(benchmark::State& state) {
  const int n = int(state.range(0)), d = kEmbd;
  std::vector<float> x = random_vec(size_t(n) * d, 4, 3.0f), g = random_vec(d, 5),
                     b = random_vec(d, 6);
  for (float& v : x) v += 1.5f;
  std::vector<float> out(x.size());
  K().layer_norm(x.data(), n, d, {g.data(), b.data()}, out.data());
  std::vector<double> want(out.size());
  for (int r = 0; r < n; ++r) {
    const float* xr = &x[size_t(r) * d];
    double mean = 0, var = 0;
    for (int i = 0; i < d; ++i) mean += xr[i];
    mean /= d;
    for (int i = 0; i < d; ++i) var += (xr[i] - mean) * (xr[i] - mean);
    var /= d;
    for (int i = 0; i < d; ++i)
      want[size_t(r) * d + i] = g[i] * (xr[i] - mean) / std::sqrt(var + 1e-5) + b[i];
  }
  check("layer_norm", out.data(), want, 1e-5, 1e-5);
  for (auto _ : state) {
    K().layer_norm(x.data(), n, d, {g.data(), b.data()}, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, 2.0 * n * d * 4, 0);
}

void BM_gelu(benchmark::State& state) {
  const int64_t n = state.range(0);
  const std::vector<float> x0 = random_vec(n, 7, 6.0f);
  std::vector<float> x = x0;
  K().gelu(x.data(), n);
  std::vector<double> want(n);
  for (int64_t i = 0; i < n; ++i) {
    const double v = x0[i];
    want[i] = 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
  }
  check("gelu", x.data(), want, 1e-5, 1e-6);
  for (auto _ : state) {
    std::copy(x0.begin(), x0.end(), x.begin());  // timed too: a copy is far cheaper than gelu
    K().gelu(x.data(), n);
    benchmark::DoNotOptimize(x.data());
  }
  set_counters(state, 2.0 * n * 4, 0);
}

void BM_softmax(benchmark::State& state) {
  const int n = int(state.range(0));
  const std::vector<float> x0 = random_vec(n, 8, 10.0f);
  std::vector<float> x = x0;
  K().softmax(x.data(), n);
  double m = x0[0], sum = 0;
  for (float v : x0) m = std::max(m, double(v));
  std::vector<double> want(n);
  for (int i = 0; i < n; ++i) sum += want[i] = std::exp(x0[i] - m);
  for (double& w : want) w /= sum;
  check("softmax", x.data(), want, 1e-5, 1e-6);
  for (auto _ : state) {
    std::copy(x0.begin(), x0.end(), x.begin());  // 4 KiB at most: negligible, counted
    K().softmax(x.data(), n);
    benchmark::DoNotOptimize(x.data());
  }
  set_counters(state, 2.0 * n * 4, 0);
}

// --- linear and unembed -----------------------------------------------------------------------

// Weight copies of one linear shape, visited in rotation.
struct LinearSet {
  int d_in, d_out;
  std::vector<std::vector<float>> w, b;
  LinearSet(int d_in, int d_out) : d_in(d_in), d_out(d_out) {
    const size_t bytes = size_t(d_in) * d_out * 4;
    const int copies = int(std::max<size_t>(1, (kRotateBytes + bytes - 1) / bytes));
    for (int c = 0; c < copies; ++c) {
      w.push_back(random_vec(size_t(d_in) * d_out, 100 + c, 0.05f));
      b.push_back(random_vec(d_out, 200 + c, 0.05f));
    }
  }
};

LinearSet& linear_set(int d_in, int d_out) {
  static std::vector<std::unique_ptr<LinearSet>> sets;
  for (auto& s : sets)
    if (s->d_in == d_in && s->d_out == d_out) return *s;
  sets.push_back(std::make_unique<LinearSet>(d_in, d_out));
  return *sets.back();
}

void BM_linear(benchmark::State& state) {
  const int n = int(state.range(0)), d_in = int(state.range(1)), d_out = int(state.range(2));
  LinearSet& set = linear_set(d_in, d_out);
  const std::vector<float> x = random_vec(size_t(n) * d_in, 9);
  std::vector<float> out(size_t(n) * d_out);
  K().linear(x.data(), n, {set.w[0].data(), set.b[0].data(), d_in, d_out}, out.data());
  std::vector<double> want(out.size());
  for (int r = 0; r < n; ++r)
    for (int j = 0; j < d_out; ++j) {
      double acc = set.b[0][j];
      for (int i = 0; i < d_in; ++i)
        acc += double(x[size_t(r) * d_in + i]) * set.w[0][size_t(i) * d_out + j];
      want[size_t(r) * d_out + j] = acc;
    }
  check("linear", out.data(), want);
  // Every row alone must equal the same row computed in the batch (bit-identical).
  if (n > 1) {
    std::vector<float> one(d_out);
    for (int r : {0, n / 2, n - 1}) {
      K().linear(x.data() + size_t(r) * d_in, 1, {set.w[0].data(), set.b[0].data(), d_in, d_out},
                 one.data());
      for (int j = 0; j < d_out; ++j)
        if (one[j] != out[size_t(r) * d_out + j])
          fail("linear: row " + std::to_string(r) + " of " + std::to_string(n) +
               " differs from the same row computed alone");
    }
  }
  size_t c = 0;
  for (auto _ : state) {
    K().linear(x.data(), n, {set.w[c].data(), set.b[c].data(), d_in, d_out}, out.data());
    benchmark::DoNotOptimize(out.data());
    if (++c == set.w.size()) c = 0;
  }
  set_counters(state, double(d_in) * d_out * 4, 2.0 * n * d_in * d_out);
  state.SetLabel(std::to_string(set.w.size()) + " weight copies");
}

void BM_unembed(benchmark::State& state) {
  const int n = int(state.range(0)), d = kEmbd;
  static const std::vector<float> wte = random_vec(size_t(kVocab) * d, 10, 0.1f);
  const std::vector<float> x = random_vec(size_t(n) * d, 11);
  std::vector<float> out(size_t(n) * kVocab);
  K().unembed(x.data(), n, wte.data(), Packed{}, kVocab, d, out.data());
  std::vector<double> want(out.size());
  for (int r = 0; r < n; ++r)
    for (int v = 0; v < kVocab; ++v) {
      double acc = 0;
      for (int i = 0; i < d; ++i) acc += double(x[size_t(r) * d + i]) * wte[size_t(v) * d + i];
      want[size_t(r) * kVocab + v] = acc;
    }
  check("unembed", out.data(), want);
  if (n > 1) {
    std::vector<float> one(kVocab);
    for (int r = 0; r < n; ++r) {
      K().unembed(x.data() + size_t(r) * d, 1, wte.data(), Packed{}, kVocab, d, one.data());
      for (int v = 0; v < kVocab; ++v)
        if (one[v] != out[size_t(r) * kVocab + v])
          fail("unembed: row " + std::to_string(r) + " differs from the same row computed alone");
    }
  }
  for (auto _ : state) {
    K().unembed(x.data(), n, wte.data(), Packed{}, kVocab, d, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, double(kVocab) * d * 4, 2.0 * n * kVocab * d);
}

// --- packed (bf16, int8, int4, int6) linear and unembed ---------------------------------------

// float32 → bf16 bits, rounding to nearest even (finite inputs), as python/gpt2gen/packing.py.
uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
float from_bf16(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// A packed [rows, cols] matrix whose product reduces over the rows (reduce_rows, a linear's
// W[in, out]) or the columns (wte[n_vocab, d]), packed as python/gpt2gen/packing.py does
// (quantized formats: model.hpp's layout); value(i, j) is what element [i, j] stands for.
struct PackedMatrix {
  WeightFormat format;
  int rows, cols;
  bool reduce_rows;
  std::vector<uint16_t> bf16;
  std::vector<uint8_t> data;
  std::vector<uint16_t> scales;  // float16
  std::vector<float> values;     // quantized: [d_in, d_out]

  PackedMatrix(const std::vector<float>& w, int rows, int cols, WeightFormat format,
               bool reduce_rows)
      : format(format), rows(rows), cols(cols), reduce_rows(reduce_rows) {
    const int d_in = reduce_rows ? rows : cols, d_out = reduce_rows ? cols : rows;
    const int panels = (d_out + kPanelColumns - 1) / kPanelColumns;
    if (format == WeightFormat::bf16) {  // panels, rows in interleaved pairs
      bf16.assign(size_t(panels) * (d_in + 1) / 2 * kPanelColumns * 2, 0);
      for (int i = 0; i < rows; ++i)
        for (int j = 0; j < cols; ++j) bf16[bf16_index(i, j)] = to_bf16(w[size_t(i) * cols + j]);
      return;
    }
    const bool int8 = format == WeightFormat::int8, int6 = format == WeightFormat::int6;
    const int blocks = (d_in + kQuantBlock - 1) / kQuantBlock, group = quant_group(format),
              words = quant_words(format), offset = quant_offset(format), q_max = offset - 1,
              q_min = int8 ? -q_max : -offset;  // int8 is symmetric
    const size_t groups = size_t(blocks) * kQuantBlock / group;
    const size_t group_bytes = size_t(words) * 4 * kPanelColumns;
    data.assign(size_t(panels) * groups * group_bytes, int8 ? 128 : int6 ? 0 : 0x88);  // q = 0
    if (int6)  // q + 32 = 0b100000: low bits 0, top bits 2 (word 2)
      for (size_t g = 0; g < size_t(panels) * groups; ++g)
        std::memset(&data[g * group_bytes + 2 * 4 * kPanelColumns], 0xAA, 4 * kPanelColumns);
    scales.assign(size_t(panels) * blocks * kPanelColumns, 0);
    values.assign(size_t(d_in) * d_out, 0.0f);
    auto at = [&](int k, int j) {
      return reduce_rows ? w[size_t(k) * cols + j] : w[size_t(j) * cols + k];
    };
    for (int j = 0; j < d_out; ++j)
      for (int b = 0; b < blocks; ++b) {
        const int k0 = b * kQuantBlock, k1 = std::min(d_in, k0 + kQuantBlock);
        float largest = 0;  // the value of largest magnitude
        for (int k = k0; k < k1; ++k)
          if (std::abs(at(k, j)) > std::abs(largest)) largest = at(k, j);
        const size_t si =
            (size_t(j / kPanelColumns) * blocks + b) * kPanelColumns + j % kPanelColumns;
        const _Float16 h =
            _Float16(int8 ? std::abs(largest) / float(q_max) : largest / float(q_min));
        std::memcpy(&scales[si], &h, 2);
        const float step = float(h);
        for (int k = k0; k < k1; ++k) {
          const float v = step != 0 ? std::nearbyint(at(k, j) / step) : 0.0f;
          const int q = int(std::max(float(q_min), std::min(float(q_max), v)));
          values[size_t(k) * d_out + j] = float(q) * step;
          const int u = q + offset, i = k % group;  // as stored
          uint8_t* word = &data[(size_t(j / kPanelColumns) * groups + k / group) * group_bytes +
                                (j % kPanelColumns) * 4 + k % 4];
          uint8_t& low = word[(i / 8) * 4 * kPanelColumns];  // int4 and int6: nibble i % 8 / 4
          if (int8)
            word[0] = uint8_t(u);
          else if (i % 8 < 4)
            low = uint8_t((low & 0xF0) | (u & 0xF));
          else
            low = uint8_t((low & 0x0F) | ((u & 0xF) << 4));
          if (int6) {
            uint8_t& top = word[2 * 4 * kPanelColumns];
            const int shift = 2 * (i / 4);
            top = uint8_t((top & ~(3 << shift)) | ((u >> 4) << shift));
          }
        }
      }
  }
  // Element [i, j] as w[k, c] reducing over k, at [c / panel][k / 2][c % panel][k % 2].
  size_t bf16_index(int i, int j) const {
    const int k = reduce_rows ? i : j, c = reduce_rows ? j : i, d_in = reduce_rows ? rows : cols;
    const size_t pair = size_t(c / kPanelColumns) * ((d_in + 1) / 2) + k / 2;
    return (pair * kPanelColumns + c % kPanelColumns) * 2 + k % 2;
  }
  Packed packed() const {
    if (format == WeightFormat::bf16) return {format, bf16.data(), nullptr};
    return {format, data.data(), scales.data()};
  }
  double value(int i, int j) const {
    if (format == WeightFormat::bf16) return from_bf16(bf16[bf16_index(i, j)]);
    return reduce_rows ? values[size_t(i) * cols + j] : values[size_t(j) * rows + i];
  }
  double bytes() const { return 2.0 * bf16.size() + double(data.size()) + 2.0 * scales.size(); }
};

const char* format_name(WeightFormat f) {
  return f == WeightFormat::bf16   ? "bf16"
         : f == WeightFormat::int8 ? "int8"
         : f == WeightFormat::int4 ? "int4"
                                   : "int6";
}

struct PackedLinearSet {
  int d_in, d_out;
  WeightFormat format;
  std::vector<std::unique_ptr<PackedMatrix>> w;
  std::vector<std::vector<float>> b;
  PackedLinearSet(int d_in, int d_out, WeightFormat format)
      : d_in(d_in), d_out(d_out), format(format) {
    const size_t bytes = size_t(d_in) * d_out * (format == WeightFormat::bf16 ? 2 : 1);  // ≥ int4
    const int copies = int(std::max<size_t>(1, (kRotateBytes + bytes - 1) / bytes));
    for (int c = 0; c < copies; ++c) {
      w.push_back(std::make_unique<PackedMatrix>(random_vec(size_t(d_in) * d_out, 100 + c, 0.05f),
                                                 d_in, d_out, format, true));
      b.push_back(random_vec(d_out, 200 + c, 0.05f));
    }
  }
  LinearWeights<float> lin(size_t c) const {
    LinearWeights<float> l{nullptr, b[c].data(), d_in, d_out};
    l.packed = w[c]->packed();
    return l;
  }
};

PackedLinearSet& packed_linear_set(int d_in, int d_out, WeightFormat format) {
  static std::vector<std::unique_ptr<PackedLinearSet>> sets;
  for (auto& s : sets)
    if (s->d_in == d_in && s->d_out == d_out && s->format == format) return *s;
  sets.push_back(std::make_unique<PackedLinearSet>(d_in, d_out, format));
  return *sets.back();
}

// range(0): 0 = bf16, 1 = int8, 2 = int4, 3 = int6.
WeightFormat format_arg(int64_t a) {
  return a == 0   ? WeightFormat::bf16
         : a == 1 ? WeightFormat::int8
         : a == 2 ? WeightFormat::int4
                  : WeightFormat::int6;
}

void BM_linear_packed(benchmark::State& state) {
  const WeightFormat format = format_arg(state.range(0));
  const int n = int(state.range(1)), d_in = int(state.range(2)), d_out = int(state.range(3));
  PackedLinearSet& set = packed_linear_set(d_in, d_out, format);
  const std::vector<float> x = random_vec(size_t(n) * d_in, 9);
  std::vector<float> out(size_t(n) * d_out);
  K().linear(x.data(), n, set.lin(0), out.data());
  std::vector<double> want(out.size());
  const PackedMatrix& m = *set.w[0];
  for (int r = 0; r < n; ++r)
    for (int j = 0; j < d_out; ++j) {
      double acc = set.b[0][j];
      for (int i = 0; i < d_in; ++i) acc += double(x[size_t(r) * d_in + i]) * m.value(i, j);
      want[size_t(r) * d_out + j] = acc;
    }
  const std::string name = std::string("linear ") + format_name(format);
  check(name.c_str(), out.data(), want);
  if (n > 1) {
    std::vector<float> one(d_out);
    for (int r : {0, n / 2, n - 1}) {
      K().linear(x.data() + size_t(r) * d_in, 1, set.lin(0), one.data());
      for (int j = 0; j < d_out; ++j)
        if (one[j] != out[size_t(r) * d_out + j])
          fail(name + ": row " + std::to_string(r) + " of " + std::to_string(n) +
               " differs from the same row computed alone");
    }
  }
  size_t c = 0;
  for (auto _ : state) {
    K().linear(x.data(), n, set.lin(c), out.data());
    benchmark::DoNotOptimize(out.data());
    if (++c == set.w.size()) c = 0;
  }
  set_counters(state, m.bytes(), 2.0 * n * d_in * d_out);
  state.SetLabel(std::string(format_name(format)) + ", " + std::to_string(set.w.size()) +
                 " weight copies");
}

void BM_unembed_packed(benchmark::State& state) {
  const WeightFormat format = format_arg(state.range(0));
  const int n = int(state.range(1)), d = kEmbd;
  static std::unique_ptr<PackedMatrix> packed[4];
  auto& wte = packed[state.range(0)];
  if (!wte)
    wte = std::make_unique<PackedMatrix>(random_vec(size_t(kVocab) * d, 10, 0.1f), kVocab, d,
                                         format, false);
  const std::vector<float> x = random_vec(size_t(n) * d, 11);
  std::vector<float> out(size_t(n) * kVocab);
  K().unembed(x.data(), n, nullptr, wte->packed(), kVocab, d, out.data());
  std::vector<double> want(out.size());
  for (int r = 0; r < n; ++r)
    for (int v = 0; v < kVocab; ++v) {
      double acc = 0;
      for (int i = 0; i < d; ++i) acc += double(x[size_t(r) * d + i]) * wte->value(v, i);
      want[size_t(r) * kVocab + v] = acc;
    }
  const std::string name = std::string("unembed ") + format_name(format);
  check(name.c_str(), out.data(), want);
  if (n > 1) {
    std::vector<float> one(kVocab);
    for (int r = 0; r < n; ++r) {
      K().unembed(x.data() + size_t(r) * d, 1, nullptr, wte->packed(), kVocab, d, one.data());
      for (int v = 0; v < kVocab; ++v)
        if (one[v] != out[size_t(r) * kVocab + v])
          fail(name + ": row " + std::to_string(r) + " differs from the same row computed alone");
    }
  }
  for (auto _ : state) {
    K().unembed(x.data(), n, nullptr, wte->packed(), kVocab, d, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, wte->bytes(), 2.0 * n * kVocab * d);
  state.SetLabel(format_name(format));
}

// --- attention --------------------------------------------------------------------------------

// Scalar causal attention of rows [pos0, pos0 + n) over keys/values already in the cache.
std::vector<double> attention_ref(const std::vector<float>& qkv, int n, int pos0,
                                  const std::vector<float>& keys, const std::vector<float>& values,
                                  int capacity) {
  const int hd = kEmbd / kHead;
  std::vector<double> out(size_t(n) * kEmbd);
  for (int h = 0; h < kHead; ++h)
    for (int i = 0; i < n; ++i) {
      const float* q = &qkv[size_t(i) * 3 * kEmbd + h * hd];
      const int n_keys = pos0 + i + 1;
      std::vector<double> s(n_keys);
      double m = -1e300, sum = 0;
      for (int t = 0; t < n_keys; ++t) {
        const float* k = &keys[(size_t(h) * capacity + t) * hd];
        double dot = 0;
        for (int j = 0; j < hd; ++j) dot += double(q[j]) * k[j];
        s[t] = dot / std::sqrt(double(hd));
        m = std::max(m, s[t]);
      }
      for (double& v : s) sum += v = std::exp(v - m);
      for (int j = 0; j < hd; ++j) {
        double acc = 0;
        for (int t = 0; t < n_keys; ++t)
          acc += s[t] / sum * values[(size_t(h) * capacity + t) * hd + j];
        out[size_t(i) * kEmbd + h * hd + j] = acc;
      }
    }
  return out;
}

// range(0) = context (keys after the call), range(1) = new rows (1: decode step, ctx: prefill).
void BM_attention(benchmark::State& state) {
  const int ctx = int(state.range(0)), n = int(state.range(1)), pos0 = ctx - n;
  const int hd = kEmbd / kHead, capacity = kCtx;
  std::vector<float> qkv = random_vec(size_t(n) * 3 * kEmbd, 12, 2.0f);
  std::vector<float> keys = random_vec(size_t(kHead) * capacity * hd, 13, 2.0f);
  std::vector<float> values = random_vec(keys.size(), 14);
  std::vector<float> scores(size_t(kHead) * capacity), out(size_t(n) * kEmbd);
  const KVLayer cache{keys.data(), values.data(), capacity, KVFormat::native};
  // The new rows' keys and values go into the cache first (timed too, as in the forward pass).
  auto attention = [&] {
    K().kv_cache_append(qkv.data(), n, kEmbd, kHead, pos0, cache);
    K().causal_attention(qkv.data(), n, kEmbd, kHead, pos0, cache, scores.data(), out.data());
  };
  attention();
  check("attention", out.data(), attention_ref(qkv, n, pos0, keys, values, capacity));
  for (auto _ : state) {
    attention();
    benchmark::DoNotOptimize(out.data());
  }
  // Keys and values read, and q·k and p·v multiply-adds (causal: Σ over rows of their keys).
  double pairs = 0;
  for (int i = 0; i < n; ++i) pairs += pos0 + i + 1;
  set_counters(state, n == 1 ? 2.0 * ctx * kEmbd * 4 : 0, 2.0 * 2.0 * pairs * kEmbd);
}

// One decode step's attention over every layer's cache (12 layers of [head][ctx][head_dim] keys
// and values, 75 MB at ctx 1024 in float32: memory-bound, as in the model, where the last
// layer's cache is long evicted when the first layer's is read again). range(0) = context after
// the step, range(1) = the cache's format (0 float32, 1 bf16). GB/s counts the cache's bytes.
void BM_attention_layers(benchmark::State& state) {
  const int ctx = int(state.range(0)), pos0 = ctx - 1, hd = kEmbd / kHead;
  const bool bf16 = state.range(1) == 1;
  const size_t values_per_layer = size_t(kHead) * ctx * hd, value_bytes = bf16 ? 2 : 4;
  std::vector<float> qkv = random_vec(size_t(3) * kEmbd, 12, 2.0f);
  std::vector<std::vector<float>> keys, values;  // as floats (bf16: rounded first)
  std::vector<std::vector<unsigned char>> stored_k, stored_v;
  for (int l = 0; l < kLayer; ++l) {
    keys.push_back(random_vec(values_per_layer, 13 + 2 * l, 2.0f));
    values.push_back(random_vec(values_per_layer, 14 + 2 * l));
    for (auto* a : {&keys.back(), &values.back()}) {
      std::vector<unsigned char> bytes(values_per_layer * value_bytes);
      for (size_t i = 0; i < values_per_layer; ++i) {
        if (bf16) {
          const uint16_t b = to_bf16((*a)[i]);
          (*a)[i] = from_bf16(b);
          std::memcpy(&bytes[2 * i], &b, 2);
        } else {
          std::memcpy(&bytes[4 * i], &(*a)[i], 4);
        }
      }
      (a == &keys.back() ? stored_k : stored_v).push_back(std::move(bytes));
    }
  }
  const KVFormat format = bf16 ? KVFormat::bf16 : KVFormat::native;
  std::vector<float> scores(size_t(kHead) * ctx), out(kEmbd);
  auto layer = [&](int l) {
    const KVLayer cache{stored_k[l].data(), stored_v[l].data(), ctx, format};
    K().kv_cache_append(qkv.data(), 1, kEmbd, kHead, pos0, cache);
    K().causal_attention(qkv.data(), 1, kEmbd, kHead, pos0, cache, scores.data(), out.data());
  };
  layer(0);
  // The new position's key and value, as stored, complete the reference's cache.
  for (int h = 0; h < kHead; ++h)
    for (int j = 0; j < hd; ++j) {
      const size_t at = (size_t(h) * ctx + pos0) * hd + j;
      const float k = qkv[kEmbd + h * hd + j], v = qkv[2 * kEmbd + h * hd + j];
      keys[0][at] = bf16 ? from_bf16(to_bf16(k)) : k;
      values[0][at] = bf16 ? from_bf16(to_bf16(v)) : v;
    }
  check("attention (layers)", out.data(), attention_ref(qkv, 1, pos0, keys[0], values[0], ctx));
  for (auto _ : state) {
    for (int l = 0; l < kLayer; ++l) layer(l);
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, 2.0 * kLayer * values_per_layer * value_bytes,
               2.0 * 2.0 * kLayer * ctx * kEmbd);
  state.SetLabel(bf16 ? "bf16 cache" : "float32 cache");
}

// --- one full decode step ---------------------------------------------------------------------

struct Model124M {
  std::vector<std::vector<float>> arrays;
  Weights<float> w;
  const float* add(size_t n, uint64_t seed, float scale, float offset = 0) {
    arrays.push_back(random_vec(n, seed, scale));
    for (float& v : arrays.back()) v += offset;
    return arrays.back().data();
  }
  Model124M() {
    arrays.reserve(8 + kLayer * 16);
    w.n_vocab = kVocab, w.n_ctx = kCtx, w.n_embd = kEmbd, w.n_head = kHead;
    const int d = kEmbd;
    w.wte = add(size_t(kVocab) * d, 20, 0.1f);
    w.wpe = add(size_t(kCtx) * d, 21, 0.01f);
    w.ln_f = {add(d, 22, 0.1f, 1), add(d, 23, 0.02f)};
    for (int l = 0; l < kLayer; ++l) {
      BlockWeights<float> b;
      const uint64_t s = 100 + 20 * l;
      b.ln_1 = {add(d, s, 0.1f, 1), add(d, s + 1, 0.02f)};
      b.ln_2 = {add(d, s + 2, 0.1f, 1), add(d, s + 3, 0.02f)};
      b.c_attn = {add(size_t(d) * 3 * d, s + 4, 0.035f), add(3 * d, s + 5, 0.02f), d, 3 * d};
      b.attn_proj = {add(size_t(d) * d, s + 6, 0.035f), add(d, s + 7, 0.02f), d, d};
      b.c_fc = {add(size_t(d) * 4 * d, s + 8, 0.035f), add(4 * d, s + 9, 0.02f), d, 4 * d};
      b.mlp_proj = {add(size_t(4 * d) * d, s + 10, 0.035f), add(d, s + 11, 0.02f), 4 * d, d};
      w.blocks.push_back(b);
    }
  }
  double weight_bytes() const {
    double p = double(kVocab) * kEmbd + kEmbd * 2;
    p += kLayer * (4.0 * kEmbd + 12.0 * kEmbd * kEmbd + 9.0 * kEmbd + 0.0);
    return p * 4;
  }
};

Model124M& model124m() {
  static Model124M m;
  return m;
}

void BM_forward_decode(benchmark::State& state) {
  const int ctx = int(state.range(0));
  Model124M& m = model124m();
  Weights<float> w = m.w;  // range(1): the KV cache's format (0 float32, 1 bf16)
  w.kv_format = state.range(1) == 1 ? KVFormat::bf16 : KVFormat::native;
  std::vector<int32_t> ids(ctx + 1);
  for (int i = 0; i <= ctx; ++i) ids[i] = (i * 104729 + 17) % kVocab;
  // The decode step after a prefill of ctx tokens must equal the last row of one forward over all
  // ctx + 1 tokens, bit for bit.
  KVCache<float> cache(w, ctx + 1);
  Workspace<float> ws(w, ctx + 1, ctx + 1);
  std::vector<float> step(kVocab), all(size_t(ctx + 1) * kVocab);
  Chunk<float> prefill{&cache, ids.data(), ctx}, next{&cache, ids.data() + ctx, 1};
  const int last = ctx - 1, first = 0;
  forward_pass(w, &prefill, 1, ws, &last, 1, step.data());
  forward_pass(w, &next, 1, ws, &first, 1, step.data());
  KVCache<float> cache_all(w, ctx + 1);
  Chunk<float> whole{&cache_all, ids.data(), ctx + 1};
  std::vector<int> all_rows(ctx + 1);
  for (int i = 0; i <= ctx; ++i) all_rows[i] = i;
  forward_pass(w, &whole, 1, ws, all_rows.data(), ctx + 1, all.data());
  for (int v = 0; v < kVocab; ++v)
    if (step[v] != all[size_t(ctx) * kVocab + v])
      fail("forward: the decode step differs from the same position in a full forward");
  for (auto _ : state) {
    cache.length = ctx;
    forward_pass(w, &next, 1, ws, &first, 1, step.data());
    benchmark::DoNotOptimize(step.data());
  }
  set_counters(state, m.weight_bytes(), 0);
  state.counters["tok/s"] = benchmark::Counter(1, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(state.range(1) == 1 ? "bf16 cache" : "float32 cache");
}

void BM_forward_prefill(benchmark::State& state) {
  const int n = int(state.range(0));
  Model124M& m = model124m();
  std::vector<int32_t> ids(n);
  for (int i = 0; i < n; ++i) ids[i] = (i * 104729 + 17) % kVocab;
  KVCache<float> cache(m.w, n);
  Workspace<float> ws(m.w, n, n);
  std::vector<float> logits(kVocab);
  Chunk<float> prompt{&cache, ids.data(), n};
  const int last = n - 1;
  for (auto _ : state) {
    cache.length = 0;
    forward_pass(m.w, &prompt, 1, ws, &last, 1, logits.data());
    benchmark::DoNotOptimize(logits.data());
  }
  state.counters["tok/s"] = benchmark::Counter(n, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = num_threads();
}

const int kShapes[][2] = {{768, 2304}, {768, 768}, {768, 3072}, {3072, 768}};

void linear_args(benchmark::internal::Benchmark* b) {
  for (int n : {1, 8, 128})
    for (auto& s : kShapes) b->Args({n, s[0], s[1]});
}

void packed_linear_args(benchmark::internal::Benchmark* b) {
  for (int f : {0, 1, 2, 3})
    for (int n : {1, 8, 128})
      for (auto& s : kShapes) b->Args({f, n, s[0], s[1]});
}

}  // namespace

BENCHMARK(BM_memory_read)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_embedding)->Arg(1)->Arg(128)->UseRealTime();
BENCHMARK(BM_layer_norm)->Arg(1)->Arg(128)->UseRealTime();
BENCHMARK(BM_gelu)->Arg(3072)->Arg(128 * 3072)->UseRealTime();
BENCHMARK(BM_softmax)->Arg(128)->Arg(1024)->UseRealTime();
BENCHMARK(BM_linear)->Apply(linear_args)->ArgNames({"n", "in", "out"})->UseRealTime();
BENCHMARK(BM_unembed)->Arg(1)->Arg(8)->ArgName("n")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_linear_packed)
    ->Apply(packed_linear_args)
    ->ArgNames({"fmt", "n", "in", "out"})
    ->UseRealTime();
BENCHMARK(BM_unembed_packed)
    ->Args({0, 1})
    ->Args({1, 1})
    ->Args({2, 1})
    ->Args({3, 1})
    ->Args({0, 8})
    ->Args({1, 8})
    ->Args({2, 8})
    ->Args({3, 8})
    ->ArgNames({"fmt", "n"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_attention)
    ->Args({128, 1})
    ->Args({1024, 1})
    ->Args({128, 128})
    ->Args({1024, 1024})
    ->ArgNames({"ctx", "n"})
    ->UseRealTime();
BENCHMARK(BM_attention_layers)
    ->ArgsProduct({{32, 256, 1024}, {0, 1}})
    ->ArgNames({"ctx", "kv"})
    ->UseRealTime();
BENCHMARK(BM_forward_decode)
    ->ArgsProduct({{32, 128, 256, 1023}, {0, 1}})  // wpe has positions 0 .. 1023
    ->ArgNames({"ctx", "kv"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_forward_prefill)->Arg(128)->ArgName("n")->Unit(benchmark::kMillisecond)->UseRealTime();

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  std::printf("gpt2gen kernels: backend %s, %d threads\n", backend().name, num_threads());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
