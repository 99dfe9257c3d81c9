#include "server/service/state_convert.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/quote.h"
#include "wire/wire_dtype.h"

namespace optd {

void OptimizerStateToProto(const OptimizerState& state, const std::vector<TensorSpec>& tensors,
                           v1::OptimizerState* out) {
  for (size_t t = 0; t < state.tensors.size() && t < tensors.size(); ++t) {
    const OptimizerState::Tensor& from = state.tensors[t];
    v1::OptimizerState::TensorState* to = out->add_tensors();
    to->set_tensor(tensors[t].name);
    to->set_step(from.step);
    for (const OptimizerState::Array& a : from.arrays) {
      v1::Tensor* array = to->add_arrays();
      array->set_name(a.name);
      if (!a.values.empty()) {
        // The tensor's shape; an array of another length (Prodigy's slices, Adafactor's factored
        // moments) is a vector.
        if (static_cast<int64_t>(a.values.size()) == tensors[t].num_elements) {
          array->mutable_shape()->Add(tensors[t].shape.begin(), tensors[t].shape.end());
        } else {
          array->add_shape(static_cast<int64_t>(a.values.size()));
        }
        EncodeFloats(WireDType::kF32, a.values, array->mutable_data());
      }
    }
    for (const auto& [name, value] : from.scalars) (*to->mutable_scalars())[name] = value;
  }
  for (const auto& [name, value] : state.scalars) (*out->mutable_scalars())[name] = value;
}

absl::StatusOr<OptimizerState> OptimizerStateFromProto(const v1::OptimizerState& message,
                                                       const std::vector<TensorSpec>& tensors) {
  OptimizerState state;
  state.tensors.resize(tensors.size());
  std::vector<bool> seen(tensors.size(), false);
  for (int i = 0; i < message.tensors_size(); ++i) {
    const v1::OptimizerState::TensorState& t = message.tensors(i);
    const std::string field = absl::StrCat("optimizer_state.tensors[", i, "]");
    auto it = std::find_if(tensors.begin(), tensors.end(),
                           [&](const TensorSpec& s) { return s.name == t.tensor(); });
    if (it == tensors.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".tensor ", Quote(t.tensor()), " is not a tensor of the session"));
    }
    const size_t k = static_cast<size_t>(it - tensors.begin());
    if (seen[k]) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".tensor ", Quote(t.tensor()), " is repeated"));
    }
    seen[k] = true;
    OptimizerState::Tensor& into = state.tensors[k];
    into.step = t.step();
    for (int a = 0; a < t.arrays_size(); ++a) {
      const v1::Tensor& array = t.arrays(a);
      const std::string array_field = absl::StrCat(field, ".arrays[", a, "]");
      if (array.dtype() != v1::DTYPE_F32) {
        return absl::InvalidArgumentError(absl::StrCat(array_field, ".dtype must be DTYPE_F32"));
      }
      std::vector<float> values;
      // As many values as the array's shape says (the tensor's elements when it has none); the
      // optimizer checks the length each array must have (Optimizer::ImportState).
      int64_t count = it->num_elements;
      if (array.shape_size() > 0) {
        count = 1;
        for (const int64_t d : array.shape()) {
          if (d < 0 || d > it->num_elements) {
            return absl::InvalidArgumentError(
                absl::StrCat(array_field, ".shape has dimension ", d, "; must be in [0, ",
                             it->num_elements, "] (no array is longer than its tensor)"));
          }
          count *= d;
          if (count > it->num_elements) count = it->num_elements + 1;  // refused below
        }
      }
      if (absl::Status s = DecodeFloats(array_field, WireDType::kF32, array.data(),
                                        array.data().empty() ? 0 : count, &values);
          !s.ok()) {
        return s;
      }
      into.arrays.push_back({array.name(), std::move(values)});
    }
    for (const auto& [name, value] : t.scalars()) {
      into.scalars.emplace_back(name, static_cast<float>(value));
    }
    std::sort(into.scalars.begin(), into.scalars.end());
  }
  for (size_t k = 0; k < tensors.size(); ++k) {
    if (!seen[k]) {
      return absl::InvalidArgumentError(absl::StrCat("optimizer_state has no entry for tensor ",
                                                     Quote(tensors[k].name),
                                                     "; every tensor needs one"));
    }
  }
  for (const auto& [name, value] : message.scalars()) state.scalars.emplace_back(name, value);
  return state;
}

}  // namespace optd
