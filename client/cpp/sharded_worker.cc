#include "client/cpp/sharded_worker.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/cpp/fan_out.h"

namespace optd {
namespace client {
namespace {

bool AllEqual(const std::vector<int64_t>& versions) {
  int64_t first = -1;
  for (int64_t v : versions) {
    if (v < 0) continue;  // a shard not called
    if (first < 0) first = v;
    if (v != first) return false;
  }
  return true;
}

// "shard 0 (a:1) at 5, shard 1 (b:2) at 4".
std::string VersionsText(const ShardedClient& client, const ShardedSession& session,
                         const std::vector<int64_t>& versions) {
  std::vector<std::string> parts;
  for (int s = 0; s < static_cast<int>(versions.size()); ++s) {
    parts.push_back(
        absl::StrCat("shard ", s, " (", client.ShardAddress(session, s), ") at ", versions[s]));
  }
  return absl::StrJoin(parts, ", ");
}

// The shards' step results put together (ShardedStepResult::merged); parameters apart.
StepResult Merge(const std::vector<absl::StatusOr<StepResult>>& results) {
  const StepResult& first = *results[0];
  StepResult out;
  out.version = first.version;
  out.parameters_version = first.parameters_version;
  out.learning_rate = first.learning_rate;
  out.duplicate = true;
  out.workers = first.workers;
  out.sequence = first.sequence;
  out.worker_incarnation = first.worker_incarnation;
  out.server_incarnation = first.server_incarnation;
  out.durable_version = first.durable_version;
  out.point = first.point;
  out.estimates = first.estimates;
  double norm_squared = 0;
  std::set<std::string> missing;
  for (const absl::StatusOr<StepResult>& r : results) {
    out.version = std::min(out.version, r->version);
    out.parameters_version = std::min(out.parameters_version, r->parameters_version);
    norm_squared += r->gradient_norm * r->gradient_norm;
    out.duplicate = out.duplicate && r->duplicate;
    out.workers = std::min(out.workers, r->workers);
    missing.insert(r->missing_workers.begin(), r->missing_workers.end());
    out.staleness = std::max(out.staleness, r->staleness);
    out.attempts = std::max(out.attempts, r->attempts);
    out.rejoins = std::max(out.rejoins, r->rejoins);
    out.durable_version = std::min(out.durable_version, r->durable_version);
    out.server_restarted = out.server_restarted || r->server_restarted;
  }
  out.gradient_norm = std::sqrt(norm_squared);
  out.missing_workers.assign(missing.begin(), missing.end());
  return out;
}

}  // namespace

bool ShardedStepResult::versions_agree() const { return AllEqual(shard_versions); }
bool ShardedPullResult::versions_agree() const { return AllEqual(shard_versions); }

ShardedWorker::ShardedWorker(ShardedClient* client, ShardedSession session, WorkerOptions options)
    : client_(client),
      session_(std::move(session)),
      worker_id_(options.worker_id.empty() ? DefaultWorkerId() : options.worker_id) {
  options.worker_id = worker_id_;
  const bool version_given = options.version.has_value();
  for (int shard = 0; shard < session_.num_shards(); ++shard) {
    // Unless told, each shard's worker starts at its shard's version when the session was created
    // or attached (SYNC and BOUNDED steps need one).
    if (!version_given) options.version = session_.shards[shard].version();
    workers_.push_back(std::make_unique<Worker>(client_->ShardClient(session_, shard),
                                                session_.session_id, options));
  }
}

std::optional<int64_t> ShardedWorker::version() const {
  std::optional<int64_t> lowest;
  for (const std::unique_ptr<Worker>& w : workers_) {
    if (!w->version().has_value()) return std::nullopt;
    lowest = std::min(lowest.value_or(*w->version()), *w->version());
  }
  return lowest;
}

absl::Status ShardedWorker::Join() {
  const int n = num_shards();
  std::vector<absl::Status> joined(n);
  FanOut(n, [&](int shard) {
    joined[shard] = AtShard(workers_[shard]->Join(), shard, client_->ShardAddress(session_, shard));
  });
  for (const absl::Status& s : joined) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<ShardedPullResult> ShardedWorker::Pull(const PullOptions& options) {
  absl::StatusOr<std::vector<std::optional<PullOptions>>> asks =
      session_.slices->SplitPull(options);
  if (!asks.ok()) return asks.status();
  const int n = num_shards();
  std::vector<absl::StatusOr<PullResult>> pulled(n, PullResult{});
  FanOut(n, [&](int shard) {
    if ((*asks)[shard].has_value()) pulled[shard] = workers_[shard]->Pull(*(*asks)[shard]);
  });
  ShardedPullResult out;
  out.shard_versions.assign(n, -1);
  std::vector<std::vector<HostTensor>> per_shard(n);
  bool first = true;
  for (int shard = 0; shard < n; ++shard) {
    if (!pulled[shard].ok()) {
      return AtShard(pulled[shard].status(), shard, client_->ShardAddress(session_, shard));
    }
    if (!(*asks)[shard].has_value()) continue;
    PullResult& r = *pulled[shard];
    out.shard_versions[shard] = r.version;
    if (first) {
      out.merged.version = r.version;
      out.merged.durable_version = r.durable_version;
      out.merged.server_incarnation = r.server_incarnation;
      out.merged.point = r.point;
      first = false;
    }
    out.merged.version = std::min(out.merged.version, r.version);
    out.merged.durable_version = std::min(out.merged.durable_version, r.durable_version);
    per_shard[shard] = std::move(r.tensors);
  }
  absl::StatusOr<std::vector<HostTensor>> whole = session_.slices->Assemble(std::move(per_shard));
  if (!whole.ok()) return whole.status();
  for (HostTensor& t : *whole) {  // rows in the order asked
    for (const TensorRows& rows : options.rows) {
      if (rows.name != t.name) continue;
      absl::StatusOr<HostTensor> ordered = ReorderRows(t, rows.indices);
      if (!ordered.ok()) return absl::InternalError(ordered.status().message());
      t = *std::move(ordered);
    }
  }
  out.merged.tensors = *std::move(whole);
  return out;
}

absl::StatusOr<ShardedStepResult> ShardedWorker::Step(const std::vector<HostTensor>& gradients,
                                                      const StepOptions& options) {
  absl::StatusOr<std::vector<std::vector<HostTensor>>> parts = session_.slices->Split(gradients);
  if (!parts.ok()) return parts.status();
  StepOptions shard_options = options;
  shard_options.placement_fingerprint = session_.fingerprint();
  const int n = num_shards();
  std::vector<absl::StatusOr<StepResult>> results(n, absl::UnknownError("not run"));
  FanOut(n, [&](int shard) {
    results[shard] = workers_[shard]->Step((*parts)[shard], shard_options);
  });

  std::vector<int> applied;
  int failed = -1;
  for (int shard = 0; shard < n; ++shard) {
    if (results[shard].ok()) {
      applied.push_back(shard);
    } else if (failed < 0) {
      failed = shard;
    }
  }
  if (failed >= 0) {
    const absl::Status& s = results[failed].status();
    absl::Status out = AtShard(s, failed, client_->ShardAddress(session_, failed));
    if (!applied.empty()) {
      absl::Status noted(out.code(),
                         absl::StrCat(out.message(), " [shards ", absl::StrJoin(applied, ", "),
                                      " applied the step]"));
      out.ForEachPayload([&noted](absl::string_view url, const absl::Cord& payload) {
        noted.SetPayload(url, payload);
      });
      out = std::move(noted);
    }
    return out;
  }

  ShardedStepResult out;
  out.merged = Merge(results);
  std::vector<std::vector<HostTensor>> per_shard(n);
  for (int shard = 0; shard < n; ++shard) {
    out.shard_versions.push_back(results[shard]->version);
    out.shard_sequences.push_back(results[shard]->sequence);
    per_shard[shard] = std::move(results[shard]->parameters);
  }
  if (!out.versions_agree() && session_.mode() == v1::Consistency::MODE_SYNC) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the shards of SYNC session ", session_.session_id, " answered step sequence ",
        out.merged.sequence, " of worker ", worker_id_, " with different versions (",
        VersionsText(*client_, session_, out.shard_versions),
        "): a shard was restored from an older checkpoint than the others, or stepped without "
        "them; the step was applied on every shard"));
  }
  absl::StatusOr<std::vector<HostTensor>> whole = session_.slices->Assemble(std::move(per_shard));
  if (!whole.ok()) return whole.status();
  out.merged.parameters = *std::move(whole);
  return out;
}

absl::Status ShardedWorker::DeleteSession() { return client_->DeleteSession(session_); }

}  // namespace client
}  // namespace optd
