#include "client/cpp/sharded_client.h"

#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <set>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/cpp/fan_out.h"

namespace optd {
namespace client {

absl::StatusOr<std::vector<std::string>> ResolveShards(absl::string_view name, int port) {
  if (port < 1 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("port = ", port, "; must be in [1, 65535]"));
  }
  if (name.empty()) return absl::InvalidArgumentError("name is empty");
  addrinfo hints = {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const std::string host(name);
  if (int rc = getaddrinfo(host.c_str(), nullptr, &hints, &found); rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resolve '", host, "': ", gai_strerror(rc)));
  }
  std::set<std::string> hosts;
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    char text[NI_MAXHOST] = {};
    if (getnameinfo(a->ai_addr, a->ai_addrlen, text, sizeof(text), nullptr, 0, NI_NUMERICHOST) ==
        0) {
      hosts.insert(text);
    }
  }
  freeaddrinfo(found);
  std::vector<std::string> out;
  for (const std::string& h : hosts) {
    out.push_back(h.find(':') != std::string::npos ? absl::StrCat("[", h, "]:", port)
                                                   : absl::StrCat(h, ":", port));
  }
  if (out.size() < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", host, "' resolves to [", absl::StrJoin(out, ", "),
        "]: a sharded session needs at least two shard addresses (use Client for one server)"));
  }
  return out;
}

absl::Status AtShard(const absl::Status& status, int shard, absl::string_view address) {
  if (status.ok()) return status;
  absl::Status out(status.code(),
                   absl::StrCat("shard ", shard, " (", address, "): ", status.message()));
  status.ForEachPayload(
      [&out](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
  return out;
}

absl::StatusOr<std::unique_ptr<ShardedClient>> ShardedClient::Connect(
    std::vector<std::string> addresses, ClientOptions options) {
  const std::string given = absl::StrCat("[", absl::StrJoin(addresses, ", "), "]");
  if (addresses.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("addresses = ", given,
                     ": a sharded client needs at least two shard addresses (use Client for one "
                     "server)"));
  }
  if (addresses.size() > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat(addresses.size(), " addresses: a sharded session has at most 64 shards"));
  }
  std::set<std::string> seen;
  for (const std::string& a : addresses) {
    if (!seen.insert(a).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("addresses = ", given, ": address ", a, " is repeated"));
    }
  }
  std::vector<std::unique_ptr<Client>> clients;
  for (const std::string& a : addresses) {
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(a, options);
    if (!c.ok()) return c.status();
    clients.push_back(*std::move(c));
  }
  return std::unique_ptr<ShardedClient>(
      new ShardedClient(std::move(addresses), std::move(clients)));
}

ShardedClient::ShardedClient(std::vector<std::string> addresses,
                             std::vector<std::unique_ptr<Client>> clients)
    : addresses_(std::move(addresses)), clients_(std::move(clients)) {}

absl::StatusOr<v1::Placement> ShardedClient::PlanPlacement(const v1::SessionConfig& config,
                                                           const std::vector<HostTensor>& tensors,
                                                           const ShardedCreateOptions& options) {
  v1::PlanPlacementRequest request;
  for (const HostTensor& t : tensors) {
    v1::TensorInfo* info = request.add_tensors();
    info->set_name(t.name);
    info->mutable_shape()->Add(t.shape.begin(), t.shape.end());
  }
  *request.mutable_optimizer() = config.optimizer();
  *request.mutable_clipping() = config.clipping();
  request.set_shards(static_cast<uint32_t>(clients_.size()));
  request.set_split_min_elements(options.split_min_elements);
  absl::StatusOr<v1::Placement> placement = clients_[0]->PlanPlacement(request);
  return placement.ok() ? placement : AtShard(placement.status(), 0, addresses_[0]);
}

absl::StatusOr<ShardedSession> ShardedClient::CreateSession(std::string session_id,
                                                            v1::SessionConfig config,
                                                            const std::vector<HostTensor>& tensors,
                                                            const ShardedCreateOptions& options) {
  if (session_id.empty()) {
    return absl::InvalidArgumentError(
        "session_id is required for a sharded session (every shard holds it under the same id)");
  }
  if (options.checkpoint_every_versions < 0) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint_every_versions = ",
                                                   options.checkpoint_every_versions,
                                                   "; must be >= 0 (0: none)"));
  }
  if (config.has_placement()) {
    return absl::InvalidArgumentError(
        "config.placement is set; a ShardedClient plans the placement itself");
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].row_sparse()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensors[", i, "] '", tensors[i].name, "' is row-sparse; initial values must be dense"));
    }
  }
  absl::StatusOr<v1::Placement> placement = PlanPlacement(config, tensors, options);
  if (!placement.ok()) return placement.status();
  absl::StatusOr<ShardSlices> slices = ShardSlices::FromPlacement(*placement);
  if (!slices.ok()) return slices.status();
  absl::StatusOr<std::vector<std::vector<HostTensor>>> parts = slices->Split(tensors);
  if (!parts.ok()) return parts.status();

  const int n = size();
  std::vector<absl::StatusOr<v1::Session>> created(n, absl::UnknownError("not run"));
  FanOut(n, [&](int shard) {
    v1::SessionConfig shard_config = config;
    *shard_config.mutable_placement() = *placement;
    shard_config.mutable_placement()->set_shard(static_cast<uint32_t>(shard));
    shard_config.mutable_placement()->set_checkpoint_every_versions(
        options.checkpoint_every_versions);
    created[shard] = clients_[shard]->CreateSession(session_id, shard_config, (*parts)[shard]);
  });
  for (int shard = 0; shard < n; ++shard) {
    if (created[shard].ok()) continue;
    const absl::Status failure = AtShard(created[shard].status(), shard, addresses_[shard]);
    FanOut(n, [&](int other) {
      if (created[other].ok()) clients_[other]->DeleteSession(session_id).IgnoreError();
    });
    return failure;
  }
  ShardedSession session;
  session.session_id = std::move(session_id);
  session.placement = *std::move(placement);
  session.placement.set_checkpoint_every_versions(options.checkpoint_every_versions);
  session.slices = std::make_shared<const ShardSlices>(*std::move(slices));
  for (int shard = 0; shard < n; ++shard) {
    session.client_of_shard.push_back(shard);
    session.shards.push_back(*std::move(created[shard]));
  }
  return session;
}

absl::StatusOr<ShardedSession> ShardedClient::Attach(absl::string_view session_id) {
  const int n = size();
  std::vector<absl::StatusOr<v1::Session>> read(n, absl::UnknownError("not run"));
  FanOut(n, [&](int i) { read[i] = clients_[i]->GetSession(session_id); });
  for (int i = 0; i < n; ++i) {
    if (!read[i].ok()) {
      const absl::Status& s = read[i].status();
      return absl::Status(s.code(), absl::StrCat(addresses_[i], ": ", s.message()));
    }
  }
  ShardedSession session;
  session.session_id = std::string(session_id);
  session.client_of_shard.assign(n, -1);
  session.shards.resize(n);
  const v1::Placement first = read[0]->config().placement();
  for (int i = 0; i < n; ++i) {
    const v1::Placement& p = read[i]->config().placement();
    if (p.shards() == 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("session ", session_id, " on ", addresses_[i],
                       " is not sharded: attach to it with a Client of that address alone"));
    }
    if (p.shards() != static_cast<uint32_t>(n)) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "session %s on %s holds shard %d of %d, but %d addresses were given; give the address "
          "of every shard, once",
          session_id, addresses_[i], p.shard(), p.shards(), n));
    }
    if (p.fingerprint() != first.fingerprint()) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "the shards disagree on session %s's placement: %s holds fingerprint %#x, %s holds "
          "%#x; they hold different sessions of the same id",
          session_id, addresses_[0], first.fingerprint(), addresses_[i], p.fingerprint()));
    }
    if (p.shard() >= static_cast<uint32_t>(n)) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "session %s on %s claims shard %d of %d", session_id, addresses_[i], p.shard(), n));
    }
    if (session.client_of_shard[p.shard()] != -1) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s and %s both hold shard %d of session %s; give the address of every shard, once",
          addresses_[session.client_of_shard[p.shard()]], addresses_[i], p.shard(), session_id));
    }
    session.client_of_shard[p.shard()] = i;
    session.shards[p.shard()] = *std::move(read[i]);
  }
  session.placement = session.shards[0].config().placement();
  absl::StatusOr<ShardSlices> slices = ShardSlices::FromPlacement(session.placement);
  if (!slices.ok()) return slices.status();
  session.slices = std::make_shared<const ShardSlices>(*std::move(slices));
  return session;
}

absl::Status ShardedClient::DeleteSession(const ShardedSession& session) {
  const int n = session.num_shards();
  std::vector<absl::Status> deleted(n);
  FanOut(n, [&](int shard) {
    deleted[shard] = AtShard(ShardClient(session, shard)->DeleteSession(session.session_id), shard,
                             ShardAddress(session, shard));
  });
  for (const absl::Status& s : deleted) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace client
}  // namespace optd
