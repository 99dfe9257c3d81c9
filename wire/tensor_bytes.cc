#include "wire/tensor_bytes.h"

#include <algorithm>
#include <cstring>
#include <utility>

namespace optd {

TensorBytes TensorBytes::Owned(std::string bytes) {
  TensorBytes t;
  t.owned_ = std::move(bytes);
  return t;
}

TensorBytes TensorBytes::Borrowed(absl::string_view bytes) {
  return Borrowed(std::vector<absl::string_view>{bytes});
}

TensorBytes TensorBytes::Borrowed(std::vector<absl::string_view> pieces) {
  TensorBytes t;
  t.kind_ = Kind::kBorrowed;
  pieces.erase(
      std::remove_if(pieces.begin(), pieces.end(), [](absl::string_view p) { return p.empty(); }),
      pieces.end());
  t.starts_.reserve(pieces.size());
  for (const absl::string_view piece : pieces) {
    t.starts_.push_back(t.borrowed_size_);
    t.borrowed_size_ += static_cast<int64_t>(piece.size());
  }
  t.pieces_ = std::move(pieces);
  return t;
}

TensorBytes TensorBytes::Shared(SharedFloats values) {
  TensorBytes t;
  t.kind_ = Kind::kShared;
  t.shared_ = std::move(values);
  return t;
}

int64_t TensorBytes::size(WireDType dtype) const {
  switch (kind_) {
    case Kind::kOwned:
      return static_cast<int64_t>(owned_.size());
    case Kind::kBorrowed:
      return borrowed_size_;
    case Kind::kShared:
      return static_cast<int64_t>(shared_->size()) * BytesPerElement(dtype);
  }
  return 0;
}

std::vector<absl::string_view> TensorBytes::Pieces() const {
  switch (kind_) {
    case Kind::kOwned:
      if (owned_.empty()) return {};
      return {absl::string_view(owned_)};
    case Kind::kBorrowed:
      return pieces_;
    case Kind::kShared:
      return {};
  }
  return {};
}

std::string* TensorBytes::mutable_owned() { return &owned_; }

size_t TensorBytes::PieceOf(int64_t offset) const {
  return std::upper_bound(starts_.begin(), starts_.end(), offset) - starts_.begin() - 1;
}

void TensorBytes::CopyTo(int64_t offset, int64_t size, char* out) const {
  if (size <= 0) return;
  if (kind_ == Kind::kOwned) {
    std::memcpy(out, owned_.data() + offset, size);
    return;
  }
  size_t k = PieceOf(offset);
  int64_t skip = offset - starts_[k];
  while (size > 0) {
    const int64_t take = std::min<int64_t>(size, pieces_[k].size() - skip);
    std::memcpy(out, pieces_[k].data() + skip, take);
    out += take;
    size -= take;
    skip = 0;
    ++k;
  }
}

absl::string_view TensorBytes::View(int64_t offset, int64_t size, std::string* scratch) const {
  if (kind_ == Kind::kOwned) return absl::string_view(owned_).substr(offset, size);
  if (size <= 0) return absl::string_view();
  const size_t k = PieceOf(offset);
  const int64_t skip = offset - starts_[k];
  if (skip + size <= static_cast<int64_t>(pieces_[k].size())) {
    return pieces_[k].substr(skip, size);
  }
  scratch->resize(size);
  CopyTo(offset, size, scratch->data());
  return *scratch;
}

TensorBytes TensorBytes::Borrow() const {
  switch (kind_) {
    case Kind::kOwned:
      return Borrowed(absl::string_view(owned_));
    case Kind::kBorrowed:
      return *this;
    case Kind::kShared:
      return Shared(shared_);
  }
  return TensorBytes();
}

std::string TensorBytes::Flatten(WireDType dtype) const {
  std::string bytes;
  if (kind_ == Kind::kShared) {
    EncodeFloats(dtype, *shared_, &bytes);
    return bytes;
  }
  bytes.resize(size(dtype));
  CopyTo(0, static_cast<int64_t>(bytes.size()), bytes.data());
  return bytes;
}

}  // namespace optd
