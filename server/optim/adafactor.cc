#include "server/optim/adafactor.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string_view>
#include <utility>
#include <vector>

#include "server/optim/kernel_internal.h"
#include "server/optim/lr_free_internal.h"

namespace optd {
namespace {

using optim_internal::AddScaled;
using optim_internal::IsNonFinite;
using optim_internal::Lerp;
using optim_internal::NonFiniteCount;

std::vector<int64_t> Sizes(const TensorShapes& shapes) {
  std::vector<int64_t> sizes;
  for (const std::vector<int64_t>& shape : shapes) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    sizes.push_back(n);
  }
  return sizes;
}

// What one tensor's step needs per element: where its V comes from.
struct TensorStep {
  const float* row_var = nullptr;
  const float* col_var = nullptr;
  std::vector<float> row_mean;  // max(mean(R), eps1) per batch
  float* variance = nullptr;
  float rho_hat = 0.0f;
  int64_t rows = 0, cols = 0;
};

// The elements [begin, end) of one tensor in runs that share a V row: calls
// run(first, last, row_var, col_var, row_mean) with the run's row factor, its columns' factors
// (col_var + its first column) and max(mean(R), eps1) of its matrix; for a vector, one run with
// row_var null.
template <typename Run>
inline void ForEachRun(const TensorStep& s, int64_t begin, int64_t end, Run run) {
  if (s.rows == 0) return run(begin, end, nullptr, nullptr, 0.0f);
  for (int64_t i = begin; i < end;) {
    const int64_t row = i / s.cols;  // over all matrices of the batch
    const int64_t matrix = row / s.rows;
    const int64_t last = std::min(end, (row + 1) * s.cols);
    run(i, last, s.row_var + row, s.col_var + matrix * s.cols + (i - row * s.cols),
        s.row_mean[matrix]);
    i = last;
  }
}

// U = g / sqrt(max(V, eps1^2)) with V = (R C) / mean(R), or the vector's V.
OPTD_FMA_CLONES void Directions(const float* __restrict g, const float* __restrict row_var,
                                const float* __restrict col_var, float row_mean,
                                const float* __restrict variance, float sign, float eps1_squared,
                                float* __restrict u, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    const float v = row_var != nullptr ? (row_var[0] * col_var[k]) / row_mean : variance[k];
    u[k] = (sign * g[k]) * (1.0f / std::sqrt(std::max(v, eps1_squared)));
  }
}

// Pass 1 on a run: the vector's V, then {sum p^2, sum U^2}.
OPTD_FMA_CLONES std::array<double, 2> RunSums(const float* __restrict p, const float* __restrict g,
                                              const float* __restrict row_var,
                                              const float* __restrict col_var, float row_mean,
                                              float* __restrict variance, float rho_hat, float sign,
                                              float eps1_squared, int64_t n) {
  constexpr int64_t kTile = 256;
  float u[kTile];
  std::array<double, 2> sums = {0.0, 0.0};
  for (int64_t begin = 0; begin < n; begin += kTile) {
    const int64_t len = std::min(kTile, n - begin);
    if (variance != nullptr) {
      for (int64_t k = begin; k < begin + len; ++k) {
        const float gk = sign * g[k];
        variance[k] = Lerp(variance[k], gk * gk, rho_hat);
      }
    }
    Directions(g + begin, row_var, col_var == nullptr ? nullptr : col_var + begin, row_mean,
               variance == nullptr ? nullptr : variance + begin, sign, eps1_squared, u, len);
    sums[0] += optim_internal::SumOfSquares(p + begin, len);
    sums[1] += optim_internal::SumOfSquares(u, len);
  }
  return sums;
}

// Pass 2 on a run: p = p * decay + step * U. Returns how many p it left non-finite.
OPTD_FMA_CLONES int64_t RunUpdate(float* __restrict p, const float* __restrict g,
                                  const float* __restrict row_var, const float* __restrict col_var,
                                  float row_mean, const float* __restrict variance, float sign,
                                  float eps1_squared, bool has_decay, float decay, float step,
                                  int64_t n) {
  constexpr int64_t kTile = 256;
  float u[kTile];
  NonFiniteCount non_finite = 0;
  for (int64_t begin = 0; begin < n; begin += kTile) {
    const int64_t len = std::min(kTile, n - begin);
    Directions(g + begin, row_var, col_var == nullptr ? nullptr : col_var + begin, row_mean,
               variance == nullptr ? nullptr : variance + begin, sign, eps1_squared, u, len);
    for (int64_t k = 0; k < len; ++k) {
      float pk = p[begin + k];
      if (has_decay) pk *= decay;
      pk = AddScaled(pk, u[k], step);
      p[begin + k] = pk;
      non_finite += IsNonFinite(pk);
    }
  }
  return non_finite;
}

}  // namespace

Adafactor::Adafactor(const AdafactorOptions& options, const TensorShapes& shapes)
    : Optimizer(Sizes(shapes)), options_(options), state_(shapes.size()) {
  for (const std::vector<int64_t>& shape : shapes) {
    Layout layout;
    if (shape.size() >= 2) {
      for (size_t d = 0; d + 2 < shape.size(); ++d) layout.batch *= shape[d];
      layout.rows = shape[shape.size() - 2];
      layout.cols = shape[shape.size() - 1];
    }
    layouts_.push_back(layout);
  }
}

int64_t Adafactor::StateBytesPerElement() const {
  for (const Layout& layout : layouts_) {
    if (!layout.factored()) return sizeof(float);
  }
  return 0;
}

int64_t Adafactor::ArraySize(size_t tensor, std::string_view array) const {
  const Layout& layout = layouts_[tensor];
  if (array == "row_var") return layout.batch * layout.rows;
  if (array == "col_var") return layout.batch * layout.cols;
  return tensor_sizes()[tensor];
}

Optimizer::StateRefs Adafactor::StateOf(size_t tensor) {
  TensorState& s = state_[tensor];
  if (layouts_[tensor].factored()) {
    return {&s.step, {{"col_var", &s.col_var}, {"row_var", &s.row_var}}, {}};
  }
  return {&s.step, {{"variance", &s.variance}}, {}};
}

void Adafactor::StepImpl(absl::Span<const TensorGrad> tensors, double lr) {
  const AdafactorOptions& o = options_;
  const double eps1 =
      o.eps1.has_value() ? *o.eps1 : static_cast<double>(std::numeric_limits<float>::epsilon());
  const float eps1_squared = static_cast<float>(eps1 * eps1);
  const float eps1_f = static_cast<float>(eps1);
  const float sign = o.maximize ? -1.0f : 1.0f;

  // The factored statistics, per tensor on this thread.
  std::vector<TensorStep> steps(tensors.size());
  for (size_t t = 0; t < tensors.size(); ++t) {
    TensorState& s = state_[t];
    const Layout& layout = layouts_[t];
    const int64_t n = tensor_sizes()[t];
    if (s.step == 0) {
      if (layout.factored()) {
        s.row_var.assign(layout.batch * layout.rows, 0.0f);
        s.col_var.assign(layout.batch * layout.cols, 0.0f);
      } else {
        s.variance.assign(n, 0.0f);
      }
    }
    ++s.step;
    TensorStep& st = steps[t];
    st.rho_hat = static_cast<float>(std::pow(static_cast<double>(s.step), o.beta2_decay));
    st.rows = layout.rows;
    st.cols = layout.cols;
    if (!layout.factored()) {
      st.variance = s.variance.data();
      continue;
    }
    const float* g = tensors[t].grad.data();
    std::vector<double> col_sums(layout.cols);
    for (int64_t b = 0; b < layout.batch; ++b) {
      std::fill(col_sums.begin(), col_sums.end(), 0.0);
      double row_total = 0.0;
      for (int64_t r = 0; r < layout.rows; ++r) {
        const float* row = g + (b * layout.rows + r) * layout.cols;
        double row_sum = 0.0;
        for (int64_t c = 0; c < layout.cols; ++c) {
          const double x = static_cast<double>(row[c]);
          row_sum += x * x;
          col_sums[c] += x * x;
        }
        const float norm = static_cast<float>(std::sqrt(row_sum));
        float& rv = s.row_var[b * layout.rows + r];
        rv = Lerp(rv, (norm * norm) / static_cast<float>(layout.cols), st.rho_hat);
        row_total += rv;
      }
      for (int64_t c = 0; c < layout.cols; ++c) {
        const float norm = static_cast<float>(std::sqrt(col_sums[c]));
        float& cv = s.col_var[b * layout.cols + c];
        cv = Lerp(cv, (norm * norm) / static_cast<float>(layout.rows), st.rho_hat);
      }
      st.row_mean.push_back(
          std::max(static_cast<float>(row_total / static_cast<double>(layout.rows)), eps1_f));
    }
    st.row_var = s.row_var.data();
    st.col_var = s.col_var.data();
  }

  // ||p||^2 (before weight decay) and ||U||^2 per tensor; the vectors' V is updated here.
  const std::vector<std::array<double, 2>> sums = SumPerTensor<2>([&](const Segment& seg) {
    const TensorStep& st = steps[seg.tensor];
    const float* p = tensors[seg.tensor].param.data();
    const float* g = tensors[seg.tensor].grad.data();
    std::array<double, 2> total = {0.0, 0.0};
    ForEachRun(st, seg.begin, seg.end,
               [&](int64_t first, int64_t last, const float* row_var, const float* col_var,
                   float row_mean) {
                 const std::array<double, 2> run =
                     RunSums(p + first, g + first, row_var, col_var, row_mean,
                             st.variance == nullptr ? nullptr : st.variance + first, st.rho_hat,
                             sign, eps1_squared, last - first);
                 total[0] += run[0];
                 total[1] += run[1];
               });
    return total;
  });

  const float decay = static_cast<float>(1.0 - lr * o.weight_decay);
  std::vector<float> neg_step(tensors.size());
  for (size_t t = 0; t < tensors.size(); ++t) {
    const double step = static_cast<double>(state_[t].step);
    const double numel = static_cast<double>(tensor_sizes()[t]);
    const double rho = std::min(lr, 1.0 / std::sqrt(step));
    const double alpha = std::max(o.eps2, std::sqrt(sums[t][0]) / std::sqrt(numel)) * rho;
    const double denom = std::max(1.0, std::sqrt(sums[t][1]) / (std::sqrt(numel) * o.d));
    neg_step[t] = static_cast<float>(-alpha / denom);
  }
  const bool has_decay = o.weight_decay != 0.0;
  UpdateSegments([&](const Segment& seg) -> int64_t {
    const TensorStep& st = steps[seg.tensor];
    float* p = tensors[seg.tensor].param.data();
    const float* g = tensors[seg.tensor].grad.data();
    int64_t non_finite = 0;
    ForEachRun(st, seg.begin, seg.end,
               [&](int64_t first, int64_t last, const float* row_var, const float* col_var,
                   float row_mean) {
                 non_finite +=
                     RunUpdate(p + first, g + first, row_var, col_var, row_mean,
                               st.variance == nullptr ? nullptr : st.variance + first, sign,
                               eps1_squared, has_decay, decay, neg_step[seg.tensor], last - first);
               });
    return non_finite;
  });
}

}  // namespace optd
