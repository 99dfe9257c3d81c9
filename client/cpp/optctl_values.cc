#include "client/cpp/optctl_values.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/cpp/optctl_flags.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/json_util.h"

namespace optd {
namespace client {
namespace optctl {
namespace {

bool LooksLikeInit(absl::string_view text) {
  return text == "zeros" || text == "ones" || absl::StartsWith(text, "const=") ||
         absl::StartsWith(text, "uniform=") || absl::StartsWith(text, "normal=");
}

bool LooksLikeDims(absl::string_view text) {
  if (text == "scalar") return true;
  for (const char c : text) {
    if (!absl::ascii_isdigit(c) && c != 'x') return false;
  }
  return !text.empty();
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  return contents.str();
}

// Collects TextFormat's errors as "FILE:LINE:COLUMN: message".
class TextErrors : public google::protobuf::io::ErrorCollector {
 public:
  explicit TextErrors(std::string file) : file_(std::move(file)) {}
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    if (!errors_.empty()) errors_ += "; ";
    absl::StrAppend(&errors_, file_, ":", line + 1, ":", column + 1, ": ", message);
  }
  const std::string& errors() const { return errors_; }

 private:
  const std::string file_;
  std::string errors_;
};

}  // namespace

absl::StatusOr<std::vector<int64_t>> ParseDims(absl::string_view text, absl::string_view what) {
  std::vector<int64_t> dims;
  if (text == "scalar") return dims;
  for (absl::string_view d : absl::StrSplit(text, 'x')) {
    int64_t v;
    if (!absl::SimpleAtoi(d, &v) || v < 0) {
      return UsageError(absl::StrCat(what, ": dimensions '", text,
                                     "' must be D1xD2x... of integers >= 0, or 'scalar'"));
    }
    dims.push_back(v);
  }
  return dims;
}

absl::StatusOr<Init> ParseInit(absl::string_view text, absl::string_view what) {
  if (text == "zeros") return Init{Init::kConst, 0};
  if (text == "ones") return Init{Init::kConst, 1};
  Init init;
  absl::string_view number = text;
  if (absl::ConsumePrefix(&number, "const=")) {
    init.kind = Init::kConst;
  } else if (absl::ConsumePrefix(&number, "uniform=")) {
    init.kind = Init::kUniform;
  } else if (absl::ConsumePrefix(&number, "normal=")) {
    init.kind = Init::kNormal;
  } else {
    return UsageError(absl::StrCat(what, ": INIT '", text,
                                   "' must be zeros, ones, const=V, uniform=A or normal=S"));
  }
  if (!absl::SimpleAtod(number, &init.value) || !std::isfinite(init.value) ||
      (init.kind != Init::kConst && init.value < 0)) {
    return UsageError(absl::StrCat(what, ": '", text, "' needs a finite number",
                                   init.kind == Init::kConst ? "" : " >= 0"));
  }
  return init;
}

absl::StatusOr<std::vector<float>> MakeValues(const Init& init, const std::vector<int64_t>& shape,
                                              absl::string_view what, std::mt19937_64* rng) {
  int64_t n = 1;
  for (const int64_t d : shape) {
    if (d != 0 && n > kMaxElements / d) {
      n = kMaxElements + 1;
      break;
    }
    n *= d;
  }
  if (n > kMaxElements) {
    return UsageError(absl::StrCat(what, ": shape [", absl::StrJoin(shape, ", "),
                                   "] has more than ", kMaxElements, " elements"));
  }
  std::vector<float> values(static_cast<size_t>(n), static_cast<float>(init.value));
  if (init.kind == Init::kUniform && init.value > 0) {
    std::uniform_real_distribution<float> dist(static_cast<float>(-init.value),
                                               static_cast<float>(init.value));
    for (float& v : values) v = dist(*rng);
  } else if (init.kind == Init::kNormal && init.value > 0) {
    std::normal_distribution<float> dist(0.0f, static_cast<float>(init.value));
    for (float& v : values) v = dist(*rng);
  } else if (init.kind != Init::kConst) {
    std::fill(values.begin(), values.end(), 0.0f);  // U(0, 0) and N(0, 0)
  }
  return values;
}

// NAME:DIMS[:INIT]. NAME may itself contain ':', so the spec is read from the right.
absl::StatusOr<HostTensor> ParseTensorSpec(absl::string_view spec, std::mt19937_64* rng) {
  const std::string what = absl::StrCat("--tensor=", spec);
  std::vector<absl::string_view> parts = absl::StrSplit(spec, ':');
  absl::string_view init_text = "zeros";
  // The last part is INIT when it cannot be DIMS (so a misspelt INIT is reported as one).
  if (parts.size() >= 3 && (LooksLikeInit(parts.back()) || !LooksLikeDims(parts.back()))) {
    init_text = parts.back();
    parts.pop_back();
  }
  if (parts.size() < 2) {
    return UsageError(absl::StrCat(what, ": must be NAME:DIMS[:INIT], e.g. w:784x10:normal=0.01"));
  }
  HostTensor tensor;
  absl::StatusOr<std::vector<int64_t>> dims = ParseDims(parts.back(), what);
  if (!dims.ok()) return dims.status();
  tensor.shape = *std::move(dims);
  parts.pop_back();
  tensor.name = absl::StrJoin(parts, ":");
  absl::StatusOr<Init> init = ParseInit(init_text, what);
  if (!init.ok()) return init.status();
  absl::StatusOr<std::vector<float>> values = MakeValues(*init, tensor.shape, what, rng);
  if (!values.ok()) return values.status();
  tensor.values = *std::move(values);
  return tensor;
}

absl::StatusOr<v1::DType> ParseDType(absl::string_view text, absl::string_view flag) {
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == "f32") return v1::DTYPE_F32;
  if (lower == "bf16") return v1::DTYPE_BF16;
  if (lower == "f16") return v1::DTYPE_F16;
  return UsageError(absl::StrCat(flag, "=", text, ": must be f32, bf16 or f16"));
}

absl::StatusOr<v1::CreateSessionRequest> ReadCreateRequest(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return text.status();
  v1::CreateSessionRequest request;
  if (absl::EndsWith(path, ".json")) {
    const auto status = google::protobuf::util::JsonStringToMessage(*text, &request);
    if (!status.ok()) {
      return UsageError(absl::StrCat("--config=", path, ": not a CreateSessionRequest in JSON: ",
                                     status.message().ToString()));
    }
    return request;
  }
  google::protobuf::TextFormat::Parser parser;
  TextErrors errors(path);
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(*text, &request)) {
    return UsageError(
        absl::StrCat("--config: not a CreateSessionRequest in text format: ", errors.errors()));
  }
  return request;
}

}  // namespace optctl
}  // namespace client
}  // namespace optd
