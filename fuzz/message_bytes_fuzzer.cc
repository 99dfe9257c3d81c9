// message_bytes_fuzzer: the service's own wire code (server/service/message_bytes.h) against
// protobuf's.
//
// Requests (the first byte even): ParseStepRequest over arbitrary bytes split into arbitrary gRPC
// slices must accept exactly what protobuf's parser accepts, and what it returns, reassembled
// (the message plus each gradient's fields and data), must serialize to the same bytes as what
// protobuf parsed; then ViewsOf and StepInputFromProto convert it, failing exactly on unknown enum
// values. Requests under kMoveMinBytes are parsed by protobuf whole, so a padding field of that
// size (unknown, or a gradient with that much data), before or after the fuzzed bytes, sends the
// rest through the hand-written walk. Layout:
//   byte 0        bit 0 = 0; (byte >> 1) % 5: no padding, unknown field before / after,
//                 gradient before / after
//   byte 1        k = byte % 16 cuts
//   2k bytes      the cuts, uint16 little-endian each, as offsets into the fuzzed bytes (modulo
//                 their length + 1; equal cuts make empty slices)
//   the rest      the fuzzed bytes, a slice between each two cuts
//
// Replies (the first byte odd): a StepOutput built from the rest (parameters owned, borrowed or
// shared, small or at least kMoveMinBytes, as F32, BF16 or F16) goes through
// SerializeStepResponse and SerializeStreamStepsReply; protobuf must parse both back into the
// message built directly from the same values, and no reference to the shared values may
// outlive the bytes.

#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "fuzz/fuzz_check.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/stubs/logging.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "optd/v1/optd.pb.h"
#include "server/service/message_bytes.h"
#include "server/service/proto_convert.h"
#include "wire/wire_dtype.h"

namespace optd {
namespace {

// `message` serialized deterministically: equal messages (unknown fields included) give equal
// bytes.
std::string CanonicalOf(const google::protobuf::MessageLite& message) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream stream(&bytes);
    google::protobuf::io::CodedOutputStream out(&stream);
    out.SetSerializationDeterministic(true);
    message.SerializeToCodedStream(&out);
  }
  return bytes;
}

// The bytes of length-delimited field `field` holding `payload`.
std::string Field(int field, const std::string& payload) {
  std::string out;
  {
    google::protobuf::io::StringOutputStream stream(&out);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.WriteTag(static_cast<uint32_t>(field) << 3 | 2);
    coded.WriteVarint32(static_cast<uint32_t>(payload.size()));
    coded.WriteRaw(payload.data(), static_cast<int>(payload.size()));
  }
  return out;
}

// Padding that makes a request long enough for the walk: an unknown field (number 1000), or a
// gradient "pad" with kMoveMinBytes of F32 data.
std::string Padding(bool gradient) {
  if (!gradient) return Field(1000, std::string(kMoveMinBytes, '\x5a'));
  v1::Tensor t;
  t.set_name("pad");
  t.add_shape(kMoveMinBytes / 4);
  std::string data(kMoveMinBytes, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7);
  t.set_data(std::move(data));
  return Field(v1::StepRequest::kGradientsFieldNumber, t.SerializeAsString());
}

void FuzzRequest(const uint8_t* data, size_t size) {
  const int padding = (data[0] >> 1) % 5;
  size_t at = 1;
  const int cuts = at < size ? data[at++] % 16 : 0;
  std::vector<uint16_t> raw_cuts;
  for (int i = 0; i < cuts && at + 2 <= size; ++i, at += 2) {
    raw_cuts.push_back(static_cast<uint16_t>(data[at] | data[at + 1] << 8));
  }
  const std::string fuzzed(reinterpret_cast<const char*>(data) + std::min(at, size),
                           size - std::min(at, size));
  std::vector<size_t> offsets;
  for (const uint16_t c : raw_cuts) offsets.push_back(c % (fuzzed.size() + 1));
  std::sort(offsets.begin(), offsets.end());

  // The slices, and the same bytes in one string for protobuf.
  std::vector<grpc::Slice> slices;
  std::string whole;
  auto add = [&](absl::string_view bytes) {
    slices.emplace_back(bytes.data(), bytes.size());  // a copy: its own allocation
    whole.append(bytes.data(), bytes.size());
  };
  const std::string pad = padding == 0 ? "" : Padding(/*gradient=*/padding >= 3);
  const bool pad_before = padding == 1 || padding == 3;
  if (!pad.empty() && pad_before) add(pad);
  size_t from = 0;
  for (const size_t cut : offsets) {
    add(absl::string_view(fuzzed).substr(from, cut - from));
    from = cut;
  }
  add(absl::string_view(fuzzed).substr(from));
  if (!pad.empty() && !pad_before) add(pad);

  grpc::ByteBuffer bytes(slices.data(), slices.size());
  slices.clear();  // the ByteBuffer holds its own references
  StepRequestBytes parsed;
  parsed.gradients.emplace_back();  // replaced
  const absl::Status status = ParseStepRequest(&bytes, &parsed);
  FUZZ_CHECK(bytes.Length() == 0, "ParseStepRequest clears its input");

  v1::StepRequest want;
  const bool protobuf_ok = want.ParseFromString(whole);
  FUZZ_CHECK(status.ok() == protobuf_ok,
             absl::StrCat("ParseStepRequest: ", status.ToString(),
                          "; protobuf: ", protobuf_ok ? "parsed" : "refused", " (", whole.size(),
                          " bytes, ", offsets.size() + 1, " slices)"));
  if (!status.ok()) {
    FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument, status.ToString());
    return;
  }
  FUZZ_CHECK(parsed.message.gradients_size() == 0);
  v1::StepRequest got = parsed.message;
  for (const TensorMessage& g : parsed.gradients) {
    FUZZ_CHECK(g.fields.data().empty());
    v1::Tensor* t = got.add_gradients();
    *t = g.fields;
    t->set_data(g.data.Flatten(WireDType::kF32));
  }
  FUZZ_CHECK(CanonicalOf(got) == CanonicalOf(want),
             absl::StrCat("reassembled request differs from protobuf's (", whole.size(), " bytes, ",
                          offsets.size() + 1, " slices)"));

  // The conversions the service runs next.
  bool dtypes_known = true;
  for (const TensorMessage& g : parsed.gradients) {
    dtypes_known &= v1::DType_IsValid(g.fields.dtype());
  }
  const absl::StatusOr<std::vector<WireTensorView>> views = ViewsOf("gradients", parsed.gradients);
  FUZZ_CHECK(views.ok() == dtypes_known, views.status().ToString());
  if (views.ok()) {
    FUZZ_CHECK(views->size() == parsed.gradients.size());
    for (size_t i = 0; i < views->size(); ++i) {
      const WireTensorView& v = (*views)[i];
      const v1::Tensor& w = want.gradients(static_cast<int>(i));
      FUZZ_CHECK(v.name == w.name());
      FUZZ_CHECK(std::equal(v.shape.begin(), v.shape.end(), w.shape().begin(), w.shape().end()));
      FUZZ_CHECK(static_cast<int>(v.dtype) == w.dtype());
      FUZZ_CHECK(v.has_rows == w.has_rows());
      FUZZ_CHECK(std::equal(v.rows.begin(), v.rows.end(), w.rows().indices().begin(),
                            w.rows().indices().end()));
      FUZZ_CHECK(v.data.size(v.dtype) == static_cast<int64_t>(w.data().size()));
      FUZZ_CHECK(v.data.Flatten(v.dtype) == w.data());
    }
  } else {
    FUZZ_CHECK(views.status().code() == absl::StatusCode::kInvalidArgument);
  }
  const absl::StatusOr<StepInput> input = StepInputFromProto(parsed.message);
  FUZZ_CHECK(input.ok() == (v1::DType_IsValid(want.return_dtype()) &&
                            v1::ReturnParameters_IsValid(want.return_parameters()) &&
                            want.worker_incarnation() >= 0 &&
                            v1::ParameterPoint_IsValid(want.return_point())),
             input.status().ToString());
  if (input.ok()) {
    FUZZ_CHECK(input->worker_id == want.worker_id());
    FUZZ_CHECK(input->sequence == want.sequence());
    FUZZ_CHECK(input->worker_incarnation == want.worker_incarnation());
    FUZZ_CHECK(static_cast<int>(input->return_point) == want.return_point());
    FUZZ_CHECK(input->version.has_value() == want.has_version());
    FUZZ_CHECK(input->loss.has_value() == want.has_loss());
    FUZZ_CHECK(static_cast<int>(input->return_dtype) == want.return_dtype());
    FUZZ_CHECK(static_cast<int>(input->return_mode) == want.return_parameters());
  } else {
    FUZZ_CHECK(input.status().code() == absl::StatusCode::kInvalidArgument);
  }
}

// A string of up to `max` characters; ASCII, as every string optd replies with is valid UTF-8
// (names it validated, worker ids protobuf parsed), and proto3 refuses strings that are not.
std::string AsciiOf(FuzzedDataProvider& in, size_t max) {
  std::string s = in.ConsumeRandomLengthString(max);
  for (char& c : s) c &= 0x7f;
  return s;
}

double DoubleOf(uint64_t bits) {
  double d;
  std::memcpy(&d, &bits, sizeof(d));
  return d;
}

// A tensor's data, in one of the forms a reply's parameters take, and the bytes it stands for.
struct Data {
  TensorBytes bytes;
  std::string encoded;
  std::weak_ptr<const std::vector<float>> shared;  // shared form: the values
};

// Bytes of about kMoveMinBytes (a little under, at or over it), filled from `seed`.
std::string Large(size_t size, uint8_t seed) {
  std::string s(size, '\0');
  for (size_t i = 0; i < size; ++i) s[i] = static_cast<char>(seed + i * 31 + (i >> 9));
  return s;
}

Data PickData(FuzzedDataProvider& in, WireDType dtype, std::vector<std::string>* keep) {
  Data d;
  const int width = static_cast<int>(BytesPerElement(dtype));
  const bool large = in.ConsumeBool();
  const size_t large_size = kMoveMinBytes + in.ConsumeIntegralInRange<int>(-2, 2) * width;
  switch (in.ConsumeIntegralInRange<int>(0, 2)) {
    case 0:  // owned
      d.encoded = large ? Large(large_size, in.ConsumeIntegral<uint8_t>())
                        : in.ConsumeRandomLengthString(256);
      d.bytes = TensorBytes::Owned(d.encoded);
      return d;
    case 1: {  // borrowed, in up to 4 pieces of a string kept in *keep
      keep->push_back(large ? Large(large_size, in.ConsumeIntegral<uint8_t>())
                            : in.ConsumeRandomLengthString(256));
      const std::string& all = keep->back();
      std::vector<absl::string_view> pieces;
      size_t at = 0;
      for (int i = in.ConsumeIntegralInRange<int>(0, 3); i > 0; --i) {
        const size_t take = in.ConsumeIntegralInRange<size_t>(0, all.size() - at);
        pieces.push_back(absl::string_view(all).substr(at, take));
        at += take;
      }
      pieces.push_back(absl::string_view(all).substr(at));
      d.encoded = all;
      d.bytes = TensorBytes::Borrowed(std::move(pieces));
      return d;
    }
    default: {  // shared floats, encoded as `dtype` when written
      std::string raw = large ? Large(large_size / width * 4, in.ConsumeIntegral<uint8_t>())
                              : in.ConsumeRandomLengthString(256);
      auto floats = std::make_shared<std::vector<float>>(raw.size() / 4);
      if (!floats->empty()) std::memcpy(floats->data(), raw.data(), floats->size() * 4);
      EncodeFloats(dtype, *floats, &d.encoded);
      d.shared = floats;
      d.bytes = TensorBytes::Shared(std::move(floats));
      return d;
    }
  }
}

void FuzzReply(FuzzedDataProvider& in) {
  StepOutput out;
  v1::StepResponse want;
  out.version = in.ConsumeIntegral<int64_t>();
  want.set_version(out.version);
  out.gradient_norm = DoubleOf(in.ConsumeIntegral<uint64_t>());
  want.set_gradient_norm(out.gradient_norm);
  out.learning_rate = DoubleOf(in.ConsumeIntegral<uint64_t>());
  want.set_learning_rate(out.learning_rate);
  out.duplicate = in.ConsumeBool();
  want.set_duplicate(out.duplicate);
  out.parameters_version = in.ConsumeIntegral<int64_t>();
  want.set_parameters_version(out.parameters_version);
  out.workers = in.ConsumeIntegral<int>();
  want.set_workers(out.workers);
  for (int i = in.ConsumeIntegralInRange<int>(0, 3); i > 0; --i) {
    out.missing_workers.push_back(AsciiOf(in, 16));
    want.add_missing_workers(out.missing_workers.back());
  }
  out.staleness = in.ConsumeIntegral<int64_t>();
  want.set_staleness(out.staleness);
  out.non_finite_parameters = in.ConsumeIntegral<int64_t>();
  want.set_non_finite_parameters(out.non_finite_parameters);
  for (int i = in.ConsumeIntegralInRange<int>(0, 2); i > 0; --i) {
    out.non_finite_tensors.push_back(AsciiOf(in, 16));
    want.add_non_finite_tensors(out.non_finite_tensors.back());
  }
  out.server_incarnation = AsciiOf(in, 16);
  want.set_server_incarnation(out.server_incarnation);
  out.durable_version = in.ConsumeIntegral<int64_t>();
  want.set_durable_version(out.durable_version);

  std::vector<std::string> keep;  // what borrowed data borrows
  keep.reserve(8);
  std::vector<std::weak_ptr<const std::vector<float>>> shared;
  for (int n = in.ConsumeIntegralInRange<int>(0, 4); n > 0; --n) {
    WireTensor t;
    v1::Tensor* w = want.add_parameters();
    t.name = AsciiOf(in, 16);
    w->set_name(t.name);
    for (int r = in.ConsumeIntegralInRange<int>(0, 3); r > 0; --r) {
      t.shape.push_back(in.ConsumeIntegral<int64_t>());
      w->add_shape(t.shape.back());
    }
    t.dtype = static_cast<WireDType>(in.ConsumeIntegralInRange<int>(0, 2));
    w->set_dtype(static_cast<v1::DType>(t.dtype));
    t.has_rows = in.ConsumeBool();
    if (t.has_rows) {
      w->mutable_rows();  // present even when empty
      for (int r = in.ConsumeIntegralInRange<int>(0, 4); r > 0; --r) {
        t.rows.push_back(in.ConsumeIntegral<int64_t>());
        w->mutable_rows()->add_indices(t.rows.back());
      }
    }
    Data d = PickData(in, t.dtype, &keep);
    t.data = std::move(d.bytes);
    w->set_data(d.encoded);
    if (!d.shared.expired()) shared.push_back(d.shared);
    out.parameters.push_back(std::move(t));
  }
  const std::string want_bytes = CanonicalOf(want);
  v1::StreamStepsResponse want_stream;
  *want_stream.mutable_reply() = want;
  const std::string want_stream_bytes = CanonicalOf(want_stream);

  grpc::ByteBuffer stream_bytes;
  SerializeStreamStepsReply(out, &stream_bytes);  // a copy: shares the same values
  grpc::ByteBuffer bytes;
  SerializeStepResponse(std::move(out), &bytes);
  FUZZ_CHECK(bytes.Length() == want.ByteSizeLong(),
             absl::StrCat(bytes.Length(), " bytes; protobuf: ", want.ByteSizeLong()));
  FUZZ_CHECK(stream_bytes.Length() == want_stream.ByteSizeLong());

  v1::StepResponse got;
  const absl::Status parsed = ParseMessage(&bytes, &got);
  FUZZ_CHECK(parsed.ok(), parsed.ToString());
  FUZZ_CHECK(CanonicalOf(got) == want_bytes, "StepResponse parsed back differs");
  v1::StreamStepsResponse got_stream;
  const absl::Status parsed_stream = ParseMessage(&stream_bytes, &got_stream);
  FUZZ_CHECK(parsed_stream.ok(), parsed_stream.ToString());
  FUZZ_CHECK(CanonicalOf(got_stream) == want_stream_bytes,
             "StreamStepsResponse parsed back differs");
  // The bytes are gone: nothing may still hold the shared values.
  for (const auto& w : shared) FUZZ_CHECK(w.expired(), "a reply's slice outlived its bytes");
}

}  // namespace
}  // namespace optd

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // protobuf logs every string that is not UTF-8 it refuses; the fuzzer makes many.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  if ((data[0] & 1) == 0) {
    optd::FuzzRequest(data, size);
  } else {
    FuzzedDataProvider in(data + 1, size - 1);
    optd::FuzzReply(in);
  }
  return 0;
}
