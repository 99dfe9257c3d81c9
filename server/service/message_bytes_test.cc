// message_bytes: a reply serialized with its parameter bytes moved or shared parses back into the
// very message protobuf would have sent, whatever the sizes, and lets go of what it shared once
// its bytes are dropped; a request that is not one is refused.

#include "server/service/message_bytes.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "grpcpp/support/proto_buffer_reader.h"
#include "gtest/gtest.h"

namespace optd {
namespace {

using ::google::protobuf::util::MessageDifferencer;
using ::testing::HasSubstr;

v1::Tensor TensorOf(const std::string& name, size_t bytes, char fill) {
  v1::Tensor t;
  t.set_name(name);
  t.add_shape(static_cast<int64_t>(bytes / 4));
  t.set_dtype(v1::DTYPE_F32);
  std::string data(bytes, fill);
  for (size_t i = 0; i < bytes; i += 97) data[i] = static_cast<char>(i);  // not all alike
  t.set_data(std::move(data));
  return t;
}

// A reply with every field set and tensors of the given data sizes: small ones (copied), large
// ones (moved), empty ones, and sizes whose length prefixes take 1, 2 and 3 bytes.
v1::StepResponse ReplyWith(const std::vector<size_t>& data_sizes) {
  v1::StepResponse r;
  r.set_version(41);
  r.set_gradient_norm(2.5);
  r.set_learning_rate(1e-3);
  r.set_duplicate(true);
  r.set_parameters_version(40);
  r.set_workers(3);
  r.add_missing_workers("w7");
  r.set_staleness(1);
  for (size_t i = 0; i < data_sizes.size(); ++i) {
    *r.add_parameters() = TensorOf("t" + std::to_string(i), data_sizes[i], 'a' + i);
  }
  r.mutable_parameters(0)->mutable_rows()->add_indices(5);
  return r;
}

// `reply` as the session's StepOutput: the data of its odd-numbered tensors as shared floats (as
// the session shares F32 parameters), the others owned. Weak references to the shared values go to
// `*weak`.
StepOutput OutputOf(const v1::StepResponse& reply,
                    std::vector<std::weak_ptr<const std::vector<float>>>* weak = nullptr) {
  StepOutput out;
  out.version = reply.version();
  out.gradient_norm = reply.gradient_norm();
  out.learning_rate = reply.learning_rate();
  out.duplicate = reply.duplicate();
  out.parameters_version = reply.parameters_version();
  out.workers = reply.workers();
  out.missing_workers.assign(reply.missing_workers().begin(), reply.missing_workers().end());
  out.staleness = reply.staleness();
  out.durable_version = reply.durable_version();
  out.server_incarnation = reply.server_incarnation();
  for (int i = 0; i < reply.parameters_size(); ++i) {
    const v1::Tensor& t = reply.parameters(i);
    WireTensor w{t.name(), {t.shape().begin(), t.shape().end()}, static_cast<WireDType>(t.dtype())};
    w.has_rows = t.has_rows();
    w.rows.assign(t.rows().indices().begin(), t.rows().indices().end());
    if (i % 2 == 1 && t.dtype() == v1::DTYPE_F32) {
      auto floats = std::make_shared<std::vector<float>>(t.data().size() / 4);
      std::memcpy(floats->data(), t.data().data(), t.data().size());
      if (weak != nullptr) weak->push_back(floats);
      w.data = TensorBytes::Shared(std::move(floats));
    } else {
      w.data = TensorBytes::Owned(t.data());
    }
    out.parameters.push_back(std::move(w));
  }
  return out;
}

template <typename Message>
Message Parsed(grpc::ByteBuffer* bytes) {
  Message m;
  absl::Status s = ParseMessage(bytes, &m);
  EXPECT_TRUE(s.ok()) << s;
  return m;
}

const std::vector<std::vector<size_t>> kSizes = {
    {0},
    {12},
    {kMoveMinBytes - 4},
    {kMoveMinBytes},
    {4000000},
    {4000000, 12, 0, kMoveMinBytes + 4, 3 << 20},
    {12, 4000000},
};

TEST(MessageBytesTest, StepResponseParsesBackEqual) {
  for (const std::vector<size_t>& sizes : kSizes) {
    const v1::StepResponse want = ReplyWith(sizes);
    std::vector<std::weak_ptr<const std::vector<float>>> weak;
    StepOutput out = OutputOf(want, &weak);
    grpc::ByteBuffer bytes;
    SerializeStepResponse(std::move(out), &bytes);
    EXPECT_EQ(bytes.Length(), want.ByteSizeLong());
    const v1::StepResponse got = Parsed<v1::StepResponse>(&bytes);
    EXPECT_TRUE(MessageDifferencer::Equals(got, want)) << "sizes[0] = " << sizes[0];
    // Once gRPC has let go of the bytes, nothing holds the shared values any more.
    for (const auto& w : weak) EXPECT_TRUE(w.expired());
  }
}

TEST(MessageBytesTest, StreamStepsResponseParsesBackEqual) {
  for (const std::vector<size_t>& sizes : kSizes) {
    v1::StreamStepsResponse want;
    *want.mutable_reply() = ReplyWith(sizes);
    grpc::ByteBuffer bytes;
    SerializeStreamStepsReply(OutputOf(want.reply()), &bytes);
    EXPECT_EQ(bytes.Length(), want.ByteSizeLong());
    EXPECT_TRUE(MessageDifferencer::Equals(Parsed<v1::StreamStepsResponse>(&bytes), want));
  }
  v1::StreamStepsResponse error;
  error.mutable_error()->set_code(10);
  error.mutable_error()->set_message("stale");
  error.mutable_error()->set_current_version(7);
  grpc::ByteBuffer bytes;
  SerializeMessage(error, &bytes);
  EXPECT_TRUE(MessageDifferencer::Equals(Parsed<v1::StreamStepsResponse>(&bytes), error));
}

TEST(MessageBytesTest, SharedValuesAreEncodedInTheTensorsDType) {
  for (const size_t n : {size_t{3}, size_t{1} << 20}) {  // appended, and a slice of its own
    auto floats = std::make_shared<std::vector<float>>(n);
    for (size_t i = 0; i < n; ++i) (*floats)[i] = 0.001f * static_cast<float>(i) - 7.0f;
    for (const v1::DType dtype : {v1::DTYPE_F32, v1::DTYPE_BF16, v1::DTYPE_F16}) {
      v1::StepResponse want = ReplyWith({0});
      want.mutable_parameters(0)->set_dtype(dtype);
      EncodeFloats(static_cast<WireDType>(dtype), *floats,
                   want.mutable_parameters(0)->mutable_data());
      StepOutput out = OutputOf(want);
      out.parameters[0].data = TensorBytes::Shared(floats);
      grpc::ByteBuffer bytes;
      SerializeStepResponse(std::move(out), &bytes);
      EXPECT_EQ(bytes.Length(), want.ByteSizeLong());
      EXPECT_TRUE(MessageDifferencer::Equals(Parsed<v1::StepResponse>(&bytes), want))
          << "n = " << n << ", dtype " << dtype;
    }
  }
}

// `bytes` as a ByteBuffer of slices of `slice_size` bytes (the last shorter), as gRPC hands over a
// large message in pieces.
grpc::ByteBuffer InSlices(const std::string& bytes, size_t slice_size) {
  std::vector<grpc::Slice> slices;
  for (size_t at = 0; at < bytes.size(); at += slice_size) {
    slices.emplace_back(bytes.data() + at, std::min(slice_size, bytes.size() - at));
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

// The request `got` holds, put back together.
v1::StepRequest Whole(const StepRequestBytes& got) {
  v1::StepRequest whole = got.message;
  for (const TensorMessage& t : got.gradients) {
    v1::Tensor* g = whole.add_gradients();
    *g = t.fields;
    g->set_data(t.data.Flatten(static_cast<WireDType>(t.fields.dtype())));
  }
  return whole;
}

v1::StepRequest LargeRequest() {
  v1::StepRequest r;
  r.set_session_id("s");
  r.set_worker_id("w1");
  r.set_sequence(7);
  r.set_version(3);
  r.set_loss(0.25);
  r.set_return_dtype(v1::DTYPE_BF16);
  *r.add_gradients() = TensorOf("dense", 300000, 'a');
  *r.add_gradients() = TensorOf("sparse", 100000, 'b');
  r.mutable_gradients(1)->mutable_rows()->add_indices(4);
  *r.add_gradients() = TensorOf("small", 8, 'c');
  *r.add_gradients() = TensorOf("empty", 0, 'd');
  return r;
}

TEST(MessageBytesTest, ParseStepRequestLeavesGradientsInTheSlices) {
  const v1::StepRequest want = LargeRequest();
  for (const size_t slice_size : {size_t{7}, size_t{16384}, size_t{1} << 30}) {
    grpc::ByteBuffer bytes = InSlices(want.SerializeAsString(), slice_size);
    StepRequestBytes got;
    ASSERT_TRUE(ParseStepRequest(&bytes, &got).ok()) << slice_size;
    EXPECT_EQ(bytes.Length(), 0u);
    EXPECT_EQ(got.message.gradients_size(), 0);
    ASSERT_EQ(got.gradients.size(), 4u);
    // The data is in the slices, borrowed, dense and row-sparse alike; the other fields parsed.
    for (int i = 0; i < 4; ++i) {
      const TensorMessage& t = got.gradients[i];
      if (!want.gradients(i).data().empty()) {
        EXPECT_EQ(t.data.kind(), TensorBytes::Kind::kBorrowed) << i;
      }
      EXPECT_EQ(t.data.Flatten(WireDType::kF32), want.gradients(i).data()) << i;
      EXPECT_EQ(t.fields.data(), "");
      EXPECT_EQ(t.fields.name(), want.gradients(i).name());
    }
    EXPECT_TRUE(got.gradients[1].fields.has_rows());
    // Everything else is as sent.
    EXPECT_TRUE(MessageDifferencer::Equals(Whole(got), want)) << slice_size;
  }
}

TEST(MessageBytesTest, ParseStepRequestOfSmallOrUnusualBytesIsProtobufs) {
  // Small: parsed whole; the gradients own their data.
  v1::StepRequest small;
  small.set_session_id("s");
  *small.add_gradients() = TensorOf("w", 16, 'a');
  grpc::ByteBuffer bytes = InSlices(small.SerializeAsString(), 5);
  StepRequestBytes got;
  ASSERT_TRUE(ParseStepRequest(&bytes, &got).ok());
  EXPECT_TRUE(MessageDifferencer::Equals(Whole(got), small));
  ASSERT_EQ(got.gradients.size(), 1u);
  EXPECT_EQ(got.gradients[0].data.kind(), TensorBytes::Kind::kOwned);
  EXPECT_TRUE(got.slices.empty());
  // Large but truncated: refused as ParseMessage refuses it.
  const std::string whole = LargeRequest().SerializeAsString();
  bytes = InSlices(whole.substr(0, whole.size() - 10), 4096);
  absl::Status s = ParseStepRequest(&bytes, &got);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("not a valid optd.v1.StepRequest message"));
  // Large with a field the walk does not split (a group, wire type 3, ended by wire type 4):
  // protobuf gets the bytes whole and keeps it as an unknown field, as it always did.
  v1::StepRequest large = LargeRequest();
  std::string with_group = large.SerializeAsString();
  with_group += std::string("\xa3\x06\xa4\x06", 4);  // field 100, start group / end group
  bytes = InSlices(with_group, 4096);
  ASSERT_TRUE(ParseStepRequest(&bytes, &got).ok());
  ASSERT_EQ(got.gradients.size(), 4u);
  EXPECT_EQ(got.gradients[0].data.kind(), TensorBytes::Kind::kOwned);
  EXPECT_EQ(got.gradients[0].data.Flatten(WireDType::kF32), large.gradients(0).data());
}

TEST(MessageBytesTest, ParseMessageRefusesBytesThatAreNotTheMessage) {
  const std::string garbage = "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01";
  grpc::Slice slice(garbage.data(), garbage.size());
  grpc::ByteBuffer bytes(&slice, 1);
  v1::StepRequest request;
  request.set_session_id("left over");
  absl::Status s = ParseMessage(&bytes, &request);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("not a valid optd.v1.StepRequest message"));
  EXPECT_EQ(request.session_id(), "");
  EXPECT_EQ(bytes.Length(), 0u);
}

}  // namespace
}  // namespace optd
