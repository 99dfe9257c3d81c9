// File: module.cc
//
// optd._native: the Python client's native data path, a pybind11 module over the C++ client
// (client/cpp). optd/native.py is its only caller and owns the Python-facing API; this file only
// moves bytes:
//   - gradients are read in place from the caller's C-contiguous float32 buffers (the buffer
//     protocol: numpy arrays, or torch CPU tensors through Tensor.numpy()) and encoded once into
//     the request (F32 copied, BF16/F16 converted natively);
//   - reply tensors are decoded straight into caller-given writable buffers (`out`), or returned
//     as numpy arrays: an F32 tensor as a read-only view of the reply's bytes (no copy), BF16/F16
//     decoded natively;
//   - the GIL is released while encoding, calling (with the C++ client's retries) and decoding,
//     so threads of one process overlap.
//
// The channel is plaintext or TLS made of the PEM bytes optd.Client read (optd/security.py); the
// token travels in the metadata optd.Client passes, and refusals come back with gRPC's message
// for optd/native.py to explain as the pure path does (ClientOptions::explain_refusals = false).
//
// Client.step returns StepResult's fields as a tuple (see Fields). A failed step raises
// optd._native.StatusError whose args are (code, message, current_version or None, rejoin,
// server_incarnation, attempts); optd/native.py turns it into the typed OptdError.
//
// Thread safety: a Client may be used from several Python threads at once (the C++ Client is
// thread-safe); a StepReply is immutable.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/cpp/client.h"
#include "client/cpp/credentials.h"
#include "client/cpp/retry.h"
#include "client/python/native/step_codec.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "optd/v1/optd.pb.h"

namespace py = pybind11;

namespace optd {
namespace python {
namespace {

// Set in PYBIND11_MODULE, and by set_row_sparse (never freed: they live as long as the module).
PyObject* status_error = nullptr;
py::object* row_sparse = new py::object(py::none());

// Decoding above this many elements releases the GIL (below it, the switch costs more).
constexpr int64_t kReleaseGilElements = 64 * 1024;

[[noreturn]] void Raise(const absl::Status& status, int attempts) {
  py::object current = py::none();
  if (std::optional<int64_t> v = client::CurrentVersion(status); v.has_value()) {
    current = py::int_(*v);
  }
  py::tuple args =
      py::make_tuple(static_cast<int>(status.code()), std::string(status.message()), current,
                     client::NeedsRejoin(status), client::ServerIncarnation(status), attempts);
  PyErr_SetObject(status_error, args.ptr());
  throw py::error_already_set();
}

// `buffer`'s memory as row-major float32 elements; TypeError (ValueError) otherwise.
const float* FloatData(const py::buffer_info& b, const std::string& name) {
  if (b.itemsize != 4 || b.format.empty() || b.format.back() != 'f') {
    throw py::type_error(
        absl::StrCat("tensor '", name, "': the native path needs float32, not ", b.format));
  }
  py::ssize_t stride = 4;
  for (int i = static_cast<int>(b.ndim) - 1; i >= 0; --i) {
    if (b.shape[i] > 1 && b.strides[i] != stride) {
      throw py::value_error(absl::StrCat("tensor '", name, "' is not C-contiguous"));
    }
    stride *= b.shape[i];
  }
  return static_cast<const float*>(b.ptr);
}

absl::Duration Seconds(const py::object& seconds) {
  if (seconds.is_none()) return absl::InfiniteDuration();
  return absl::Seconds(seconds.cast<double>());
}

// (max_attempts, initial_backoff, max_backoff, multiplier, jitter, [codes]) as optd.RetryPolicy
// holds them (seconds; codes as canonical ints).
client::RetryPolicy ToRetry(const py::tuple& t) {
  client::RetryPolicy r;
  r.max_attempts = t[0].cast<int>();
  const double initial = t[1].cast<double>(), longest = t[2].cast<double>();
  // optd.RetryPolicy waits min(max, initial * m^n): an initial above the max is the max.
  r.initial_backoff = absl::Seconds(std::min(initial, longest));
  r.max_backoff = absl::Seconds(longest);
  r.multiplier = t[3].cast<double>();
  r.jitter = t[4].cast<double>();
  r.retry_codes.clear();
  for (int code : t[5].cast<std::vector<int>>()) {
    r.retry_codes.push_back(static_cast<absl::StatusCode>(code));
  }
  if (r.retry_codes.empty()) {  // nothing is retried
    r.retry_codes = {absl::StatusCode::kUnavailable};
    r.max_attempts = 1;
  }
  return r;
}

// A step's reply, kept whole so that F32 tensors can be returned as views of its bytes.
class StepReply {
 public:
  v1::StepResponse response;
  int attempts = 0;
  // Indices of the reply tensors written into the caller's `out` buffers.
  std::vector<bool> written;
};

// Replies no longer referenced, kept for the next steps: parsing into a used message reuses its
// tensors' byte buffers, so a large step does not allocate (and page-fault) a fresh one each time
// (the same for requests: StepRequests are kept per thread). Thread-safe.
class ReplyPool : public std::enable_shared_from_this<ReplyPool> {
 public:
  // A cleared reply; back in the pool when the last reference (a numpy view's) goes.
  std::shared_ptr<StepReply> Get() {
    std::unique_ptr<StepReply> reply;
    {
      absl::MutexLock lock(&mu_);
      if (!free_.empty()) {
        reply = std::move(free_.back());
        free_.pop_back();
      }
    }
    if (reply == nullptr) reply = std::make_unique<StepReply>();
    reply->attempts = 0;
    reply->written.clear();
    std::weak_ptr<ReplyPool> pool = weak_from_this();
    return std::shared_ptr<StepReply>(reply.release(), [pool](StepReply* r) {
      std::unique_ptr<StepReply> owned(r);
      if (std::shared_ptr<ReplyPool> p = pool.lock()) p->Put(std::move(owned));
    });
  }

 private:
  static constexpr size_t kMaxFree = 4;

  void Put(std::unique_ptr<StepReply> reply) {
    reply->response.Clear();  // keeps the tensors and their buffers' capacity
    absl::MutexLock lock(&mu_);
    if (free_.size() < kMaxFree) free_.push_back(std::move(reply));
  }

  absl::Mutex mu_;
  std::vector<std::unique_ptr<StepReply>> free_ ABSL_GUARDED_BY(mu_);
};

// The parameters of a reply by name: the caller's `out` array for those written into it, a
// RowSparse (row_sparse(indices, values, shape)) for row-sparse tensors, else a float32 array.
py::dict Parameters(const std::shared_ptr<StepReply>& reply, const py::object& out) {
  py::object owner = py::cast(reply);
  py::dict parameters;
  const auto& tensors = reply->response.parameters();
  for (int i = 0; i < tensors.size(); ++i) {
    const v1::Tensor& t = tensors[i];
    py::str name(t.name());
    if (reply->written[i]) {
      parameters[name] = out[name];
      continue;
    }
    std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
    std::vector<int64_t> value_shape = shape;
    if (t.has_rows()) value_shape[0] = t.rows().indices_size();
    absl::StatusOr<int64_t> count = DecodedElements(t);
    if (!count.ok()) Raise(absl::InternalError(count.status().message()), reply->attempts);
    py::array values;
    if (t.dtype() == v1::DTYPE_F32 &&
        static_cast<int64_t>(t.data().size()) == *count * 4) {  // a view of the reply: no copy
      values = py::array(py::dtype::of<float>(), value_shape, {},
                         reinterpret_cast<const float*>(t.data().data()), owner);
      py::detail::array_proxy(values.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
    } else {
      py::array_t<float> decoded(value_shape);
      absl::Span<float> span(decoded.mutable_data(), static_cast<size_t>(*count));
      absl::Status s;
      if (*count >= kReleaseGilElements) {
        py::gil_scoped_release release;
        s = DecodeInto(t, span);
      } else {
        s = DecodeInto(t, span);
      }
      if (!s.ok()) {
        Raise(absl::InternalError(absl::StrCat("cannot decode the server's tensor '", t.name(),
                                               "': ", s.message())),
              reply->attempts);
      }
      values = decoded;
    }
    if (t.has_rows()) {
      const auto& rows = t.rows().indices();
      py::array_t<int64_t> indices(rows.size());
      std::copy(rows.begin(), rows.end(), indices.mutable_data());
      parameters[name] = (*row_sparse)(indices, values, py::tuple(py::cast(shape)));
    } else {
      parameters[name] = values;
    }
  }
  return parameters;
}

// StepResult's fields, in its order: (version, parameters, parameters_version, gradient_norm,
// learning_rate, duplicate, workers, missing_workers, staleness), then (attempts,
// server_incarnation, durable_version, point, estimates): point as the ParameterPoint value,
// estimates a dict name -> float.
py::tuple Fields(const std::shared_ptr<StepReply>& reply, const py::object& out) {
  const v1::StepResponse& r = reply->response;
  py::list missing;
  for (const std::string& w : r.missing_workers()) missing.append(py::str(w));
  py::dict estimates;
  for (const auto& [name, value] : r.optimizer_estimates()) estimates[py::str(name)] = value;
  return py::make_tuple(r.version(), Parameters(reply, out), r.parameters_version(),
                        r.gradient_norm(), r.learning_rate(), r.duplicate(), r.workers(), missing,
                        r.staleness(), reply->attempts, r.server_incarnation(), r.durable_version(),
                        static_cast<int>(r.point()), estimates);
}

class NativeClient {
 public:
  // `channel_args`: (key, int or str) gRPC channel arguments, applied after the defaults (the
  // TLS server name among them). `tls`: a TLS channel of the PEM bytes `ca` (empty: gRPC's
  // roots), `cert` and `key` (empty: no client certificate); else plaintext.
  NativeClient(const std::string& address, const py::object& timeout, int64_t max_message_bytes,
               bool wait_for_ready, double max_reconnect_backoff,
               const std::vector<std::pair<std::string, std::string>>& metadata,
               const py::list& channel_args, bool tls, const py::bytes& ca, const py::bytes& cert,
               const py::bytes& key) {
    client::ClientOptions options;
    options.timeout = Seconds(timeout);
    options.max_message_bytes = max_message_bytes;
    options.wait_for_ready = wait_for_ready;
    options.max_reconnect_backoff = absl::Seconds(max_reconnect_backoff);
    options.metadata = metadata;
    options.token = "";  // optd.Client's token is in `metadata` (never $OPTD_TOKEN again here)
    options.explain_refusals = false;
    // The same arguments as optd.Client's grpcio channel (and the C++ Client::Connect's).
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(static_cast<int>(max_message_bytes));
    args.SetMaxSendMessageSize(static_cast<int>(max_message_bytes));
    const int reconnect_ms = std::max(1, static_cast<int>(max_reconnect_backoff * 1000));
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, reconnect_ms);
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, std::min(reconnect_ms, 100));
    args.SetInt(GRPC_ARG_DNS_MIN_TIME_BETWEEN_RESOLUTIONS_MS, std::min(reconnect_ms, 1000));
    for (const py::handle item : channel_args) {
      py::tuple kv = item.cast<py::tuple>();
      const std::string key = kv[0].cast<std::string>();
      if (py::isinstance<py::int_>(kv[1])) {
        args.SetInt(key, kv[1].cast<int>());
      } else {
        args.SetString(key, kv[1].cast<std::string>());
      }
    }
    std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
    if (tls) {
      grpc::SslCredentialsOptions ssl;
      ssl.pem_root_certs = std::string(ca);
      ssl.pem_cert_chain = std::string(cert);
      ssl.pem_private_key = std::string(key);
      credentials = grpc::SslCredentials(ssl);
    }
    std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(address, credentials, args);
    client_ = std::make_unique<client::Client>(std::move(channel), std::move(options), address,
                                               client::Security::ForChannel(address, tls));
  }

  py::tuple Step(const std::string& session_id, const py::list& names, const py::list& arrays,
                 const std::string& worker_id, int64_t sequence, int64_t worker_incarnation,
                 const py::object& version, const py::object& loss, int return_parameters,
                 int return_dtype, int gradient_dtype, int return_point, const py::object& timeout,
                 const py::tuple& retry, const py::object& out) {
    // Kept per thread and cleared: its tensors' byte buffers are reused by the next step.
    thread_local v1::StepRequest request;
    request.Clear();
    request.set_session_id(session_id);
    request.set_worker_id(worker_id);
    request.set_sequence(sequence);
    request.set_worker_incarnation(worker_incarnation);
    if (!version.is_none()) request.set_version(version.cast<int64_t>());
    if (!loss.is_none()) request.set_loss(loss.cast<double>());
    request.set_return_parameters(static_cast<v1::ReturnParameters>(return_parameters));
    request.set_return_dtype(static_cast<v1::DType>(return_dtype));
    request.set_return_point(static_cast<v1::ParameterPoint>(return_point));
    const client::RetryPolicy policy = ToRetry(retry);
    const absl::Duration deadline = Seconds(timeout);

    // Buffers are held (and released) with the GIL; only their memory is used without it.
    std::vector<py::buffer_info> held;
    std::vector<GradientView> views;
    held.reserve(arrays.size());
    for (size_t i = 0; i < arrays.size(); ++i) {
      held.push_back(arrays[i].cast<py::buffer>().request());
      const py::buffer_info& b = held.back();
      std::string name = names[i].cast<std::string>();
      const float* data = FloatData(b, name);
      views.push_back({std::move(name), std::vector<int64_t>(b.shape.begin(), b.shape.end()),
                       absl::MakeConstSpan(data, static_cast<size_t>(b.size))});
    }
    std::vector<std::pair<std::string, py::buffer_info>> targets;
    if (!out.is_none()) {
      for (const auto& item : out.cast<py::dict>()) {
        std::string name = item.first.cast<std::string>();
        py::buffer_info b = item.second.cast<py::buffer>().request(/*writable=*/true);
        FloatData(b, name);
        targets.emplace_back(std::move(name), std::move(b));
      }
    }

    std::shared_ptr<StepReply> reply = replies_->Get();
    absl::Status s;
    {
      py::gil_scoped_release release;
      s = AddGradients(views, static_cast<v1::DType>(gradient_dtype), &request);
      if (s.ok()) {
        s = client_->SendStepRaw(request, policy, deadline, &reply->response, &reply->attempts);
      }
      if (s.ok()) s = WriteTargets(targets, reply.get());
    }
    if (!s.ok()) Raise(s, reply->attempts);
    return Fields(reply, out);
  }

 private:
  // Decodes each dense reply tensor named in `targets` into its buffer when the sizes match.
  static absl::Status WriteTargets(
      const std::vector<std::pair<std::string, py::buffer_info>>& targets, StepReply* reply) {
    const auto& tensors = reply->response.parameters();
    reply->written.assign(tensors.size(), false);
    if (targets.empty()) return absl::OkStatus();
    for (int i = 0; i < tensors.size(); ++i) {
      const v1::Tensor& t = tensors[i];
      if (t.has_rows()) continue;
      for (const auto& [name, buffer] : targets) {
        if (name != t.name()) continue;
        absl::StatusOr<int64_t> count = DecodedElements(t);
        if (!count.ok() || *count != buffer.size) break;
        absl::Status s = DecodeInto(
            t, absl::MakeSpan(static_cast<float*>(buffer.ptr), static_cast<size_t>(buffer.size)));
        if (!s.ok()) {
          return absl::InternalError(
              absl::StrCat("cannot decode the server's tensor '", t.name(), "': ", s.message()));
        }
        reply->written[i] = true;
        break;
      }
    }
    return absl::OkStatus();
  }

  std::unique_ptr<client::Client> client_;
  std::shared_ptr<ReplyPool> replies_ = std::make_shared<ReplyPool>();
};

}  // namespace
}  // namespace python
}  // namespace optd

PYBIND11_MODULE(_native, m) {
  using optd::python::NativeClient;
  using optd::python::StepReply;
  m.doc() = "optd's native data path (see optd/native.py); not a public API.";
  static py::exception<std::runtime_error> error(m, "StatusError");
  optd::python::status_error = error.ptr();

  // Owns the reply bytes that F32 parameters view.
  py::class_<StepReply, std::shared_ptr<StepReply>>(m, "StepReply");
  m.def(
      "set_row_sparse", [](py::object factory) { *optd::python::row_sparse = std::move(factory); },
      "The class row-sparse parameters are returned as: factory(indices, values, shape).");

  py::class_<NativeClient>(m, "Client")
      .def(py::init<const std::string&, const py::object&, int64_t, bool, double,
                    const std::vector<std::pair<std::string, std::string>>&, const py::list&, bool,
                    const py::bytes&, const py::bytes&, const py::bytes&>(),
           py::arg("address"), py::arg("timeout"), py::arg("max_message_bytes"),
           py::arg("wait_for_ready"), py::arg("max_reconnect_backoff"), py::arg("metadata"),
           py::arg("channel_args"), py::arg("tls"), py::arg("ca"), py::arg("cert"), py::arg("key"))
      .def("step", &NativeClient::Step, py::arg("session_id"), py::arg("names"), py::arg("arrays"),
           py::arg("worker_id"), py::arg("sequence"), py::arg("worker_incarnation"),
           py::arg("version"), py::arg("loss"), py::arg("return_parameters"),
           py::arg("return_dtype"), py::arg("gradient_dtype"), py::arg("return_point"),
           py::arg("timeout"), py::arg("retry"), py::arg("out"));
}
