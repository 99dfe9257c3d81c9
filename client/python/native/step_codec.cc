#include "client/python/native/step_codec.h"

#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "wire/wire_dtype.h"

namespace optd {
namespace python {
namespace {

// Runs fn(begin, end) over [0, n) in two halves, the second on a thread of its own, when n is
// large enough for the thread to pay for itself (a 1M-element BF16 conversion takes ~1 ms);
// cut at a multiple of 64 elements. Each element's result does not depend on the cut.
template <typename Fn>
void InTwoHalves(int64_t n, Fn fn) {
  if (n < kParallelEncodeElements) return fn(0, n);
  const int64_t half = (n / 2) & ~int64_t{63};
  std::thread second([&] { fn(half, n); });
  fn(0, half);
  second.join();
}

absl::StatusOr<WireDType> ToWire(int dtype) {
  switch (dtype) {
    case v1::DTYPE_F32:
      return WireDType::kF32;
    case v1::DTYPE_BF16:
      return WireDType::kBf16;
    case v1::DTYPE_F16:
      return WireDType::kF16;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("dtype ", dtype, " is not a known DType; must be F32, BF16 or F16"));
  }
}

}  // namespace

static_assert(sizeof(float) == 4, "float32");

absl::Status AddGradients(const std::vector<GradientView>& gradients, v1::DType dtype,
                          v1::StepRequest* request) {
  absl::StatusOr<WireDType> wire = ToWire(dtype);
  if (!wire.ok()) return wire.status();
  for (const GradientView& g : gradients) {
    int64_t count = 1;
    for (int64_t d : g.shape) count *= d;
    if (count != static_cast<int64_t>(g.values.size())) {
      return absl::InvalidArgumentError(absl::StrCat("gradient '", g.name, "' has ",
                                                     g.values.size(), " values for ", count,
                                                     " elements of its shape"));
    }
  }
  for (const GradientView& g : gradients) {
    v1::Tensor* t = request->add_gradients();
    t->set_name(g.name);
    for (int64_t d : g.shape) t->add_shape(d);
    t->set_dtype(dtype);
    std::string* data = t->mutable_data();
    if (*wire == WireDType::kF32) {  // little-endian host: the bytes as they are, one copy
      data->assign(reinterpret_cast<const char*>(g.values.data()), g.values.size() * 4);
    } else {
      data->resize(g.values.size() * BytesPerElement(*wire));
      const int64_t width = BytesPerElement(*wire);
      char* out = data->data();
      InTwoHalves(static_cast<int64_t>(g.values.size()), [&](int64_t begin, int64_t end) {
        EncodeFloats(*wire, g.values.subspan(begin, end - begin), out + begin * width);
      });
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> DecodedElements(const v1::Tensor& tensor) {
  if (absl::StatusOr<WireDType> wire = ToWire(tensor.dtype()); !wire.ok()) return wire.status();
  int64_t count = 1;
  for (int i = 0; i < tensor.shape_size(); ++i) {
    const int64_t d = tensor.shape(i);
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", tensor.name(), "' has a negative dimension"));
    }
    if (tensor.has_rows() && i == 0) continue;
    count *= d;
  }
  if (tensor.has_rows()) {
    if (tensor.shape_size() == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("row-sparse tensor '", tensor.name(), "' is a scalar"));
    }
    count *= tensor.rows().indices_size();
  }
  return count;
}

absl::Status DecodeInto(const v1::Tensor& tensor, absl::Span<float> out) {
  absl::StatusOr<WireDType> wire = ToWire(tensor.dtype());
  if (!wire.ok()) return wire.status();
  const std::string what = absl::StrCat("tensor '", tensor.name(), "'");
  const int64_t n = static_cast<int64_t>(out.size());
  if (absl::Status s = CheckEncodedSize(what, *wire, static_cast<int64_t>(tensor.data().size()), n);
      !s.ok()) {
    return s;
  }
  const int64_t width = BytesPerElement(*wire);
  const absl::string_view data = tensor.data();
  InTwoHalves(n, [&](int64_t begin, int64_t end) {
    DecodeFloats(what, *wire, data.substr(begin * width, (end - begin) * width),
                 out.subspan(begin, end - begin))
        .IgnoreError();  // sizes checked above
  });
  return absl::OkStatus();
}

}  // namespace python
}  // namespace optd
