// The choice both RPC clients make among a peer's connections (GrpcRpcClient's channels, TcpRpcClient's lanes).
#pragma once

#include <atomic>
#include <memory>
#include <vector>

namespace ff::fs::rpc {

// The lane with the fewest calls in flight (`busy`), the first on a tie, so a lone caller stays on one warm
// connection; its busy count is taken (the caller gives it back when the call ends).
template <typename Lane>
Lane& take_least_busy(const std::vector<std::unique_ptr<Lane>>& lanes) {
  Lane* pick = lanes.front().get();
  for (const auto& lane : lanes) {
    if (lane->busy.load(std::memory_order_relaxed) < pick->busy.load(std::memory_order_relaxed)) pick = lane.get();
  }
  pick->busy.fetch_add(1, std::memory_order_relaxed);
  return *pick;
}

}  // namespace ff::fs::rpc
