#include "server/service/message_bytes.h"

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/repeated_ptr_field.h"
#include "google/protobuf/wire_format_lite.h"
#include "grpcpp/support/proto_buffer_reader.h"
#include "grpcpp/support/slice.h"
#include "server/optim/optimizer.h"
#include "server/optim/parallel.h"
#include "wire/wire_dtype.h"

namespace optd {
namespace {

using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedOutputStream;

// The key of a length-delimited field (a message, a string or bytes).
uint32_t KeyOf(int field) {
  return WireFormatLite::MakeTag(field, WireFormatLite::WIRETYPE_LENGTH_DELIMITED);
}

void AppendVarint(uint64_t value, std::string* out) {
  uint8_t buffer[10];
  const uint8_t* end = CodedOutputStream::WriteVarint64ToArray(value, buffer);
  out->append(reinterpret_cast<const char*>(buffer), end - buffer);
}

// Appends the key and length prefix of a length-delimited field.
void AppendPrefix(int field, size_t length, std::string* out) {
  AppendVarint(KeyOf(field), out);
  AppendVarint(length, out);
}

// Bytes of a length-delimited field's key and length prefix.
size_t PrefixSize(int field, size_t length) {
  return CodedOutputStream::VarintSize32(KeyOf(field)) + CodedOutputStream::VarintSize64(length);
}

// EncodeFloats, split over the process-wide pool when large, in the blocks the optimizers use.
void EncodeOnPool(WireDType dtype, absl::Span<const float> values, char* out) {
  const int64_t n = static_cast<int64_t>(values.size());
  if (n < Optimizer::kParallelMinElements) return EncodeFloats(dtype, values, out);
  const int64_t width = BytesPerElement(dtype);
  ThreadPool::Default()->ParallelFor(n, Optimizer::kBlockElements, [&](int64_t begin, int64_t end) {
    EncodeFloats(dtype, values.subspan(begin, end - begin), out + begin * width);
  });
}

// Builds the slices of a ByteBuffer: small pieces are gathered into one pending string (copied
// into a slice before a large piece and at the end); large strings are moved into slices that own
// them, large shared F32 values are referenced by slices that hold a reference, and large shared
// values sent as BF16 or F16 are encoded into slices of their own.
class SliceWriter {
 public:
  void Prefix(int field, size_t length) { AppendPrefix(field, length, &pending_); }

  void Message(const google::protobuf::MessageLite& message) { message.AppendToString(&pending_); }

  void Move(std::string* bytes) {
    if (bytes->size() < kMoveMinBytes) {
      pending_.append(*bytes);
      return;
    }
    Flush();
    auto* owned = new std::string(std::move(*bytes));
    slices_.emplace_back(
        owned->data(), owned->size(), [](void* s) { delete static_cast<std::string*>(s); }, owned);
  }

  // `floats` encoded as `dtype`: F32 large ones referenced where they are, others encoded
  // straight into a slice (or into the pending string when small).
  void Share(SharedFloats floats, WireDType dtype) {
    const size_t size = floats->size() * BytesPerElement(dtype);
    if (size < kMoveMinBytes) {
      const size_t at = pending_.size();
      pending_.resize(at + size);
      EncodeFloats(dtype, *floats, pending_.data() + at);
      return;
    }
    Flush();
    if (dtype != WireDType::kF32) {
      grpc::Slice slice(size);  // not zero-filled
      EncodeOnPool(dtype, *floats, reinterpret_cast<char*>(const_cast<uint8_t*>(slice.begin())));
      slices_.push_back(std::move(slice));
      return;
    }
    // gRPC only reads the slice; the session never writes a buffer it shares.
    void* data = const_cast<float*>(floats->data());
    auto* owned = new SharedFloats(std::move(floats));
    slices_.emplace_back(
        data, size, [](void* s) { delete static_cast<SharedFloats*>(s); }, owned);
  }

  void Finish(grpc::ByteBuffer* out) {
    Flush();
    grpc::ByteBuffer bytes(slices_.data(), slices_.size());
    out->Swap(&bytes);
  }

 private:
  void Flush() {
    if (pending_.empty()) return;
    slices_.emplace_back(pending_.data(), pending_.size());  // copies
    pending_.clear();
  }

  std::string pending_;
  std::vector<grpc::Slice> slices_;
};

// `reply` split for writing: its tensors' data moved out (or shared) and its other fields, and the
// sizes that the length prefixes need.
class SplitReply {
 public:
  SplitReply(v1::StepResponse* reply, std::vector<SharedFloats>* shared)
      : reply_(reply), shared_(std::move(*shared)) {
    shared->clear();
    tensors_.Swap(reply_->mutable_parameters());
    data_.resize(tensors_.size());
    shared_.resize(tensors_.size());
    tensor_sizes_.resize(tensors_.size());
    size_ = reply_->ByteSizeLong();  // without the tensors
    for (int i = 0; i < tensors_.size(); ++i) {
      data_[i].swap(*tensors_.Mutable(i)->mutable_data());
      tensor_sizes_[i] = tensors_.Get(i).ByteSizeLong();
      const size_t data_size = DataSize(i);
      if (data_size > 0) {
        tensor_sizes_[i] += PrefixSize(v1::Tensor::kDataFieldNumber, data_size) + data_size;
      }
      size_ +=
          PrefixSize(v1::StepResponse::kParametersFieldNumber, tensor_sizes_[i]) + tensor_sizes_[i];
    }
  }

  // Gives reply its tensors back (without their data).
  ~SplitReply() { tensors_.Swap(reply_->mutable_parameters()); }

  // The serialized size of the whole reply.
  size_t size() const { return size_; }

  void WriteTo(SliceWriter* out) {
    out->Message(*reply_);
    for (int i = 0; i < tensors_.size(); ++i) {
      out->Prefix(v1::StepResponse::kParametersFieldNumber, tensor_sizes_[i]);
      out->Message(tensors_.Get(i));
      const size_t data_size = DataSize(i);
      if (data_size == 0) continue;
      out->Prefix(v1::Tensor::kDataFieldNumber, data_size);
      if (shared_[i] != nullptr) {
        out->Share(std::move(shared_[i]), static_cast<WireDType>(tensors_.Get(i).dtype()));
      } else {
        out->Move(&data_[i]);
      }
    }
  }

 private:
  size_t DataSize(int i) const {
    if (shared_[i] == nullptr) return data_[i].size();
    return shared_[i]->size() * BytesPerElement(static_cast<WireDType>(tensors_.Get(i).dtype()));
  }

  v1::StepResponse* const reply_;
  std::vector<SharedFloats> shared_;  // indexed as tensors_; null: the data is in data_
  google::protobuf::RepeatedPtrField<v1::Tensor> tensors_;
  std::vector<std::string> data_;
  std::vector<size_t> tensor_sizes_;
  size_t size_ = 0;
};

// Reads a message's wire format across the slices of a ByteBuffer. Every read returns false when
// the bytes run out.
class SliceReader {
 public:
  explicit SliceReader(const std::vector<grpc::Slice>& slices) : slices_(slices) { Settle(); }

  int64_t position() const { return position_; }
  bool done() const { return slice_ == slices_.size(); }

  bool Varint(uint64_t* value) {
    *value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (done()) return false;
      const uint8_t byte = slices_[slice_].begin()[offset_];
      Advance(1);
      *value |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if ((byte & 0x80) == 0) return true;
    }
    return false;  // longer than a varint can be
  }

  // The next `n` bytes as pieces of the slices (no copy), or appended to `*out`.
  bool Pieces(uint64_t n, std::vector<absl::string_view>* out) {
    while (n > 0) {
      if (done()) return false;
      const size_t available = slices_[slice_].size() - offset_;
      const size_t take = n < available ? static_cast<size_t>(n) : available;
      out->emplace_back(reinterpret_cast<const char*>(slices_[slice_].begin()) + offset_, take);
      Advance(take);
      n -= take;
    }
    return true;
  }
  bool Copy(uint64_t n, std::string* out) {
    std::vector<absl::string_view> pieces;
    if (!Pieces(n, &pieces)) return false;
    for (const absl::string_view piece : pieces) out->append(piece.data(), piece.size());
    return true;
  }

 private:
  void Advance(size_t n) {
    offset_ += n;
    position_ += static_cast<int64_t>(n);
    Settle();
  }
  // Moves past exhausted (and empty) slices.
  void Settle() {
    while (slice_ < slices_.size() && offset_ == slices_[slice_].size()) {
      ++slice_;
      offset_ = 0;
    }
  }

  const std::vector<grpc::Slice>& slices_;
  size_t slice_ = 0;
  size_t offset_ = 0;
  int64_t position_ = 0;
};

// Copies the value of a field whose key was just read, re-encoded as protobuf reads it, to `*out`
// (after its key). False for groups (which optd's messages do not use) and truncated bytes.
bool CopyValue(uint32_t wire_type, SliceReader* in, std::string* out) {
  uint64_t n = 0;
  switch (wire_type) {
    case WireFormatLite::WIRETYPE_VARINT:
      if (!in->Varint(&n)) return false;
      AppendVarint(n, out);
      return true;
    case WireFormatLite::WIRETYPE_FIXED64:
      return in->Copy(8, out);
    case WireFormatLite::WIRETYPE_FIXED32:
      return in->Copy(4, out);
    case WireFormatLite::WIRETYPE_LENGTH_DELIMITED:
      if (!in->Varint(&n)) return false;
      AppendVarint(n, out);
      return in->Copy(n, out);
    default:
      return false;
  }
}

// One Tensor of `length` bytes from `in`: its fields but the data into `*rest` (a serialized
// Tensor), the data's pieces into `*pieces`. A row-sparse tensor keeps its data in `*rest`.
bool SplitTensor(uint64_t length, SliceReader* in, std::string* rest,
                 std::vector<absl::string_view>* pieces) {
  const int64_t end = in->position() + static_cast<int64_t>(length);
  bool has_rows = false;
  while (in->position() < end) {
    uint64_t key = 0;
    if (!in->Varint(&key) || key > UINT32_MAX) return false;
    const int field = static_cast<int>(key >> 3);
    const uint32_t wire_type = static_cast<uint32_t>(key & 7);
    if (field == v1::Tensor::kDataFieldNumber &&
        wire_type == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      uint64_t size = 0;
      if (!in->Varint(&size)) return false;
      pieces->clear();  // a repeated singular field: the last one counts
      if (!in->Pieces(size, pieces)) return false;
      continue;
    }
    has_rows = has_rows || field == v1::Tensor::kRowsFieldNumber;
    AppendVarint(key, rest);
    if (!CopyValue(wire_type, in, rest)) return false;
  }
  if (in->position() != end) return false;
  if (has_rows && !pieces->empty()) {
    size_t size = 0;
    for (const absl::string_view piece : *pieces) size += piece.size();
    AppendPrefix(v1::Tensor::kDataFieldNumber, size, rest);
    for (const absl::string_view piece : *pieces) rest->append(piece.data(), piece.size());
    pieces->clear();
  }
  return true;
}

// The walk of ParseStepRequest over `out->slices`; false if the bytes do not split cleanly.
bool SplitStepRequest(StepRequestBytes* out) {
  SliceReader in(out->slices);
  std::string rest;  // the request without the dense gradients' data
  while (!in.done()) {
    uint64_t key = 0;
    if (!in.Varint(&key) || key > UINT32_MAX) return false;
    const uint32_t wire_type = static_cast<uint32_t>(key & 7);
    AppendVarint(key, &rest);
    if (static_cast<int>(key >> 3) != v1::StepRequest::kGradientsFieldNumber ||
        wire_type != WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      if (!CopyValue(wire_type, &in, &rest)) return false;
      continue;
    }
    uint64_t length = 0;
    if (!in.Varint(&length)) return false;
    std::string tensor;
    std::vector<absl::string_view>& pieces = out->pieces.emplace_back();
    if (!SplitTensor(length, &in, &tensor, &pieces)) return false;
    AppendVarint(tensor.size(), &rest);
    rest.append(tensor);
  }
  return out->message.ParseFromString(rest);
}

}  // namespace

absl::Status ParseMessage(grpc::ByteBuffer* bytes, google::protobuf::MessageLite* message) {
  bool parsed = false;
  {
    grpc::ProtoBufferReader reader(bytes);
    parsed = reader.status().ok() && message->ParseFromZeroCopyStream(&reader);
  }
  bytes->Clear();
  if (!parsed) {
    message->Clear();
    return absl::InvalidArgumentError(
        absl::StrCat("the request is not a valid ", message->GetTypeName(), " message"));
  }
  return absl::OkStatus();
}

absl::Status ParseStepRequest(grpc::ByteBuffer* bytes, StepRequestBytes* out) {
  out->message.Clear();
  out->pieces.clear();
  out->slices.clear();
  if (bytes->Length() >= kMoveMinBytes && bytes->Dump(&out->slices).ok()) {
    if (SplitStepRequest(out)) {
      bytes->Clear();  // the slices live on in out->slices
      return absl::OkStatus();
    }
    out->message.Clear();
    out->pieces.clear();
    out->slices.clear();
  }
  return ParseMessage(bytes, &out->message);
}

void SerializeStepResponse(v1::StepResponse* reply, std::vector<SharedFloats>* shared,
                           grpc::ByteBuffer* out) {
  SliceWriter writer;
  SplitReply(reply, shared).WriteTo(&writer);
  writer.Finish(out);
}

void SerializeStreamStepsResponse(v1::StreamStepsResponse* response,
                                  std::vector<SharedFloats>* shared, grpc::ByteBuffer* out) {
  SliceWriter writer;
  if (!response->has_reply()) {
    shared->clear();
    writer.Message(*response);
    writer.Finish(out);
    return;
  }
  std::unique_ptr<v1::StepResponse> reply(response->release_reply());
  writer.Message(*response);  // the fields besides the reply (none today)
  {
    SplitReply split(reply.get(), shared);
    writer.Prefix(v1::StreamStepsResponse::kReplyFieldNumber, split.size());
    split.WriteTo(&writer);
  }
  response->set_allocated_reply(reply.release());
  writer.Finish(out);
}

}  // namespace optd
