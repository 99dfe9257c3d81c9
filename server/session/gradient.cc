#include "server/session/gradient.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/quote.h"
#include "server/optim/clip.h"
#include "wire/wire_dtype.h"

namespace optd {
std::vector<float>& Gradient::Own() {
  squares_.reset();
  if (borrowed_) {
    owned_.assign(borrowed_values_.begin(), borrowed_values_.end());
    borrowed_ = false;
    buffer_.reset();
  }
  return owned_;
}

Gradient Gradient::Dense(std::vector<float> values) {
  Gradient g;
  g.owned_ = std::move(values);
  return g;
}

Gradient Gradient::Sparse(std::vector<int64_t> rows, std::vector<float> values) {
  Gradient g;
  g.sparse_ = true;
  g.rows_ = std::move(rows);
  g.owned_ = std::move(values);
  return g;
}

absl::Span<float> Gradient::Allocate(size_t n) {
  buffer_.reset(new float[n]);
  Borrow(absl::MakeConstSpan(buffer_.get(), n));
  return absl::MakeSpan(buffer_.get(), n);
}

std::vector<float> Gradient::Densify(const TensorSpec& spec) && {
  if (!sparse_) return std::move(Own());
  const int64_t row_size = spec.row_size();
  std::vector<float> dense(spec.num_elements, 0.0f);
  const float* values = this->values().data();
  for (size_t r = 0; r < rows_.size(); ++r) {
    std::copy_n(values + r * row_size, row_size, dense.data() + rows_[r] * row_size);
  }
  return dense;
}

int64_t DecodeBytes(const TensorSpecs& specs, absl::Span<const WireTensorView> gradients) {
  int64_t bytes = 0;
  for (const WireTensorView& g : gradients) {
    const int k = specs.Find(g.name);
    if (k < 0) continue;
    if (g.has_rows) {
      // The raw rows, their coalesced copy and the row indices.
      const int64_t rows = static_cast<int64_t>(g.rows.size());
      bytes += rows * (2 * specs[k].row_size() * static_cast<int64_t>(sizeof(float)) + 8);
    } else if (g.dtype != WireDType::kF32 || g.data.Pieces().size() != 1) {
      bytes += specs[k].num_elements * static_cast<int64_t>(sizeof(float));
    }
  }
  return bytes;
}

absl::StatusOr<std::vector<Gradient>> DecodeGradients(const TensorSpecs& specs,
                                                      absl::string_view session_id,
                                                      absl::Span<const WireTensorView> gradients,
                                                      RefusalReason* reason) {
  const int n = specs.size();
  std::vector<Gradient> grads(n);
  std::vector<bool> seen(n, false);
  *reason = RefusalReason::kInvalid;
  for (size_t i = 0; i < gradients.size(); ++i) {
    const WireTensorView& g = gradients[i];
    const std::string field = absl::StrCat("gradients[", i, "]");
    const int k = specs.Find(g.name);
    if (k < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".name ", Quote(g.name), " is not a tensor of session ", session_id));
    }
    if (seen[k]) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".name ", Quote(g.name), " is repeated; one gradient per tensor"));
    }
    seen[k] = true;
    const TensorSpec& spec = specs[k];
    if (!std::equal(g.shape.begin(), g.shape.end(), spec.shape.begin(), spec.shape.end())) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".shape ", ShapeString(g.shape), " of ",
                                                     Quote(g.name), " must be ",
                                                     ShapeString(spec.shape)));
    }
    Gradient& out = grads[k];
    if (!g.has_rows) {
      if (absl::Status s =
              CheckEncodedSize(field, g.dtype, g.data.size(g.dtype), spec.num_elements);
          !s.ok()) {
        return s;
      }
      // One pass measures the gradient and checks it: the sum is finite iff every value is.
      const std::vector<absl::string_view> pieces = g.data.Pieces();
      double squares;
      if (const std::optional<absl::Span<const float>> view =
              pieces.size() == 1 ? F32View(g.dtype, pieces[0], spec.num_elements) : std::nullopt) {
        out.Borrow(*view);  // read in place from the request
        squares = SquaredNorm(*view);
      } else {
        // Decoded (gathered from the pieces) block by block, on the pool if large, each block
        // measured while in cache: the request's bytes are read once.
        const absl::Span<float> values = out.Allocate(spec.num_elements);
        const int64_t width = BytesPerElement(g.dtype);
        squares = FillAndSquaredNorm(
            spec.num_elements,
            [&](int64_t begin, int64_t end) {
              const absl::Span<float> block = values.subspan(begin, end - begin);
              if (g.dtype == WireDType::kF32) {  // the bytes are the floats: one copy
                g.data.CopyTo(begin * width, block.size() * width,
                              reinterpret_cast<char*>(block.data()));
                return;
              }
              thread_local std::string scratch;
              (void)DecodeFloats(field, g.dtype,
                                 g.data.View(begin * width, block.size() * width, &scratch), block);
            },
            values.data());
      }
      if (!std::isfinite(squares)) {
        const int64_t bad = FirstNonFinite(out.values());
        *reason = RefusalReason::kNonFinite;
        return NonFiniteError(field, g.name, bad, out.values()[bad]);
      }
      out.squares_ = squares;
      continue;
    }
    // Row-sparse.
    if (spec.shape.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, " ", Quote(g.name), " has rows but the tensor is a scalar; rows need rank >= 1"));
    }
    const int64_t row_size = spec.row_size();
    for (size_t r = 0; r < g.rows.size(); ++r) {
      if (g.rows[r] < 0 || g.rows[r] >= spec.shape[0]) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ".rows.indices[", r, "] = ", g.rows[r],
                         " is out of range: must be in [0, ", spec.shape[0], ")"));
      }
    }
    const int64_t count = static_cast<int64_t>(g.rows.size()) * row_size;
    if (absl::Status s = CheckEncodedSize(field, g.dtype, g.data.size(g.dtype), count); !s.ok()) {
      return s;
    }
    std::vector<float> raw;
    std::string scratch;
    if (absl::Status s = DecodeFloats(field, g.dtype,
                                      g.data.View(0, g.data.size(g.dtype), &scratch), count, &raw);
        !s.ok()) {
      return s;
    }
    if (int64_t bad = FirstNonFinite(raw); bad >= 0) {
      *reason = RefusalReason::kNonFinite;
      return NonFiniteError(field, g.name, bad, raw[bad]);
    }
    // Coalesce: sorted unique rows; duplicates summed in the order they came.
    std::vector<size_t> order(g.rows.size());
    for (size_t r = 0; r < order.size(); ++r) order[r] = r;
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return g.rows[a] < g.rows[b]; });
    out.sparse_ = true;
    std::vector<float>& values = out.Own();
    for (size_t r : order) {
      const float* src = raw.data() + r * row_size;
      if (out.rows_.empty() || out.rows_.back() != g.rows[r]) {
        out.rows_.push_back(g.rows[r]);
        values.insert(values.end(), src, src + row_size);
      } else {
        float* dst = values.data() + values.size() - row_size;
        for (int64_t j = 0; j < row_size; ++j) dst[j] += src[j];
      }
    }
  }
  if (gradients.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gradients is empty; a step needs the gradient of at least one of the ", n, " tensors"));
  }
  for (int k = 0; k < n; ++k) {
    if (!seen[k]) grads[k].absent_ = true;  // a partial step: the optimizer skips it
  }
  return grads;
}

}  // namespace optd
