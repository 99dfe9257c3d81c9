// File: message_bytes.h
//
// The Step and Pull methods' messages to and from gRPC's bytes, done by the service itself rather
// than by gRPC's generated code, so that tensor data is not copied on its way in or out. A
// StepResponse carries each returned tensor's values in Tensor.data (4 MB for a million float32
// parameters); protobuf's serializer would copy every one of them into slices of its own, and its
// parser would copy a request's gradients into strings.
//
// Replies (SerializeStepResponse, SerializeStreamStepsReply, SerializePullResponse) are written
// from the domain's StepOutput or PullOutput: each returned tensor's TensorBytes
// (wire/tensor_bytes.h) goes into the ByteBuffer as it is: owned bytes of at least kMoveMinBytes
// are moved into a slice of their own, shared F32 values are referenced by a slice that holds the
// reference (gRPC drops it once sent), shared values sent as BF16 or F16 are encoded straight into
// a slice (on the pool when large). Only the rest of the message is serialized. The bytes are a
// valid serialization of the same message: fields may come in another order than protobuf's own
// serializer writes them, which every protobuf parser accepts (message_bytes_test.cc parses them
// back).
//
// Requests (ParseStepRequest) the other way: each gradient's data is left where gRPC received it,
// as borrowed pieces of gRPC's slices, for the session to read while it checks and measures the
// gradient (one pass, on the pool), instead of protobuf copying it into the message first.
//
// Who calls it: OptimizerServiceImpl's handlers (every method is registered raw: ParseMessage and
// SerializeMessage serve the small messages).
// Stateless functions, thread-safe on distinct arguments.
//
// Errors: ParseMessage and ParseStepRequest return InvalidArgument when the bytes are not a valid
// message of the expected type, naming the type.

#ifndef OPTD_SERVER_SERVICE_MESSAGE_BYTES_H_
#define OPTD_SERVER_SERVICE_MESSAGE_BYTES_H_

#include <cstddef>
#include <vector>

#include "absl/status/status.h"
#include "google/protobuf/message_lite.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "optd/v1/optd.pb.h"
#include "server/service/proto_convert.h"
#include "server/session/session.h"
#include "server/session/step.h"

namespace optd {

// Tensor data at least this long goes into a slice of its own; shorter data is copied with the
// rest of the message (a slice of its own would cost more than the copy).
inline constexpr size_t kMoveMinBytes = 64 * 1024;

// Parses `*bytes` into `*message` (cleared first) and clears `*bytes`.
absl::Status ParseMessage(grpc::ByteBuffer* bytes, google::protobuf::MessageLite* message);

// Serializes `message` into `*bytes` (a copy: for small messages).
void SerializeMessage(const google::protobuf::MessageLite& message, grpc::ByteBuffer* bytes);

// A StepRequest read from gRPC's bytes: every field but the gradients in `message` (its gradients
// field is empty), and each gradient as a TensorMessage whose data borrows from `slices` (or, for
// requests parsed by protobuf whole, owns it).
struct StepRequestBytes {
  v1::StepRequest message;
  std::vector<TensorMessage> gradients;
  std::vector<grpc::Slice> slices;  // what the gradients' data borrows
};

// Parses `*bytes` into `*out` (replacing what it held) and clears `*bytes`. Requests under
// kMoveMinBytes, and bytes the walk cannot split cleanly, are parsed by protobuf whole, so what is
// refused and how is ParseMessage's.
absl::Status ParseStepRequest(grpc::ByteBuffer* bytes, StepRequestBytes* out);

// Serializes `out` as a StepResponse into `*bytes`, taking its parameters' bytes.
void SerializeStepResponse(StepOutput out, grpc::ByteBuffer* bytes);

// The same as a StreamStepsResponse whose `reply` it is.
void SerializeStreamStepsReply(StepOutput out, grpc::ByteBuffer* bytes);

// Serializes `out` as a PullResponse into `*bytes`, taking its tensors' bytes, with the server's
// incarnation and the session's durable version.
void SerializePullResponse(PullOutput out, const std::string& server_incarnation,
                           int64_t durable_version, grpc::ByteBuffer* bytes);

}  // namespace optd

#endif  // OPTD_SERVER_SERVICE_MESSAGE_BYTES_H_
