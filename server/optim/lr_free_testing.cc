#include "server/optim/lr_free_testing.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_matchers.h"
#include "gtest/gtest.h"

namespace optd {
namespace {

using nlohmann::json;

double Number(const json& v) {
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s == "inf") return std::numeric_limits<double>::infinity();
    if (s == "-inf") return -std::numeric_limits<double>::infinity();
    return std::strtod(s.c_str(), nullptr);
  }
  return v.get<double>();
}

std::optional<double> Optional(const json& v) {
  if (v.is_null()) return std::nullopt;
  return Number(v);
}

std::vector<float> Floats(const json& v) {
  std::vector<float> out;
  out.reserve(v.size());
  for (const json& x : v) out.push_back(static_cast<float>(x.get<double>()));
  return out;
}

template <typename T>
T DogFromJson(const json& h) {
  T o;
  o.lr = Number(h["lr"]);
  o.reps_rel = Number(h["reps_rel"]);
  o.weight_decay = Number(h["weight_decay"]);
  o.eps = Number(h["eps"]);
  o.init_eta = Optional(h["init_eta"]);
  o.averaging = true;
  o.averager_gamma = Number(h["averager_gamma"]);
  return o;
}

MuonOptions MuonFromJson(const json& h) {
  MuonOptions o;
  o.lr = Number(h["lr"]);
  o.weight_decay = Number(h["weight_decay"]);
  o.momentum = Number(h["momentum"]);
  o.nesterov = h["nesterov"].get<bool>();
  o.ns_steps = h["ns_steps"].get<int64_t>();
  return o;
}

}  // namespace

LrFreeGolden::LrFreeGolden() {
  std::ifstream in(OPTD_LR_FREE_GOLDEN);
  if (!in) {
    ADD_FAILURE() << "cannot read " << OPTD_LR_FREE_GOLDEN;
    std::abort();
  }
  json_ = json::parse(in);
  steps_ = json_["_meta"]["steps"].get<int>();
  for (const auto& [name, per_step] : json_["_inputs"]["gradients"].items()) {
    std::vector<std::vector<float>>& out = gradients_[name];
    for (const json& g : per_step) out.push_back(Floats(g));
  }
}

const LrFreeGolden& LrFreeGolden::Get() {
  static const LrFreeGolden* const golden = new LrFreeGolden();
  return *golden;
}

std::vector<std::string> LrFreeGolden::Cases(const std::string& optimizer) const {
  std::vector<std::string> names;
  if (!json_.contains(optimizer)) return names;
  for (const auto& [name, value] : json_[optimizer].items()) names.push_back(name);
  return names;
}

const json& LrFreeGolden::Case(const std::string& optimizer, const std::string& name) const {
  return json_.at(optimizer).at(name);
}

const std::vector<float>& LrFreeGolden::Gradient(const std::string& tensor, int step) const {
  return gradients_.at(tensor).at(step - 1);
}

OptimizerOptions OptionsFromJson(const std::string& optimizer, const json& c) {
  const json& h = c["resolved_hyperparameters"];
  if (optimizer == "Prodigy") {
    ProdigyOptions o;
    o.lr = Number(h["lr"]);
    o.beta1 = Number(h["betas"][0]);
    o.beta2 = Number(h["betas"][1]);
    o.beta3 = Optional(h["beta3"]);
    o.eps = Number(h["eps"]);
    o.weight_decay = Number(h["weight_decay"]);
    o.decouple = h["decouple"].get<bool>();
    o.use_bias_correction = h["use_bias_correction"].get<bool>();
    o.safeguard_warmup = h["safeguard_warmup"].get<bool>();
    o.d0 = Number(h["d0"]);
    o.d_coef = Number(h["d_coef"]);
    o.growth_rate = Number(h["growth_rate"]);
    o.slice_p = h["slice_p"].get<int64_t>();
    return o;
  }
  if (optimizer == "DAdaptAdam") {
    DAdaptAdamOptions o;
    o.lr = Number(h["lr"]);
    o.beta1 = Number(h["betas"][0]);
    o.beta2 = Number(h["betas"][1]);
    o.eps = Number(h["eps"]);
    o.weight_decay = Number(h["weight_decay"]);
    o.decouple = h["decouple"].get<bool>();
    o.use_bias_correction = h["use_bias_correction"].get<bool>();
    o.d0 = Number(h["d0"]);
    o.growth_rate = Number(h["growth_rate"]);
    o.layer_scale = Number(h["layer_scale"]);
    return o;
  }
  if (optimizer == "DAdaptSGD") {
    DAdaptSgdOptions o;
    o.lr = Number(h["lr"]);
    o.momentum = Number(h["momentum"]);
    o.weight_decay = Number(h["weight_decay"]);
    o.d0 = Number(h["d0"]);
    o.growth_rate = Number(h["growth_rate"]);
    return o;
  }
  if (optimizer == "DoG") return DogFromJson<DogOptions>(h);
  if (optimizer == "LDoG") return DogFromJson<LdogOptions>(h);
  if (optimizer == "AdamWScheduleFree") {
    ScheduleFreeAdamWOptions o;
    o.lr = Number(h["lr"]);
    o.beta1 = Number(h["betas"][0]);
    o.beta2 = Number(h["betas"][1]);
    o.eps = Number(h["eps"]);
    o.weight_decay = Number(h["weight_decay"]);
    o.warmup_steps = h["warmup_steps"].get<int64_t>();
    o.r = Number(h["r"]);
    o.weight_lr_power = Number(h["weight_lr_power"]);
    o.inner_momentum = Number(h["inner_momentum"]);
    return o;
  }
  if (optimizer == "SGDScheduleFree") {
    ScheduleFreeSgdOptions o;
    o.lr = Number(h["lr"]);
    o.momentum = Number(h["momentum"]);
    o.weight_decay = Number(h["weight_decay"]);
    o.warmup_steps = h["warmup_steps"].get<int64_t>();
    o.r = Number(h["r"]);
    o.weight_lr_power = Number(h["weight_lr_power"]);
    return o;
  }
  if (optimizer == "Muon_fp32" || optimizer == "Muon_bf16") return MuonFromJson(h);
  if (optimizer == "Adafactor") {
    AdafactorOptions o;
    o.lr = Number(h["lr"]);
    o.beta2_decay = Number(h["beta2_decay"]);
    o.eps1 = Optional(h["eps"][0]);
    o.eps2 = Number(h["eps"][1]);
    o.d = Number(h["d"]);
    o.weight_decay = Number(h["weight_decay"]);
    o.maximize = h["maximize"].get<bool>();
    return o;
  }
  ADD_FAILURE() << "no options for " << optimizer;
  return SgdOptions{};
}

GoldenRun ExpectGoldenCase(const std::string& optimizer, const std::string& name,
                           const OptimizerOptions& options, ThreadPool* pool) {
  const LrFreeGolden& golden = LrFreeGolden::Get();
  const json& c = golden.Case(optimizer, name);
  const std::string where = absl::StrCat(optimizer, "/", name);
  std::vector<std::string> names;
  TensorShapes shapes;
  std::vector<std::vector<float>> params;
  for (const json& t : c["tensors"]) {
    names.push_back(t.get<std::string>());
    shapes.push_back(c["shapes"][names.back()].get<std::vector<int64_t>>());
    params.push_back(Floats(c["init"][names.back()]));
  }
  GoldenRun run;
  absl::StatusOr<std::unique_ptr<Optimizer>> created =
      CreateOptimizerForShapes(options, shapes, pool);
  EXPECT_OK(created) << where;
  if (!created.ok()) return run;
  Optimizer& opt = **created;
  const double lr = BaseLearningRate(options);
  const json& tolerance = c["tolerance"];
  const double params_rel = tolerance["params_rel_inf"].get<double>();
  const json& scalars_rel = tolerance["scalars_rel"];

  // The checkpoints in step order (the file's object keys sort as strings).
  std::vector<int> checkpoint_steps;
  for (const auto& [key, value] : c["checkpoints"].items())
    checkpoint_steps.push_back(std::stoi(key));
  std::sort(checkpoint_steps.begin(), checkpoint_steps.end());
  int step = 0;
  for (const int until : checkpoint_steps) {
    const json& checkpoint = c["checkpoints"][std::to_string(until)];
    for (; step < until;) {
      ++step;
      std::vector<TensorGrad> tensors;
      for (size_t t = 0; t < names.size(); ++t) {
        tensors.push_back(
            {absl::MakeSpan(params[t]), absl::MakeConstSpan(golden.Gradient(names[t], step))});
      }
      EXPECT_OK(opt.Step(tensors, lr)) << where << " step " << step;
    }
    run.steps.push_back(step);
    run.params.push_back(params);
    run.states.push_back(opt.ExportState());
    const OptimizerState& state = run.states.back();
    const std::string at = absl::StrCat(where, " after step ", step);

    // Parameters and the views: max|mine - golden| <= rel * max|golden| per tensor.
    auto expect_close = [&](const char* view, size_t t, const std::vector<float>& mine) {
      const std::vector<float> want = Floats(checkpoint[view][names[t]]);
      ASSERT_EQ(mine.size(), want.size()) << at << " " << view << " " << names[t];
      double max_diff = 0.0, max_ref = 0.0;
      for (size_t i = 0; i < want.size(); ++i) {
        max_diff = std::max(max_diff, std::abs(static_cast<double>(mine[i]) - want[i]));
        max_ref = std::max(max_ref, std::abs(static_cast<double>(want[i])));
      }
      EXPECT_LE(max_diff, params_rel * max_ref)
          << at << ": " << view << " of " << names[t] << " (relative " << max_diff / max_ref << ")";
    };
    for (size_t t = 0; t < names.size(); ++t) {
      expect_close("params", t, params[t]);
      for (const char* view : {"eval_params", "averaged_params"}) {
        if (!checkpoint.contains(view)) continue;
        std::vector<float> out(params[t].size());
        EXPECT_OK(opt.EvaluationPoint(t, params[t], absl::MakeSpan(out))) << at;
        expect_close(view, t, out);
      }
    }

    // Scalars: model-wide ones by name; lists per tensor (a per-tensor scalar or its step).
    for (const auto& [scalar, want] : checkpoint["scalars"].items()) {
      const double rel = scalars_rel.contains(scalar) ? scalars_rel[scalar].get<double>() : 0.0;
      auto expect_scalar = [&](double mine, double golden_value, const std::string& what) {
        EXPECT_LE(std::abs(mine - golden_value), rel * std::abs(golden_value))
            << at << ": " << what << " = " << mine << ", golden " << golden_value;
      };
      if (!want.is_array()) {
        bool found = false;
        for (const auto& [n, v] : state.scalars) {
          if (n != scalar) continue;
          found = true;
          expect_scalar(v, Number(want), scalar);
        }
        EXPECT_TRUE(found) << at << ": no model-wide scalar " << scalar;
        continue;
      }
      EXPECT_EQ(want.size(), names.size()) << at << " " << scalar;
      if (want.size() != names.size()) continue;
      for (size_t t = 0; t < names.size(); ++t) {
        const std::string what = absl::StrCat(scalar, "[", names[t], "]");
        if (scalar == "step") {
          expect_scalar(static_cast<double>(state.tensors[t].step), Number(want[t]), what);
          continue;
        }
        bool found = false;
        for (const auto& [n, v] : state.tensors[t].scalars) {
          if (n != scalar) continue;
          found = true;
          expect_scalar(v, Number(want[t]), what);
        }
        EXPECT_TRUE(found) << at << ": no scalar " << what;
      }
    }
  }
  return run;
}

}  // namespace optd
