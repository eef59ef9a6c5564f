// A transport of our own on plain TCP, beside gRPC (grpc_transport.h), for the storage path: the same
// RpcClient / Handler seams (ff/fs/transport.h), the same messages (the Envelope of fs.proto plus a payload),
// fewer threads and copies per call. Addresses: "tcp://host:port" (the scheme picks this transport, see
// NetRpcClient below); "host:port" is accepted too by TcpRpcClient::call.
//
// Wire format (docs/fs-operations.md, "Our own TCP transport"): on a connection, frames back to back, each
//   FrameHead (40 bytes, little-endian) | header bytes | payload bytes
// where a request's header is its Envelope (the payload taken out, as Fs.Frame carries it), a response's its
// Envelope, an error's the Status message (the code travels in FrameHead::code). Calls on one connection are
// matched by id and answered in any order.
//
// Threads: the client keeps `connections_per_peer` connections per address (a call takes the one with the
// fewest calls in flight, the first on a tie), each with one reader thread that completes its calls and a connector
// thread that makes the connection, plus one thread per client for deadlines. A frame goes out on the caller's
// thread when the socket takes it at once (one sendmsg, payload not copied), else on the connection's writer thread,
// so no caller ever blocks on a peer. The server has one accepting thread and one reader thread per connection
// (plus a writer thread once a reply does not fit the socket); handlers run on the executor (or on the reader
// thread through the FastHandler) and may reply from any thread.
//
// Deadlines: a call's timeout travels in its frame; the server hands it to the handler as
// ServerContext::deadline_ns, and the client completes the call deadline_exceeded when no answer came in time
// (a late answer is dropped). A peer that cannot be reached is unavailable; a connection that breaks fails the
// calls on it unavailable (request ids make retried writes safe); after a failed connect a connection is not
// tried again for 200 ms (calls fail fast meanwhile). Payloads above max_message_bytes are refused before
// they are sent (invalid_argument); a server that receives a frame it cannot parse closes that connection.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "ff/common/result.h"
#include "ff/fs/rpc/grpc_transport.h"
#include "ff/fs/rpc/metrics.h"
#include "ff/fs/transport.h"

namespace ff::fs::rpc {

inline constexpr std::string_view kTcpScheme = "tcp://";

struct TcpClientOptions {
  // Largest header + payload sent or accepted.
  uint64_t max_message_bytes = 256ull << 20;
  // Connections per address (as GrpcClientOptions::channels_per_peer).
  int connections_per_peer = 4;
  // A connect (on the connection's connector thread) gives up after this long.
  int64_t connect_timeout_ms = 1000;
};

// RpcClient over our TCP frames. Completions are posted to `executor`, except a successful ReadRsp of a ReadReq
// with accept_pieces, which runs on the connection's reader thread (as GrpcRpcClient does).
//
// Thread-safety: call() may be called from any thread.
class TcpRpcClient final : public RpcClient {
 public:
  explicit TcpRpcClient(Executor& executor, TcpClientOptions options = {}, MetricsRegistry* metrics = nullptr);
  // Fails the calls still in flight (unavailable) and joins its threads; none of `executor`'s tasks run here.
  ~TcpRpcClient() override;
  TcpRpcClient(const TcpRpcClient&) = delete;
  TcpRpcClient& operator=(const TcpRpcClient&) = delete;

  void call(const std::string& address, Request request, int64_t timeout_ns, Done done) override;
  int64_t in_flight() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// The TCP server: decodes each request and runs `handler` on `executor` (or `fast` on the connection's thread
// first, as GrpcServer does).
class TcpServer final : public RpcServer {
 public:
  // listen: "tcp://host:port" or "host:port" (port 0: the OS picks one). address() is "tcp://host:port".
  static Result<std::unique_ptr<TcpServer>> start(const std::string& listen, Executor& executor, Handler handler,
                                                  MetricsRegistry* metrics = nullptr,
                                                  uint64_t max_message_bytes = 256ull << 20,
                                                  FastHandler fast = nullptr);
  ~TcpServer() override;
  uint16_t port() const override;
  const std::string& address() const override;
  // Stops accepting connections and reading requests; calls still open after timeout_ms are finished
  // [not_serving]; then closes every connection. Idempotent.
  void shutdown(int64_t timeout_ms) override;

 private:
  struct Impl;
  TcpServer() = default;
  std::unique_ptr<Impl> impl_;
};

// Both transports behind one RpcClient: "tcp://" addresses go to TcpRpcClient, the rest to GrpcRpcClient. What
// services and clients hold, so a cluster may mix servers of both kinds (each node's address names its transport).
class NetRpcClient final : public RpcClient {
 public:
  explicit NetRpcClient(Executor& executor, GrpcClientOptions grpc_options = {}, TcpClientOptions tcp_options = {},
                        MetricsRegistry* metrics = nullptr);
  void call(const std::string& address, Request request, int64_t timeout_ns, Done done) override;
  int64_t in_flight() const;

 private:
  GrpcRpcClient grpc_;
  TcpRpcClient tcp_;
};

// Starts a TcpServer for a "tcp://" listen address, else a GrpcServer (256 MiB message limit either way).
Result<std::unique_ptr<RpcServer>> start_rpc_server(const std::string& listen, Executor& executor, Handler handler,
                                                    MetricsRegistry* metrics = nullptr, FastHandler fast = nullptr);

// The listen address with the transport FF_RPC_TRANSPORT names ("tcp" adds the tcp:// scheme, "grpc" drops it;
// unset or empty: as configured); invalid_argument naming any other value.
Result<std::string> listen_with_transport(const std::string& listen);

}  // namespace ff::fs::rpc
