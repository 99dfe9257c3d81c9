#include "client/python/native/step_codec.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "base/thread_pool.h"
#include "wire/wire_dtype.h"

namespace optd {
namespace python {
namespace {

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
      // Large tensors on the pool (the same bytes as on one thread).
      EncodeFloats(*wire, g.values, data->data(), ThreadPool::Default());
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
  if (n < kParallelEncodeElements) return DecodeFloats(what, *wire, tensor.data(), out);
  // Large tensors in blocks on the pool; each block is decoded exactly as the whole would be.
  const int64_t width = BytesPerElement(*wire);
  const absl::string_view data = tensor.data();
  ThreadPool::Default()->ParallelFor(n, kEncodeBlockElements, [&](int64_t begin, int64_t end) {
    DecodeFloats(what, *wire, data.substr(begin * width, (end - begin) * width),
                 out.subspan(begin, end - begin))
        .IgnoreError();  // sizes checked above
  });
  return absl::OkStatus();
}

}  // namespace python
}  // namespace optd
