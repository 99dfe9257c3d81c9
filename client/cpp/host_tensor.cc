#include "client/cpp/host_tensor.h"

#include <cstdint>
#include <limits>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/types/span.h"
#include "wire/wire_dtype.h"

namespace optd {
namespace {

// product(shape), or InvalidArgument for a negative dimension or a product beyond int64.
absl::StatusOr<int64_t> CheckedNumElements(const std::string& name,
                                           absl::Span<const int64_t> shape) {
  int64_t n = 1;
  for (const int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has shape [",
                                                     absl::StrJoin(shape, ", "),
                                                     "]; dimensions must be >= 0"));
    }
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", name, "' has shape [", absl::StrJoin(shape, ", "), "]; too many elements"));
    }
    n *= d;
  }
  return n;
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

absl::StatusOr<v1::Tensor> HostTensorToProto(const HostTensor& tensor, v1::DType dtype) {
  absl::StatusOr<int64_t> n = CheckedNumElements(tensor.name, tensor.shape);
  if (!n.ok()) return n.status();
  if (static_cast<int64_t>(tensor.values.size()) != *n) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", tensor.name, "' has ", tensor.values.size(),
                     " values; its shape [", absl::StrJoin(tensor.shape, ", "), "] needs ", *n));
  }
  absl::StatusOr<WireDType> wire_dtype = ToWireDType(dtype);
  if (!wire_dtype.ok()) return wire_dtype.status();

  v1::Tensor out;
  out.set_name(tensor.name);
  out.mutable_shape()->Add(tensor.shape.begin(), tensor.shape.end());
  out.set_dtype(dtype);
  EncodeFloats(*wire_dtype, tensor.values, out.mutable_data());
  return out;
}

absl::StatusOr<HostTensor> HostTensorFromProto(const v1::Tensor& tensor) {
  HostTensor out;
  out.name = tensor.name();
  out.shape.assign(tensor.shape().begin(), tensor.shape().end());
  absl::StatusOr<int64_t> n = CheckedNumElements(out.name, out.shape);
  if (!n.ok()) return n.status();
  absl::StatusOr<WireDType> wire_dtype = ToWireDType(tensor.dtype());
  if (!wire_dtype.ok()) return wire_dtype.status();
  // Check the length before allocating: a bad shape must not cost a huge allocation.
  if (static_cast<int64_t>(tensor.data().size()) / BytesPerElement(*wire_dtype) != *n) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", out.name, "'.data has ", tensor.data().size(),
                     " bytes; its shape [", absl::StrJoin(out.shape, ", "), "] in ",
                     WireDTypeName(*wire_dtype), " needs ", *n * BytesPerElement(*wire_dtype)));
  }
  absl::Status s = DecodeFloats(absl::StrCat("tensor '", out.name, "'"), *wire_dtype, tensor.data(),
                                *n, &out.values);
  if (!s.ok()) return s;
  return out;
}

}  // namespace optd
