#include "server/service/message_bytes.h"

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "base/thread_pool.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"
#include "grpcpp/support/proto_buffer_reader.h"
#include "grpcpp/support/slice.h"
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

// Builds the slices of a ByteBuffer: small pieces are gathered into one pending string (copied
// into a slice before a large piece and at the end); large strings are moved into slices that own
// them, large shared F32 values are referenced by slices that hold a reference, and large shared
// values sent as BF16 or F16 are encoded into slices of their own.
class SliceWriter {
 public:
  // `keep`, if set, is held by every slice of owned or encoded bytes until gRPC frees it: the
  // memory reservation that pays for them.
  explicit SliceWriter(std::shared_ptr<void> keep = nullptr) : keep_(std::move(keep)) {}

  void Prefix(int field, size_t length) { AppendPrefix(field, length, &pending_); }

  void Message(const google::protobuf::MessageLite& message) { message.AppendToString(&pending_); }

  void Move(std::string* bytes) {
    if (bytes->size() < kMoveMinBytes) {
      pending_.append(*bytes);
      return;
    }
    Flush();
    auto* owned = new Owned{std::move(*bytes), keep_};
    slices_.emplace_back(
        owned->bytes.data(), owned->bytes.size(), [](void* s) { delete static_cast<Owned*>(s); },
        owned);
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
      auto* encoded = new Encoded{std::unique_ptr<char[]>(new char[size]), keep_};  // no zero-fill
      EncodeFloats(dtype, *floats, encoded->bytes.get(), ThreadPool::Default());
      slices_.emplace_back(
          encoded->bytes.get(), size, [](void* s) { delete static_cast<Encoded*>(s); }, encoded);
      return;
    }
    // gRPC only reads the slice; the session never writes a buffer it shares.
    void* data = const_cast<float*>(floats->data());
    auto* owned = new SharedFloats(std::move(floats));
    slices_.emplace_back(
        data, size, [](void* s) { delete static_cast<SharedFloats*>(s); }, owned);
  }

  // A tensor's data, in whichever form it is (tensor_bytes.h), encoded as `dtype`.
  void Data(TensorBytes data, WireDType dtype) {
    switch (data.kind()) {
      case TensorBytes::Kind::kOwned:
        return Move(data.mutable_owned());
      case TensorBytes::Kind::kShared:
        return Share(data.shared(), dtype);
      case TensorBytes::Kind::kBorrowed:
        for (const absl::string_view piece : data.Pieces()) {
          pending_.append(piece.data(), piece.size());
        }
        return;
    }
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

  struct Owned {
    std::string bytes;
    std::shared_ptr<void> keep;
  };
  struct Encoded {
    std::unique_ptr<char[]> bytes;
    std::shared_ptr<void> keep;
  };

  const std::shared_ptr<void> keep_;
  std::string pending_;
  std::vector<grpc::Slice> slices_;
};

// A message with a repeated Tensor field, split for writing: the message's other fields
// (`header`), each tensor's fields but its data, and the sizes the length prefixes need.
class TensorsWriter {
 public:
  // `header` is written as it is (its `field` must be empty); `tensors` become the elements of
  // repeated Tensor field `field`.
  TensorsWriter(const google::protobuf::MessageLite& header, int field,
                std::vector<WireTensor> tensors)
      : header_(header), field_(field), tensors_(std::move(tensors)), written_(tensors_.size()) {
    size_ = header_.ByteSizeLong();
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const WireTensor& t = tensors_[i];
      Written& w = written_[i];
      TensorFieldsToProto(t, &w.fields);
      w.data_size = static_cast<size_t>(t.data.size(t.dtype));
      w.size = w.fields.ByteSizeLong();
      if (w.data_size > 0) {
        w.size += PrefixSize(v1::Tensor::kDataFieldNumber, w.data_size) + w.data_size;
      }
      size_ += PrefixSize(field_, w.size) + w.size;
    }
  }

  // The serialized size of the whole message.
  size_t size() const { return size_; }

  // Writes the message, handing over the tensors' bytes.
  void WriteTo(SliceWriter* out) {
    out->Message(header_);
    for (size_t i = 0; i < written_.size(); ++i) {
      const Written& w = written_[i];
      out->Prefix(field_, w.size);
      out->Message(w.fields);
      if (w.data_size == 0) continue;
      out->Prefix(v1::Tensor::kDataFieldNumber, w.data_size);
      out->Data(std::move(tensors_[i].data), tensors_[i].dtype);
    }
  }

 private:
  struct Written {
    v1::Tensor fields;  // without data
    size_t data_size = 0;
    size_t size = 0;  // of the whole Tensor message
  };

  const google::protobuf::MessageLite& header_;
  const int field_;
  std::vector<WireTensor> tensors_;
  std::vector<Written> written_;
  size_t size_ = 0;
};

// `out` as a StepResponse: its fields, then its parameters.
class StepResponseWriter {
 public:
  explicit StepResponseWriter(StepOutput out)
      : header_(Header(out)),
        tensors_(header_, v1::StepResponse::kParametersFieldNumber, std::move(out.parameters)) {}

  size_t size() const { return tensors_.size(); }
  void WriteTo(SliceWriter* out) { tensors_.WriteTo(out); }

 private:
  static v1::StepResponse Header(const StepOutput& out) {
    v1::StepResponse header;
    StepOutputToProto(out, &header);
    return header;
  }

  const v1::StepResponse header_;  // without parameters
  TensorsWriter tensors_;
};

// The longest varints protobuf reads: keys and lengths in at most 5 bytes (it refuses longer
// ones, even when their value would fit), other values in 10.
constexpr int kMaxKeyBytes = 5;
constexpr int kMaxLengthBytes = 5;
constexpr int kMaxVarintBytes = 10;

// Reads a message's wire format across the slices of a ByteBuffer. Every read returns false when
// the bytes run out.
class SliceReader {
 public:
  explicit SliceReader(const std::vector<grpc::Slice>& slices) : slices_(slices) { Settle(); }

  int64_t position() const { return position_; }
  bool done() const { return slice_ == slices_.size(); }

  // A varint of at most `max_bytes` bytes; false if it is longer.
  bool Varint(uint64_t* value, int max_bytes) {
    *value = 0;
    for (int shift = 0; shift < 7 * max_bytes; shift += 7) {
      if (done()) return false;
      const uint8_t byte = slices_[slice_].begin()[offset_];
      Advance(1);
      *value |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if ((byte & 0x80) == 0) return true;
    }
    return false;  // longer than protobuf reads
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
      if (!in->Varint(&n, kMaxVarintBytes)) return false;
      AppendVarint(n, out);
      return true;
    case WireFormatLite::WIRETYPE_FIXED64:
      return in->Copy(8, out);
    case WireFormatLite::WIRETYPE_FIXED32:
      return in->Copy(4, out);
    case WireFormatLite::WIRETYPE_LENGTH_DELIMITED:
      if (!in->Varint(&n, kMaxLengthBytes)) return false;
      AppendVarint(n, out);
      return in->Copy(n, out);
    default:
      return false;
  }
}

// One Tensor of `length` bytes from `in`: its fields but the data into out->fields, the data as
// pieces of the slices into out->data.
bool SplitTensor(uint64_t length, SliceReader* in, TensorMessage* out) {
  // protobuf refuses lengths of 2^31 or more: left to it (and `end` cannot overflow).
  if (length > static_cast<uint64_t>(std::numeric_limits<int32_t>::max())) return false;
  const int64_t end = in->position() + static_cast<int64_t>(length);
  std::string rest;
  std::vector<absl::string_view> pieces;
  while (in->position() < end) {
    uint64_t key = 0;
    if (!in->Varint(&key, kMaxKeyBytes) || key > UINT32_MAX) return false;
    const int field = static_cast<int>(key >> 3);
    const uint32_t wire_type = static_cast<uint32_t>(key & 7);
    if (field == v1::Tensor::kDataFieldNumber &&
        wire_type == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      uint64_t size = 0;
      if (!in->Varint(&size, kMaxLengthBytes)) return false;
      pieces.clear();  // a repeated singular field: the last one counts
      if (!in->Pieces(size, &pieces)) return false;
      continue;
    }
    AppendVarint(key, &rest);
    if (!CopyValue(wire_type, in, &rest)) return false;
  }
  if (in->position() != end || !out->fields.ParseFromString(rest)) return false;
  out->data = TensorBytes::Borrowed(std::move(pieces));
  return true;
}

// The walk of ParseStepRequest over `out->slices`; false if the bytes do not split cleanly.
bool SplitStepRequest(StepRequestBytes* out) {
  SliceReader in(out->slices);
  std::string rest;  // the request without its gradients
  while (!in.done()) {
    uint64_t key = 0;
    if (!in.Varint(&key, kMaxKeyBytes) || key > UINT32_MAX) return false;
    const uint32_t wire_type = static_cast<uint32_t>(key & 7);
    if (static_cast<int>(key >> 3) != v1::StepRequest::kGradientsFieldNumber ||
        wire_type != WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      AppendVarint(key, &rest);
      if (!CopyValue(wire_type, &in, &rest)) return false;
      continue;
    }
    uint64_t length = 0;
    if (!in.Varint(&length, kMaxLengthBytes)) return false;
    if (!SplitTensor(length, &in, &out->gradients.emplace_back())) return false;
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

void SerializeMessage(const google::protobuf::MessageLite& message, grpc::ByteBuffer* bytes) {
  SliceWriter writer;
  writer.Message(message);
  writer.Finish(bytes);
}

absl::Status ParseStepRequest(grpc::ByteBuffer* bytes, StepRequestBytes* out) {
  out->message.Clear();
  out->gradients.clear();
  out->slices.clear();
  if (bytes->Length() >= kMoveMinBytes && bytes->Dump(&out->slices).ok()) {
    if (SplitStepRequest(out)) {
      bytes->Clear();  // the slices live on in out->slices
      return absl::OkStatus();
    }
    out->message.Clear();
    out->gradients.clear();
    out->slices.clear();
  }
  if (absl::Status s = ParseMessage(bytes, &out->message); !s.ok()) return s;
  // The gradients as TensorMessages that own their data (moved, not copied).
  out->gradients.resize(out->message.gradients_size());
  for (int i = 0; i < out->message.gradients_size(); ++i) {
    TensorMessage& t = out->gradients[i];
    t.fields.Swap(out->message.mutable_gradients(i));
    t.data = TensorBytes::Owned(std::move(*t.fields.mutable_data()));
    t.fields.clear_data();
  }
  out->message.clear_gradients();
  return absl::OkStatus();
}

void SerializeStepResponse(StepOutput out, grpc::ByteBuffer* bytes) {
  SliceWriter writer(out.encoding);
  StepResponseWriter(std::move(out)).WriteTo(&writer);
  writer.Finish(bytes);
}

void SerializePullResponse(PullOutput out, const std::string& server_incarnation,
                           int64_t durable_version, grpc::ByteBuffer* bytes) {
  v1::PullResponse header;
  header.set_version(out.version);
  header.set_server_incarnation(server_incarnation);
  header.set_durable_version(durable_version);
  header.set_point(static_cast<v1::ParameterPoint>(out.point));
  if (out.optimizer_state.has_value()) {
    OptimizerStateToProto(*out.optimizer_state, out.tensor_names, header.mutable_optimizer_state());
  }
  SliceWriter writer(out.encoding);
  TensorsWriter(header, v1::PullResponse::kTensorsFieldNumber, std::move(out.tensors))
      .WriteTo(&writer);
  writer.Finish(bytes);
}

void SerializeStreamStepsReply(StepOutput out, grpc::ByteBuffer* bytes) {
  SliceWriter writer(out.encoding);
  StepResponseWriter reply(std::move(out));
  writer.Prefix(v1::StreamStepsResponse::kReplyFieldNumber, reply.size());
  reply.WriteTo(&writer);
  writer.Finish(bytes);
}

}  // namespace optd
