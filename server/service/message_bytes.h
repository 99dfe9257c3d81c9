// File: message_bytes.h
//
// The Step methods' messages to and from gRPC's bytes, done by the service itself rather than by
// gRPC's generated code, so that a step reply's parameter bytes are not copied on their way out. A
// StepResponse carries each returned tensor's values in Tensor.data (4 MB for a million float32
// parameters); gRPC's protobuf serialization would copy every one of them into slices of its own.
// Here the values of at least kMoveMinBytes go into slices of the ByteBuffer without a copy: a
// data string is moved into its slice, and F32 parameters the session shares (SharedFloats, see
// wire_tensor.h) are referenced by theirs; shared parameters returned as BF16 or F16 are encoded
// straight into theirs. gRPC drops the slices once it has sent them. Only the rest of the message
// is serialized.
//
// The bytes are a valid serialization of the same message: fields may come in another order than
// protobuf's own serializer writes them, which every protobuf parser accepts (parsed back, the
// message compares equal; message_bytes_test.cc).
//
// Requests the other way: ParseStepRequest leaves a dense gradient's data where gRPC received it,
// in its slices, for the session to read while it checks and measures the gradient (one pass, on
// the pool), instead of protobuf copying it into the message first.
//
// Who calls it: OptimizerServiceImpl's Step and StreamSteps handlers (registered as raw methods).
// Stateless functions, thread-safe on distinct arguments; large BF16/F16 encodes run on
// ThreadPool::Default() (server/optim/parallel.h).
//
// Errors: ParseMessage returns InvalidArgument when the bytes are not a valid message of the
// expected type, naming the type.

#ifndef OPTD_SERVER_SERVICE_MESSAGE_BYTES_H_
#define OPTD_SERVER_SERVICE_MESSAGE_BYTES_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message_lite.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "optd/v1/optd.pb.h"
#include "server/session/wire_tensor.h"

namespace optd {

// Tensor data strings at least this long are moved into a slice of their own; shorter ones are
// copied with the rest of the message (a slice of their own would cost more than the copy).
inline constexpr size_t kMoveMinBytes = 64 * 1024;

// Parses `*bytes` into `*message` (cleared first) and clears `*bytes`.
absl::Status ParseMessage(grpc::ByteBuffer* bytes, google::protobuf::MessageLite* message);

// A StepRequest read from gRPC's bytes without copying its dense gradients' data: `message` holds
// every field but that data (their data fields are empty), and pieces[i] lists where the data of
// message.gradients(i) lies in gRPC's slices, in order. pieces[i] is empty when the data is in the
// message: for row-sparse gradients, and for requests under kMoveMinBytes (parsed whole).
struct StepRequestBytes {
  v1::StepRequest message;
  std::vector<std::vector<absl::string_view>> pieces;
  std::vector<grpc::Slice> slices;  // keep the pieces alive
};

// Parses `*bytes` into `*out` (replacing what it held) and clears `*bytes`. Bytes it cannot split
// are handed to protobuf whole, so what is refused and how is ParseMessage's.
absl::Status ParseStepRequest(grpc::ByteBuffer* bytes, StepRequestBytes* out);

// Serializes `*reply` into `*out`. The data of reply.parameters(i) is shared[i] encoded as that
// tensor's dtype when i < shared.size() and shared[i] is set (the tensor's data field is then
// empty), else its data field.
// On return each of reply's tensors may have an empty data field and `shared` is cleared; every
// other field is unchanged.
void SerializeStepResponse(v1::StepResponse* reply, std::vector<SharedFloats>* shared,
                           grpc::ByteBuffer* out);

// The same for a StreamStepsResponse: its reply, if it holds one, as SerializeStepResponse.
void SerializeStreamStepsResponse(v1::StreamStepsResponse* response,
                                  std::vector<SharedFloats>* shared, grpc::ByteBuffer* out);

}  // namespace optd

#endif  // OPTD_SERVER_SERVICE_MESSAGE_BYTES_H_
