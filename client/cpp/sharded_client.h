// File: sharded_client.h
//
// optd::client::ShardedClient: the C++ client of a session sharded over N >= 2 optd servers
// ("shards", README "Sharding"; the C++ counterpart of the Python optd.ShardedClient). Each shard
// is an ordinary optd holding a session of the same id over its slices of the model: whole
// tensors, or row ranges of a large tensor. The placement is planned by a server (PlanPlacement),
// given to every shard at creation and stored there; attaching reads it back from every shard.
// Workers step through a ShardedWorker (sharded_worker.h), which cuts each step along the
// placement and sends the pieces to every shard at once.
//
//   absl::StatusOr<std::unique_ptr<ShardedClient>> client =
//       ShardedClient::Connect({"10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"});
//   // or ShardedClient::Connect(*ResolveShards("optd-headless", 50051)) in Kubernetes
//   absl::StatusOr<ShardedSession> session =
//       (*client)->CreateSession("model", config, initial_tensors);  // or Attach("model")
//   ShardedWorker worker(client->get(), *session);
//   absl::StatusOr<ShardedStepResult> r = worker.Step(whole_gradients);
//
// Who may call it: any C++ program (workers, benchmarks, examples, tests).
//
// Thread safety: a ShardedClient is thread-safe (its Clients are); a ShardedSession is a value.
//
// Errors: those of Client (client.h), with the message prefixed by the shard and its address
// ("shard 1 (10.0.0.2:50051): ..."), code and payloads kept (CurrentVersion, NeedsRejoin and
// ServerIncarnation still read them). InvalidArgument for fewer than two addresses, a repeated
// one, an empty session id, tensors that do not fit the placement. FailedPrecondition when
// attaching finds shards that disagree on the placement, a session that is not sharded, or a
// placement of another number of shards than the addresses given.

#ifndef OPTD_CLIENT_CPP_SHARDED_CLIENT_H_
#define OPTD_CLIENT_CPP_SHARDED_CLIENT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "client/cpp/client.h"
#include "client/cpp/host_tensor.h"
#include "client/cpp/shard_slices.h"
#include "optd/v1/optd.pb.h"

namespace optd {
namespace client {

// "ip:port" ("[ip]:port" for IPv6) of every address `name` resolves to (a Kubernetes headless
// service resolves to its pods' addresses), sorted and without repeats. InvalidArgument if the
// port is not in [1, 65535], the name does not resolve, or it resolves to fewer than two
// addresses (a sharded session needs at least two shards).
absl::StatusOr<std::vector<std::string>> ResolveShards(absl::string_view name, int port);

// `status` with its message prefixed by "shard <shard> (<address>): ", code and payloads kept.
// OK stays OK.
absl::Status AtShard(const absl::Status& status, int shard, absl::string_view address);

// A sharded session as created or attached: plain data, cheap enough to copy.
struct ShardedSession {
  std::string session_id;
  // The placement (shard 0's copy) and its index.
  v1::Placement placement;
  std::shared_ptr<const ShardSlices> slices;
  // client_of_shard[s]: the index, in ShardedClient::addresses(), of the server holding shard s.
  std::vector<int> client_of_shard;
  // Each shard's session as it answered CreateSession or GetSession, by shard index.
  std::vector<v1::Session> shards;

  int num_shards() const { return static_cast<int>(client_of_shard.size()); }
  uint64_t fingerprint() const { return placement.fingerprint(); }
  // The consistency mode (the same on every shard).
  v1::Consistency::Mode mode() const { return shards.at(0).config().consistency().mode(); }
};

struct ShardedCreateOptions {
  // Tensors of at least this many elements (and two rows) are cut into one row range per shard
  // when the optimizer is element-wise; 0: the server's default (4Mi elements).
  int64_t split_min_elements = 0;
  // Placement.checkpoint_every_versions: shards started with --checkpoint_dir checkpoint the
  // session at every multiple of this version, so that after a shard restarts every shard can go
  // back to a common version (README "Sharding"; 0: never). >= 0; 100 as in the Python and Go
  // clients.
  int64_t checkpoint_every_versions = 100;
};

class ShardedClient {
 public:
  // One Client per address (Client::Connect with `options`). The order of the addresses matters
  // only to CreateSession (shard i on addresses[i]); Attach finds each shard wherever it is.
  // InvalidArgument for fewer than two addresses or a repeated one, and Client::Connect's errors.
  static absl::StatusOr<std::unique_ptr<ShardedClient>> Connect(std::vector<std::string> addresses,
                                                                ClientOptions options = {});

  ShardedClient(const ShardedClient&) = delete;
  ShardedClient& operator=(const ShardedClient&) = delete;

  const std::vector<std::string>& addresses() const { return addresses_; }
  int size() const { return static_cast<int>(clients_.size()); }
  // The Client of addresses()[i]. REQUIRES: 0 <= i < size().
  Client* client(int i) const { return clients_[i].get(); }
  // The Client holding shard `shard` of `session`.
  Client* ShardClient(const ShardedSession& session, int shard) const {
    return clients_[session.client_of_shard[shard]].get();
  }
  const std::string& ShardAddress(const ShardedSession& session, int shard) const {
    return addresses_[session.client_of_shard[shard]];
  }

  // The placement of a model of `tensors` (names and shapes; values unused) over size() shards
  // for a session of `config` (its optimizer and clipping), planned by the first server.
  absl::StatusOr<v1::Placement> PlanPlacement(const v1::SessionConfig& config,
                                              const std::vector<HostTensor>& tensors,
                                              const ShardedCreateOptions& options = {});

  // Creates session `session_id` (required: every shard holds it under that id) of `config` with
  // initial values `tensors` (dense, model order) on every shard at once, shard i on
  // addresses()[i], each with its slices and the placement. If a shard refuses, the shards that
  // had created it delete it again and that shard's error is returned. `config.placement` must be
  // unset (it is planned here).
  absl::StatusOr<ShardedSession> CreateSession(std::string session_id, v1::SessionConfig config,
                                               const std::vector<HostTensor>& tensors,
                                               const ShardedCreateOptions& options = {});

  // Attaches to an existing sharded session: reads it from every server (GetSession, at once) and
  // checks they agree: every one sharded over size() shards, the same fingerprint, each shard index
  // held once. NOT_FOUND (with the address) if a server does not hold it; FailedPrecondition
  // otherwise.
  absl::StatusOr<ShardedSession> Attach(absl::string_view session_id);

  // Deletes the session on every shard at once; every shard is tried, and the first error (in
  // shard order) is returned.
  absl::Status DeleteSession(const ShardedSession& session);

 private:
  ShardedClient(std::vector<std::string> addresses, std::vector<std::unique_ptr<Client>> clients);

  const std::vector<std::string> addresses_;
  const std::vector<std::unique_ptr<Client>> clients_;
};

}  // namespace client
}  // namespace optd

#endif  // OPTD_CLIENT_CPP_SHARDED_CLIENT_H_
