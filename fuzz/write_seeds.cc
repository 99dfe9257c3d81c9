// fuzz_write_seeds: writes the fuzzers' seed corpora, real serialized requests in each fuzzer's
// input layout (see the comment at the top of each fuzzer):
//
//   fuzz_write_seeds <dir>     writes <dir>/<fuzzer>/<seed name> for the three fuzzers
//
// The committed corpora (fuzz/corpus/) are its output, plus regression-* inputs that once found a
// bug. Rerun it after changing a fuzzer's layout or the contract, and commit what changes.

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "optd/v1/optd.pb.h"

namespace optd {
namespace {

std::string g_dir;
int g_written = 0;

void Write(const std::string& fuzzer, const std::string& name, const std::string& bytes) {
  const std::string path = absl::StrCat(g_dir, "/", fuzzer, "/", name);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    std::fprintf(stderr, "fuzz_write_seeds: cannot write %s\n", path.c_str());
    std::exit(1);
  }
  ++g_written;
}

std::string Floats(const std::vector<float>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
}

// 16-bit encodings of small values, written by hand (BF16: the upper half of the binary32; F16:
// 1.0 = 0x3c00, 0.5 = 0x3800, -2 = 0xc000, 0.25 = 0x3400).
std::string Halves(const std::vector<uint16_t>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * 2);
}

v1::Tensor TensorOf(const std::string& name, std::vector<int64_t> shape, v1::DType dtype,
                    std::string data) {
  v1::Tensor t;
  t.set_name(name);
  for (const int64_t d : shape) t.add_shape(d);
  t.set_dtype(dtype);
  t.set_data(std::move(data));
  return t;
}

// Gradients for the fuzzers' base session: "w" [4, 3] and "b" [3].
v1::Tensor W(v1::DType dtype = v1::DTYPE_F32) {
  if (dtype == v1::DTYPE_F32) {
    return TensorOf("w", {4, 3}, dtype,
                    Floats({0.5f, -1, 2, 0.25f, 0, -0.5f, 1, 1, -2, 0.125f, 3, -0.75f}));
  }
  const std::vector<uint16_t> bf16 = {0x3f00, 0xbf80, 0x4000, 0x3e80, 0,      0xbf00,
                                      0x3f80, 0x3f80, 0xc000, 0x3e00, 0x4040, 0xbf40};
  const std::vector<uint16_t> f16 = {0x3800, 0xbc00, 0x4000, 0x3400, 0,      0xb800,
                                     0x3c00, 0x3c00, 0xc000, 0x3000, 0x4200, 0xba00};
  return TensorOf("w", {4, 3}, dtype, Halves(dtype == v1::DTYPE_BF16 ? bf16 : f16));
}
v1::Tensor B() { return TensorOf("b", {3}, v1::DTYPE_F32, Floats({0.1f, -0.2f, 0.3f})); }

v1::StepRequest StepOf(std::vector<v1::Tensor> gradients) {
  v1::StepRequest r;
  r.set_session_id("s1");
  r.set_worker_id("worker-0");
  for (v1::Tensor& g : gradients) *r.add_gradients() = std::move(g);
  return r;
}

// message_bytes_fuzzer: the header (padding kind, cuts) then the request.
std::string Request(int padding, const std::vector<uint16_t>& cuts, const std::string& message) {
  std::string out;
  out.push_back(static_cast<char>(padding << 1));
  out.push_back(static_cast<char>(cuts.size()));
  for (const uint16_t c : cuts) {
    out.push_back(static_cast<char>(c & 0xff));
    out.push_back(static_cast<char>(c >> 8));
  }
  return out + message;
}

void MessageBytesSeeds() {
  const std::string f = "message_bytes_fuzzer";
  v1::StepRequest dense = StepOf({W(), B()});
  dense.set_loss(0.5);
  dense.set_sequence(1);
  dense.set_version(0);
  const std::string d = dense.SerializeAsString();
  Write(f, "step-dense-f32", Request(0, {}, d));
  Write(f, "step-dense-f32-3-cuts", Request(0, {5, 17, 40}, d));
  Write(f, "step-dense-f32-unknown-before", Request(1, {9}, d));
  Write(f, "step-dense-f32-unknown-after-cuts", Request(2, {1, 2, 30, 31, 64}, d));
  Write(f, "step-dense-f32-gradient-before", Request(3, {}, d));
  Write(f, "step-dense-f32-gradient-after-cuts", Request(4, {12, 12, 50}, d));
  std::vector<uint16_t> every_byte;
  for (uint16_t i = 1; i < 16; ++i) every_byte.push_back(i);
  Write(f, "step-dense-f32-15-one-byte-slices", Request(2, every_byte, d));

  v1::StepRequest bf16 = StepOf({W(v1::DTYPE_BF16), B()});
  bf16.set_return_dtype(v1::DTYPE_BF16);
  bf16.set_return_parameters(v1::RETURN_PARAMETERS_TOUCHED);
  Write(f, "step-bf16-unknown-after", Request(2, {20}, bf16.SerializeAsString()));
  v1::StepRequest f16 = StepOf({W(v1::DTYPE_F16), B()});
  f16.set_return_dtype(v1::DTYPE_F16);
  f16.set_return_parameters(v1::RETURN_PARAMETERS_NONE);
  Write(f, "step-f16-gradient-before", Request(3, {7}, f16.SerializeAsString()));

  v1::Tensor rows = TensorOf("w", {4, 3}, v1::DTYPE_F32, Floats({1, 2, 3, 4, 5, 6, 7, 8, 9}));
  for (const int64_t r : {0, 2, 2}) rows.mutable_rows()->add_indices(r);
  v1::StepRequest sparse = StepOf({rows, B()});
  sparse.set_sequence(7);
  sparse.set_version(3);
  Write(f, "step-sparse-rows-gradient-after", Request(4, {3, 33}, sparse.SerializeAsString()));

  // Unknown fields at both levels, and a data field sent twice (the last one counts).
  std::string odd = dense.SerializeAsString();
  odd += std::string("\xf8\x06\x2a", 3);  // field 111, varint 42
  v1::Tensor twice = B();
  std::string tensor = twice.SerializeAsString();
  tensor += std::string("\x22\x04", 2) + Floats({9});  // data again
  tensor += std::string("\x7d", 1) + Floats({1});      // field 15, fixed32
  odd += std::string("\x1a", 1) + static_cast<char>(tensor.size()) + tensor;
  Write(f, "step-unknown-fields-repeated-data", Request(2, {10, 70}, odd));
  Write(f, "step-unknown-fields-repeated-data-small", Request(0, {10, 70}, odd));

  Write(f, "step-empty-unknown-after", Request(2, {}, ""));
  Write(f, "step-truncated-gradient", Request(2, {4}, d.substr(0, d.size() / 2)));

  // Replies: the first byte odd, the rest read by FuzzedDataProvider (integers from the end).
  std::string reply = "\x01";
  for (int i = 0; i < 96; ++i) reply.push_back(static_cast<char>(i * 37 + 11));
  Write(f, "reply-mixed", reply);
  std::string large = "\x03";
  large += std::string(40, 'p');
  large += std::string(24, '\x01');  // booleans true: large data, every kind
  Write(f, "reply-large", large);
  std::string shared = "\x05" + Floats({1.5f, -2, 0.1f, 65504, 1e-8f, 3e38f});
  shared += std::string(16, '\x02');
  Write(f, "reply-shared", shared);
}

// proto_convert_fuzzer: the request kind, the base session recipe, then the request.
std::string Convert(int kind, int recipe, const google::protobuf::MessageLite& request) {
  std::string out;
  out.push_back(static_cast<char>(kind));
  out.push_back(static_cast<char>(recipe));
  return out + request.SerializeAsString();
}

void ProtoConvertSeeds() {
  const std::string f = "proto_convert_fuzzer";
  // Create: one per optimizer, with a schedule each, some with clipping and other modes.
  const char* kOptimizers[] = {"sgd",     "adam",  "adamw", "adagrad", "normalized_gd", "adadelta",
                               "rmsprop", "nadam", "radam", "lion",    "lamb",          "lars"};
  const char* kSchedules[] = {
      "constant",      "step",          "multi_step",   "exponential", "cosine_annealing",
      "linear_warmup", "warmup_cosine", "inverse_sqrt", "one_cycle",   "reduce_on_plateau"};
  for (int o = 0; o < 12; ++o) {
    v1::CreateSessionRequest r;
    r.set_session_id(absl::StrCat("s-", kOptimizers[o]));
    v1::SessionConfig* c = r.mutable_config();
    v1::OptimizerConfig* opt = c->mutable_optimizer();
    switch (o) {
      case 0:
        opt->mutable_sgd()->set_lr(0.1);
        opt->mutable_sgd()->set_momentum(0.9);
        opt->mutable_sgd()->set_nesterov(true);
        break;
      case 1:
        opt->mutable_adam()->set_amsgrad(true);
        break;
      case 2:
        opt->mutable_adamw();
        break;
      case 3:
        opt->mutable_adagrad()->set_lr_decay(0.01);
        break;
      case 4:
        opt->mutable_normalized_gd()->set_norm(v1::NormalizedGd::NORM_PER_TENSOR);
        break;
      case 5:
        opt->mutable_adadelta();
        break;
      case 6:
        opt->mutable_rmsprop()->set_centered(true);
        opt->mutable_rmsprop()->set_momentum(0.5);
        break;
      case 7:
        opt->mutable_nadam();
        break;
      case 8:
        opt->mutable_radam();
        break;
      case 9:
        opt->mutable_lion();
        break;
      case 10:
        opt->mutable_lamb();
        break;
      default:
        opt->mutable_lars()->set_nesterov(true);
        break;
    }
    v1::LrSchedule* s = c->mutable_schedule();
    switch (o % 10) {
      case 0:
        s->mutable_constant();
        break;
      case 1:
        s->mutable_step()->set_step_size(1);
        break;
      case 2:
        s->mutable_multi_step()->add_milestones(1);
        s->mutable_multi_step()->add_milestones(2);
        break;
      case 3:
        s->mutable_exponential()->set_gamma(0.5);
        break;
      case 4:
        s->mutable_cosine_annealing()->set_t_max(3);
        break;
      case 5:
        s->mutable_linear_warmup()->set_total_iters(2);
        break;
      case 6:
        s->mutable_warmup_cosine()->set_warmup_steps(1);
        s->mutable_warmup_cosine()->set_decay_steps(4);
        break;
      case 7:
        s->mutable_inverse_sqrt()->set_warmup_steps(1);
        break;
      case 8:
        s->mutable_one_cycle()->set_max_lr(0.01);
        s->mutable_one_cycle()->set_total_steps(4);
        break;
      default:
        s->mutable_reduce_on_plateau()->set_patience(0);
        break;
    }
    if (o % 3 == 1) c->mutable_clipping()->set_max_norm(1.0);
    if (o % 4 == 2) c->mutable_clipping()->set_clip_value(0.5);
    if (o == 5) {
      c->mutable_consistency()->set_mode(v1::Consistency::MODE_SYNC);
      c->mutable_consistency()->add_worker_ids("fuzz");
      c->mutable_consistency()->add_worker_ids("peer");
    }
    if (o == 7) {
      c->mutable_consistency()->set_mode(v1::Consistency::MODE_BOUNDED);
      c->mutable_consistency()->set_max_staleness(2);
    }
    *r.add_tensors() = W(o % 3 == 0 ? v1::DTYPE_F32 : o % 3 == 1 ? v1::DTYPE_BF16 : v1::DTYPE_F16);
    *r.add_tensors() = B();
    Write(f, absl::StrCat("create-", kOptimizers[o], "-", kSchedules[o % 10]), Convert(0, o, r));
  }
  {
    v1::CreateSessionRequest r;  // a scalar, a rank-8 tensor, the sync mode with a quorum
    r.mutable_config()->mutable_optimizer()->mutable_sgd()->set_lr(1);
    r.mutable_config()->mutable_consistency()->set_mode(v1::Consistency::MODE_SYNC);
    r.mutable_config()->mutable_consistency()->set_workers(3);
    r.mutable_config()->mutable_consistency()->set_quorum(2);
    r.mutable_config()->mutable_consistency()->set_barrier_timeout_seconds(0.5);
    *r.add_tensors() = TensorOf("scalar", {}, v1::DTYPE_F32, Floats({2}));
    *r.add_tensors() = TensorOf("deep", {1, 1, 1, 1, 1, 1, 1, 2}, v1::DTYPE_F32, Floats({1, -1}));
    Write(f, "create-sgd-sync-quorum-scalar-rank8", Convert(0, 1, r));
  }
  {
    v1::CreateSessionRequest r;  // parameter groups: w with its own lr and weight decay
    r.set_session_id("groups");
    r.mutable_config()->mutable_optimizer()->mutable_adam()->set_lr(0.01);
    v1::ParamGroup* g = r.mutable_config()->add_param_groups();
    g->add_tensors("w");
    g->mutable_optimizer()->mutable_adam()->set_lr(0.1);
    g->mutable_optimizer()->mutable_adam()->set_weight_decay(0.01);
    *r.add_tensors() =
        TensorOf("w", {4, 3}, v1::DTYPE_F32,
                 Floats({0, 0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f, 0.9f, 1.0f, 1.1f}));
    *r.add_tensors() = TensorOf("b", {3}, v1::DTYPE_F32, Floats({1, 2, 3}));
    Write(f, "create-adam-param-groups", Convert(0, 0, r));
    r.set_session_id("groups-bad");  // a tensor in two groups, one unknown: refused
    v1::ParamGroup* bad = r.mutable_config()->add_param_groups();
    bad->add_tensors("w");
    bad->add_tensors("zz");
    Write(f, "create-param-groups-refused", Convert(0, 1, r));
  }

  // Update: options, schedules, clipping; one that changes the kind (refused).
  {
    v1::UpdateSessionRequest r;
    r.set_session_id("s1");
    r.mutable_optimizer()->mutable_adam()->set_lr(0.01);
    r.mutable_optimizer()->mutable_adam()->set_beta2(0.9);
    Write(f, "update-adam-lr", Convert(1, 1, r));
    r.mutable_schedule()->mutable_reduce_on_plateau()->set_factor(0.5);
    r.mutable_schedule()->mutable_reduce_on_plateau()->set_patience(1);
    r.mutable_clipping()->set_max_norm(0.5);
    Write(f, "update-adam-plateau-clipping", Convert(1, 13, r));
    v1::UpdateSessionRequest other;
    other.mutable_optimizer()->mutable_sgd()->set_lr(1);
    Write(f, "update-other-kind", Convert(1, 1, other));
    v1::UpdateSessionRequest cycle;
    cycle.mutable_schedule()->mutable_one_cycle()->set_max_lr(0.1);
    cycle.mutable_schedule()->mutable_one_cycle()->set_total_steps(3);
    cycle.mutable_schedule()->mutable_one_cycle()->set_three_phase(true);
    Write(f, "update-one-cycle-sync2", Convert(1, 40, cycle));
    v1::UpdateSessionRequest lars;
    lars.mutable_optimizer()->mutable_lars()->set_trust_coefficient(0.01);
    lars.mutable_clipping()->set_clip_value(0.1);
    Write(f, "update-lars-bounded", Convert(1, 23, lars));
    v1::UpdateSessionRequest groups;  // the base session has no groups: refused
    groups.set_session_id("s1");
    v1::ParamGroupUpdate* change = groups.add_param_groups();
    change->set_index(0);
    change->mutable_optimizer()->mutable_adam()->set_lr(0.5);
    Write(f, "update-param-groups-no-groups", Convert(1, 1, groups));
  }

  // Pull: everything, names, rows (repeated), dtypes.
  {
    v1::PullRequest r;
    r.set_session_id("s1");
    Write(f, "pull-all", Convert(2, 1, r));
    r.add_names("b");
    r.add_names("w");
    r.set_dtype(v1::DTYPE_BF16);
    v1::TensorRows* rows = r.add_rows();
    rows->set_name("w");
    for (const int64_t i : {3, 0, 0}) rows->add_indices(i);
    Write(f, "pull-names-rows-bf16", Convert(2, 26, r));
    v1::PullRequest f16;
    f16.set_dtype(v1::DTYPE_F16);
    v1::TensorRows* b = f16.add_rows();
    b->set_name("b");
    b->add_indices(2);
    Write(f, "pull-rows-of-all-f16", Convert(2, 37, f16));
    v1::PullRequest last;  // the last row of each tensor
    for (const auto& [name, row] : {std::make_pair("w", 3), std::make_pair("b", 2)}) {
      v1::TensorRows* r = last.add_rows();
      r->set_name(name);
      r->add_indices(row);
    }
    Write(f, "pull-last-rows", Convert(2, 2, last));
  }

  // Step: dense, sparse, 16-bit, keyed (sent again), in each mode.
  {
    v1::StepRequest dense = StepOf({W(), B()});
    dense.set_sequence(1);
    Write(f, "step-dense-keyed-async", Convert(3, 1, dense));
    dense.set_version(0);
    dense.set_loss(0.75);
    Write(f, "step-dense-bounded", Convert(3, 14, dense));
    Write(f, "step-dense-sync2", Convert(3, 37, dense));
    v1::Tensor rows = TensorOf("w", {4, 3}, v1::DTYPE_F32, Floats({1, 2, 3, 4, 5, 6, 7, 8, 9}));
    for (const int64_t i : {0, 2, 2}) rows.mutable_rows()->add_indices(i);
    v1::StepRequest sparse = StepOf({rows, B()});
    sparse.set_return_parameters(v1::RETURN_PARAMETERS_TOUCHED);
    Write(f, "step-sparse-adam-touched", Convert(3, 1, sparse));
    Write(f, "step-sparse-sgd-sync1", Convert(3, 24, sparse));
    v1::StepRequest half = StepOf({W(v1::DTYPE_F16), B()});
    half.set_return_dtype(v1::DTYPE_F16);
    half.set_sequence(3);
    Write(f, "step-f16-lamb", Convert(3, 10, half));
    v1::StepRequest huge =
        StepOf({TensorOf("w", {4, 3}, v1::DTYPE_F32, Floats(std::vector<float>(12, 3e38f))), B()});
    Write(f, "step-huge-gradient-adam", Convert(3, 1, huge));
  }
}

// wire_fuzzer: FuzzedDataProvider reads integers from the end (the operation first, % 6) and
// data from the front: `front` followed by the integers' bytes in reverse order of reading.
std::string Wire(const std::string& front, const std::vector<uint8_t>& read_from_end) {
  std::string out = front;
  for (auto it = read_from_end.rbegin(); it != read_from_end.rend(); ++it) {
    out.push_back(static_cast<char>(*it));
  }
  return out;
}

void WireSeeds() {
  const std::string f = "wire_fuzzer";
  const float inf = std::numeric_limits<float>::infinity();
  // Zeros, ties and limits of both 16-bit encodings, subnormals, infinities, NaN.
  const std::string specials =
      Floats({0.0f, -0.0f, 1.0f, -1.5f, 65504.0f, 65519.99f, 65520.0f, 6.1035156e-05f,
              5.9604645e-08f, 2.9802322e-08f, 1e-45f, 3.4028235e38f, inf, -inf, std::nanf(""),
              1.00390625f, 1.01171875f, 3.3895314e38f});
  const std::string zero8(8, '\0');
  // Operation 0, decode: dtype, misalignment, count choice (2: exact), any count (8 bytes).
  Write(f, "decode-f32-exact", Wire(specials + zero8, {0, 0, 0, 2}));
  Write(f, "decode-bf16-misaligned-off-by-one", Wire(specials + zero8, {0, 1, 1, 3}));
  Write(f, "decode-f16-exact", Wire(specials + zero8, {0, 2, 3, 2}));
  // 1, view: dtype, misalignment, count choice, any count.
  Write(f, "view-f32-aligned", Wire(specials + zero8, {1, 0, 0, 2}));
  Write(f, "view-f32-misaligned", Wire(specials + zero8, {1, 0, 1, 2}));
  // 2, size: dtype, count, size (8 bytes each), whether size fits the count.
  Write(
      f, "size-near-int64-max",
      Wire("", {2, 0, 0x3f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 4, 1}));
  // 3, convert: the floats.
  Write(f, "convert-specials", Wire(specials, {3}));
  // 4, encode: dtype, then the floats.
  Write(f, "encode-bf16", Wire(specials, {4, 1}));
  Write(f, "encode-f16", Wire(specials, {4, 2}));
  // 5, bytes: piece count, piece lengths, then the data (a string ending at a lone backslash),
  // then offsets and sizes to read.
  Write(f, "bytes-pieces",
        Wire(specials + "\\A" + std::string("\x01\x09\x20\x03\x30\x11", 6), {5, 4, 5, 0, 7, 2}));
}

}  // namespace
}  // namespace optd

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_write_seeds <corpus dir>\n");
    return 2;
  }
  optd::g_dir = argv[1];
  optd::MessageBytesSeeds();
  optd::ProtoConvertSeeds();
  optd::WireSeeds();
  std::printf("fuzz_write_seeds: wrote %d seeds under %s\n", optd::g_written, argv[1]);
  return 0;
}
