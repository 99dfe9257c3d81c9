#include "server/optim/muon.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "Eigen/Core"
#include "server/optim/kernel_internal.h"
#include "server/optim/lr_free_internal.h"

namespace optd {
namespace {

using optim_internal::AddScaled;
using optim_internal::IsNonFinite;
using optim_internal::Lerp;
using optim_internal::NonFiniteCount;

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

std::vector<int64_t> Sizes(const TensorShapes& shapes) {
  std::vector<int64_t> sizes;
  for (const std::vector<int64_t>& shape : shapes) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    sizes.push_back(n);
  }
  return sizes;
}

// p = p * decay - lr * u over a matrix's elements. Returns how many p it left non-finite.
OPTD_FMA_CLONES int64_t MatrixUpdate(float* __restrict p, const float* __restrict u, int64_t n,
                                     float decay, float neg_lr) {
  NonFiniteCount non_finite = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float pi = AddScaled(p[i] * decay, u[i], neg_lr);
    p[i] = pi;
    non_finite += IsNonFinite(pi);
  }
  return non_finite;
}

// MuonWithAuxAdam's AdamW over n elements. Returns how many p it left non-finite.
OPTD_FMA_CLONES int64_t AdamUpdate(float* __restrict p, const float* __restrict g,
                                   float* __restrict m, float* __restrict v, int64_t n, float keep1,
                                   float keep2, float bias1, float bias2, float eps, float decay,
                                   float neg_lr) {
  NonFiniteCount non_finite = 0;
  for (int64_t i = 0; i < n; ++i) {
    m[i] = Lerp(m[i], g[i], keep1);
    v[i] = Lerp(v[i], g[i] * g[i], keep2);
    const float u = (m[i] / bias1) / (std::sqrt(v[i] / bias2) + eps);
    const float pi = AddScaled(p[i] * decay, u, neg_lr);
    p[i] = pi;
    non_finite += IsNonFinite(pi);
  }
  return non_finite;
}

// The momentum and the direction of a matrix: buf = lerp(buf, g, 1 - momentum), u = Nesterov's
// lerp(g, buf, momentum) or buf.
OPTD_FMA_CLONES void Momentum(const float* __restrict g, float* __restrict buf, float* __restrict u,
                              int64_t n, float keep, float momentum, bool nesterov) {
  for (int64_t i = 0; i < n; ++i) {
    buf[i] = Lerp(buf[i], g[i], keep);
    u[i] = nesterov ? Lerp(g[i], buf[i], momentum) : buf[i];
  }
}

}  // namespace

Muon::Muon(const MuonOptions& options, const TensorShapes& shapes)
    : Optimizer(Sizes(shapes)), options_(options), state_(shapes.size()) {
  for (const std::vector<int64_t>& shape : shapes) {
    Layout layout;
    if (shape.size() == 2 || shape.size() == 4) {
      layout.matrix = true;
      layout.rows = shape[0];
      layout.cols = 1;
      for (size_t d = 1; d < shape.size(); ++d) layout.cols *= shape[d];
      const double ratio = static_cast<double>(shape[shape.size() - 2]) /
                           static_cast<double>(shape[shape.size() - 1]);
      layout.scale = std::sqrt(std::max(1.0, ratio));
    }
    layouts_.push_back(layout);
  }
}

int64_t Muon::StateBytesPerElement() const {
  for (const Layout& layout : layouts_) {
    if (!layout.matrix) return 2 * sizeof(float);
  }
  return sizeof(float);
}

Optimizer::StateRefs Muon::StateOf(size_t tensor) {
  TensorState& s = state_[tensor];
  if (layouts_[tensor].matrix) return {nullptr, {{"momentum_buffer", &s.momentum_buffer}}, {}};
  return {&s.step, {{"exp_avg", &s.exp_avg}, {"exp_avg_sq", &s.exp_avg_sq}}, {}};
}

void Muon::NewtonSchulz(float* u, int64_t rows, int64_t cols, int64_t steps) {
  constexpr float kA = 3.4445f, kB = -4.7750f, kC = 2.0315f;
  Eigen::Map<RowMatrix> in(u, rows, cols);
  const bool transpose = rows > cols;
  RowMatrix x = transpose ? RowMatrix(in.transpose()) : RowMatrix(in);
  double squares = 0.0;
  for (int64_t i = 0; i < x.size(); ++i) squares += static_cast<double>(x.data()[i]) * x.data()[i];
  const float norm = static_cast<float>(std::sqrt(squares)) + 1e-7f;
  x /= norm;
  RowMatrix a, b, bx;
  for (int64_t step = 0; step < steps; ++step) {
    a.noalias() = x * x.transpose();
    const RowMatrix ca = kC * a;
    b.noalias() = ca * a;
    b = kB * a + b;
    bx.noalias() = b * x;
    x = kA * x + bx;
  }
  if (transpose) {
    in = x.transpose();
  } else {
    in = x;
  }
}

void Muon::StepImpl(absl::Span<const TensorGrad> tensors, double lr) {
  const MuonOptions& o = options_;
  const float keep = static_cast<float>(1.0 - o.momentum);
  const float momentum = static_cast<float>(o.momentum);
  const float decay = static_cast<float>(1.0 - lr * o.weight_decay);
  const float neg_lr = static_cast<float>(-lr);
  const double adam_lr = o.lr > 0.0 ? o.adam_lr * (lr / o.lr) : o.adam_lr;
  const float adam_decay = static_cast<float>(1.0 - adam_lr * o.adam_weight_decay);
  const float adam_neg_lr = static_cast<float>(-adam_lr);
  const float adam_keep1 = static_cast<float>(1.0 - o.adam_beta1);
  const float adam_keep2 = static_cast<float>(1.0 - o.adam_beta2);
  const float adam_eps = static_cast<float>(o.adam_eps);

  // The orthogonalized updates of the matrices, one after another on this thread.
  std::vector<std::vector<float>> updates(tensors.size());
  std::vector<float> bias1(tensors.size()), bias2(tensors.size());
  for (size_t t = 0; t < tensors.size(); ++t) {
    TensorState& s = state_[t];
    const Layout& layout = layouts_[t];
    const int64_t n = tensor_sizes()[t];
    if (!layout.matrix) {
      if (s.step == 0) {
        s.exp_avg.assign(n, 0.0f);
        s.exp_avg_sq.assign(n, 0.0f);
      }
      ++s.step;
      bias1[t] = static_cast<float>(1.0 - std::pow(o.adam_beta1, static_cast<double>(s.step)));
      bias2[t] = static_cast<float>(1.0 - std::pow(o.adam_beta2, static_cast<double>(s.step)));
      continue;
    }
    if (s.momentum_buffer.empty()) s.momentum_buffer.assign(n, 0.0f);
    std::vector<float>& u = updates[t];
    u.resize(n);
    Momentum(tensors[t].grad.data(), s.momentum_buffer.data(), u.data(), n, keep, momentum,
             o.nesterov);
    NewtonSchulz(u.data(), layout.rows, layout.cols, o.ns_steps);
    const float scale = static_cast<float>(layout.scale);
    if (scale != 1.0f) {
      for (float& x : u) x *= scale;
    }
  }

  UpdateSegments([&](const Segment& seg) -> int64_t {
    TensorState& s = state_[seg.tensor];
    const int64_t b = seg.begin;
    const int64_t n = seg.end - b;
    float* p = tensors[seg.tensor].param.data() + b;
    if (layouts_[seg.tensor].matrix) {
      return MatrixUpdate(p, updates[seg.tensor].data() + b, n, decay, neg_lr);
    }
    return AdamUpdate(p, tensors[seg.tensor].grad.data() + b, s.exp_avg.data() + b,
                      s.exp_avg_sq.data() + b, n, adam_keep1, adam_keep2, bias1[seg.tensor],
                      bias2[seg.tensor], adam_eps, adam_decay, adam_neg_lr);
  });
}

}  // namespace optd
