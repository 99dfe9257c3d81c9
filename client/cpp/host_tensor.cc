#include "client/cpp/host_tensor.h"

#include <cstdint>
#include <limits>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/types/span.h"
#include "wire/wire_dtype.h"

namespace optd {
namespace client {
namespace {

std::string ShapeText(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// product(dims), or InvalidArgument for a negative dimension or a product beyond int64.
absl::StatusOr<int64_t> CheckedProduct(const std::string& name, absl::Span<const int64_t> shape,
                                       absl::Span<const int64_t> dims) {
  int64_t n = 1;
  for (const int64_t d : dims) {
    if (d < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", name, "' has shape ", ShapeText(shape), "; dimensions must be >= 0"));
    }
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' has shape ", ShapeText(shape), "; too many elements"));
    }
    n *= d;
  }
  return n;
}

// The number of values `name` must hold: product(shape) when dense, rows * product(shape[1:]) when
// row-sparse (whose indices must be in [0, shape[0])).
absl::StatusOr<int64_t> ExpectedValues(const std::string& name, absl::Span<const int64_t> shape,
                                       const std::vector<int64_t>* rows) {
  if (rows == nullptr) return CheckedProduct(name, shape, shape);
  if (shape.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "' is row-sparse but its shape is [] (a scalar has no rows)"));
  }
  absl::StatusOr<int64_t> n = CheckedProduct(name, shape, shape);
  if (!n.ok()) return n.status();
  for (size_t i = 0; i < rows->size(); ++i) {
    const int64_t r = (*rows)[i];
    if (r < 0 || r >= shape[0]) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' rows[", i, "] = ", r,
                                                     " is out of range: must be in [0, ", shape[0],
                                                     ") for shape ", ShapeText(shape)));
    }
  }
  const int64_t row_size = shape[0] == 0 ? 0 : *n / shape[0];
  if (row_size != 0 &&
      static_cast<int64_t>(rows->size()) > std::numeric_limits<int64_t>::max() / row_size) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has too many rows"));
  }
  return static_cast<int64_t>(rows->size()) * row_size;
}

absl::StatusOr<WireDType> ToWireDType(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_F32:
      return WireDType::kF32;
    case v1::DTYPE_BF16:
      return WireDType::kBf16;
    case v1::DTYPE_F16:
      return WireDType::kF16;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("dtype ", static_cast<int>(dtype), " is not one of F32, BF16, F16"));
  }
}

}  // namespace

int64_t HostTensor::num_elements() const {
  int64_t n = 1;
  for (const int64_t d : shape) n *= d;
  return n;
}

int64_t HostTensor::row_size() const {
  if (shape.empty()) return 0;
  int64_t n = 1;
  for (size_t i = 1; i < shape.size(); ++i) n *= shape[i];
  return n;
}

HostTensor RowSparse(std::string name, std::vector<int64_t> shape, std::vector<int64_t> rows,
                     std::vector<float> values) {
  return HostTensor{std::move(name), std::move(shape), std::move(values), std::move(rows)};
}

absl::StatusOr<v1::Tensor> HostTensorToProto(const HostTensor& tensor, v1::DType dtype) {
  absl::StatusOr<int64_t> n =
      ExpectedValues(tensor.name, tensor.shape, tensor.rows ? &*tensor.rows : nullptr);
  if (!n.ok()) return n.status();
  if (static_cast<int64_t>(tensor.values.size()) != *n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", tensor.name, "' has ", tensor.values.size(), " values; its shape ",
        ShapeText(tensor.shape),
        tensor.rows ? absl::StrCat(" with ", tensor.rows->size(), " rows") : "", " needs ", *n));
  }
  absl::StatusOr<WireDType> wire_dtype = ToWireDType(dtype);
  if (!wire_dtype.ok()) return wire_dtype.status();

  v1::Tensor out;
  out.set_name(tensor.name);
  out.mutable_shape()->Add(tensor.shape.begin(), tensor.shape.end());
  out.set_dtype(dtype);
  if (tensor.rows) {
    out.mutable_rows()->mutable_indices()->Add(tensor.rows->begin(), tensor.rows->end());
  }
  EncodeFloats(*wire_dtype, tensor.values, out.mutable_data());
  return out;
}

absl::StatusOr<HostTensor> HostTensorFromProto(const v1::Tensor& tensor) {
  HostTensor out;
  out.name = tensor.name();
  out.shape.assign(tensor.shape().begin(), tensor.shape().end());
  if (tensor.has_rows()) {
    out.rows.emplace(tensor.rows().indices().begin(), tensor.rows().indices().end());
  }
  absl::StatusOr<int64_t> n = ExpectedValues(out.name, out.shape, out.rows ? &*out.rows : nullptr);
  if (!n.ok()) return n.status();
  absl::StatusOr<WireDType> wire_dtype = ToWireDType(tensor.dtype());
  if (!wire_dtype.ok()) return wire_dtype.status();
  // Check the length before allocating (and without multiplying a huge count): a bad shape must
  // not cost a huge allocation.
  const int64_t size = static_cast<int64_t>(tensor.data().size());
  const int64_t width = BytesPerElement(*wire_dtype);
  if (size % width != 0 || size / width != *n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", out.name, "'.data has ", size, " bytes; its shape ", ShapeText(out.shape),
        out.rows ? absl::StrCat(" with ", out.rows->size(), " rows") : "", " in ",
        WireDTypeName(*wire_dtype), " needs ", *n, " elements of ", width, " bytes"));
  }
  absl::Status s = DecodeFloats(absl::StrCat("tensor '", out.name, "'"), *wire_dtype, tensor.data(),
                                *n, &out.values);
  if (!s.ok()) return s;
  return out;
}

}  // namespace client
}  // namespace optd
