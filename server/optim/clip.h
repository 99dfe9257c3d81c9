// File: clip.h
//
// Gradient clipping, applied to a step's gradients before the optimizer sees them
// (reference/optimizers.md section 4). Pure math on spans of float32 gradients, one span per
// tensor: C++17 and abseil only.
//
// Global-norm clipping follows torch.nn.utils.clip_grad_norm_ (norm_type = 2, 1.13):
//   total = ||all gradients||_2,  coef = min(1, max_norm / (total + 1e-6)),  g *= coef
// except that the norm is accumulated in double (torch accumulates float32 gradients in float32),
// and the coefficient is computed in double and rounded to float once. So a clipped gradient's norm
// is max_norm * total / (total + 1e-6), slightly below max_norm, as in torch.
//
// Non-finite gradients are the caller's business (it checks them before clipping, see section
// 5.4); given some anyway, these functions behave like torch: a NaN makes the norm NaN and every
// gradient NaN, an infinity gives coef = 0 (inf * 0 = NaN, every finite element becomes 0).
//
// Every pass here is cut, run and reduced as an optimizer's are (model_segments.h): the norm is a
// double partial per segment of kBlockElements elements of each tensor, added in segment order,
// then in tensor order; the same bits on one thread or N, and the same bits whether measured here,
// while a gradient is decoded (FillAndSquaredNorm), or in an optimizer's reduction phase
// (normalized GD's global norm). Scaling and clamping are one element-wise pass over the segments.
//
// Stateless functions; a call may run concurrently with others on different gradients. Large
// passes run on the pool given, by default the process-wide ThreadPool::Default().

#ifndef OPTD_SERVER_OPTIM_CLIP_H_
#define OPTD_SERVER_OPTIM_CLIP_H_

#include <cstdint>
#include <functional>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "base/thread_pool.h"
#include "server/optim/model_segments.h"

namespace optd {

// The clipping a session applies to every step's gradients. Both may be on at once; see Clip().
struct ClipOptions {
  static constexpr absl::string_view kName = "clipping";
  double max_norm = 0.0;    // >= 0; 0: no global-norm clipping (torch clip_grad_norm_ max_norm)
  double clip_value = 0.0;  // >= 0; 0: no value clipping (torch clip_grad_value_ clip_value)

  // InvalidArgument unless both are finite and >= 0, e.g.
  // "clipping.max_norm = -1 is out of range: must be >= 0".
  absl::Status Validate() const;

  // True if Clip() may change gradients (either kind of clipping is on).
  bool enabled() const { return max_norm > 0 || clip_value > 0; }
};

// The sum of the squares of `values`, a tensor's elements: one double partial per segment (a
// tensor's own cut, ModelSegments), added in order, so the bits depend neither on the machine nor
// on the pool. Not finite (inf or NaN) exactly when some value is not: a float squared cannot
// overflow a double, nor can a sum of fewer than 2^900 of them, so one pass both measures a
// gradient and checks it. Spans of ModelSegments::kParallelMinElements or more run on
// ThreadPool::Default() (so not from inside a ParallelFor).
double SquaredNorm(absl::Span<const float> values);

// SquaredNorm of the `n` values at `values` that fill(begin, end) writes first (a gradient being
// decoded, say), segment by segment on the same segments and threads, each summed right after it
// is written, while it is still in cache. The same bits as fill(0, n) then SquaredNorm. fill
// must only write [begin, end) and must not call ParallelFor.
double FillAndSquaredNorm(int64_t n, const std::function<void(int64_t begin, int64_t end)>& fill,
                          const float* values);

// The L2 norm over every element of every tensor: the square root of the sum of each tensor's
// SquaredNorm, added in tensor order (ModelSegments::SumOverModel). 0 for no tensors.
double GlobalNorm(absl::Span<const absl::Span<const float>> grads);

// Clips `grads`, whose global norm as received is `norm` (GlobalNorm(grads), or the sum of
// their SquaredNorms measured while decoding: the same bits), in one element-wise pass over
// `layout`'s segments, on `pool` when large: global-norm clipping (torch clip_grad_norm_: every
// element times min(1, max_norm / (norm + 1e-6)), skipped when that is 1), then value clipping
// (torch clip_grad_value_: clamped to [-clip_value, clip_value]; NaN stays NaN). The result
// satisfies both bounds: scaling down cannot break the value bound, and clamping only lowers the
// norm. Does nothing when !options.enabled().
// REQUIRES: options.Validate() is OK; layout.tensor_sizes() are the sizes of `grads`.
void ClipToNorm(const ClipOptions& options, double norm, const ModelSegments& layout,
                absl::Span<const absl::Span<float>> grads,
                ThreadPool* pool = ThreadPool::Default());

// Measures `grads` (GlobalNorm), clips them (ClipToNorm) and returns the norm measured (before
// any clipping), which the service reports whether or not clipping is on.
// REQUIRES: options.Validate() is OK.
double Clip(const ClipOptions& options, absl::Span<const absl::Span<float>> grads);

// Clip with global-norm clipping only (max_norm = 0 zeroes the gradients, as torch does).
// REQUIRES: max_norm >= 0.
double ClipByGlobalNorm(absl::Span<const absl::Span<float>> grads, double max_norm);

// Clip with value clipping only. REQUIRES: clip_value >= 0.
void ClipByValue(absl::Span<const absl::Span<float>> grads, double clip_value);

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_CLIP_H_
