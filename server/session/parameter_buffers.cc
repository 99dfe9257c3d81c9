#include "server/session/parameter_buffers.h"

#include <algorithm>
#include <atomic>
#include <utility>

namespace optd {

ParameterBuffers::ParameterBuffers(std::vector<std::vector<float>> values) {
  buffers_.reserve(values.size());
  for (std::vector<float>& v : values) {
    buffers_.push_back(std::make_shared<std::vector<float>>(std::move(v)));
  }
}

ParameterBuffers::ParameterBuffers(std::vector<SharedFloats> values) {
  buffers_.reserve(values.size());
  for (SharedFloats& v : values) {
    // The shared values are never written: the first Writable() copies them (use_count > 1).
    buffers_.push_back(std::const_pointer_cast<std::vector<float>>(std::move(v)));
  }
}

absl::Span<float> ParameterBuffers::Writable(int index, int64_t* copied_bytes) {
  std::shared_ptr<std::vector<float>>& values = buffers_[index];
  if (values.use_count() > 1) {
    values = std::make_shared<std::vector<float>>(*values);
    *copied_bytes += static_cast<int64_t>(values->size() * sizeof(float));
  } else {
    // The last reply that shared the buffer has let go of it; its reads (on other threads)
    // happen before the writes that follow.
    std::atomic_thread_fence(std::memory_order_acquire);
  }
  return absl::MakeSpan(*values);
}

std::string ParameterBuffers::EncodeRows(int index, absl::Span<const int64_t> rows,
                                         int64_t row_size, WireDType dtype) const {
  const std::vector<float>& values = *buffers_[index];
  std::vector<float> gathered(rows.size() * row_size);
  for (size_t r = 0; r < rows.size(); ++r) {
    std::copy_n(values.data() + rows[r] * row_size, row_size, gathered.data() + r * row_size);
  }
  std::string bytes;
  EncodeFloats(dtype, gathered, &bytes);
  return bytes;
}

}  // namespace optd
