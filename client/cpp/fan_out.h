// File: fan_out.h
//
// FanOut: runs one function per shard at once and waits for all of them; how a ShardedClient and
// a ShardedWorker (sharded_client.h, sharded_worker.h) send their calls to every shard together
// (a SYNC step blocks at each shard's barrier, so the shards must not be called one after the
// other).
//
// Who may call it: the sharded client's code.
//
// Thread safety: FanOut may be called from any thread; `fn` runs on several threads at once and
// must be safe to call so (each call touching only its own index's state).

#ifndef OPTD_CLIENT_CPP_FAN_OUT_H_
#define OPTD_CLIENT_CPP_FAN_OUT_H_

#include <functional>

namespace optd {
namespace client {

// Calls fn(0), ..., fn(n - 1) at once, fn(0) on the calling thread and the others on threads of
// their own, and returns when every call has returned. n <= 1 calls fn(0) (if n == 1) inline.
void FanOut(int n, const std::function<void(int)>& fn);

}  // namespace client
}  // namespace optd

#endif  // OPTD_CLIENT_CPP_FAN_OUT_H_
