// What both RPC transports (gRPC: a bare host:port; ours: tcp://host:port) must do alike, run against each: round
// trips of every field and of large and shared payloads, error codes and tags, dropped replies, deadlines, unreachable
// peers and restarted servers, shutdown with calls a service still holds. Transport-specific behaviour is in
// grpc_transport_test.cc and tcp_transport_test.cc.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "ff/fs/rpc/tcp_transport.h"
#include "test_util.h"

namespace ff::fs::rpc {
namespace {

using testing::kSecond;
using testing::make_bytes;

class BothTransportsTest : public ::testing::TestWithParam<std::string> {
 protected:
  // "host:port" with the scheme of the transport under test.
  std::string with_scheme(const std::string& host_port) const {
    return GetParam() == "tcp" ? std::string(kTcpScheme) + host_port : host_port;
  }
  Result<std::unique_ptr<RpcServer>> start(const std::string& host_port, Executor& executor, Handler handler) {
    return start_rpc_server(with_scheme(host_port), executor, std::move(handler));
  }
};

TEST_P(BothTransportsTest, RoundTripCarriesEveryFieldAndThePayload) {
  ThreadExecutor server_executor("server");
  ThreadExecutor client_executor("client");
  std::atomic<int> handled{0};
  auto server = start("127.0.0.1:0", server_executor, [&](const ServerContext& context, Request request, Reply reply) {
    ++handled;
    // NOTE: gRPC sends the timeout rounded up to a coarse unit (seen: ~90 ms over 10 s under load), so
    // the server's deadline may pass the client's a little.
    EXPECT_LT(context.deadline_ns, server_executor.clock().now_ns() + 10 * kSecond + kSecond / 2);
    auto* write = std::get_if<WriteReq>(&request);
    ASSERT_NE(write, nullptr);
    EXPECT_EQ(write->request_id, (ClientRequestId{7, 2, 99}));
    EXPECT_EQ(write->chunk, (ChunkId{0x2a, 17}));
    ReadRsp rsp;
    rsp.meta.id = write->chunk;
    rsp.meta.committed_version = 5;
    rsp.meta.committed_crc32c = 0xdeadbeef;
    // The payload arrives in one buffer at a 4 KiB-aligned address (the chunk engine writes it with O_DIRECT
    // as it is), not in `data`.
    EXPECT_TRUE(write->data.empty());
    EXPECT_TRUE(write->shared_data.is_set());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(write->payload().data()) % 4096, 0u);
    rsp.data = Bytes(write->payload().begin(), write->payload().end());  // echo the payload back
    rsp.dirty = true;
    reply(Response{std::move(rsp)});
  });
  ASSERT_TRUE(server.is_ok()) << server.status();
  NetRpcClient client(client_executor);
  Bytes payload = make_bytes(5 << 20, 3);  // larger than gRPC's default 4 MiB message limit
  WriteReq write{ClientRequestId{7, 2, 99}, 4, 9, ChunkId{0x2a, 17}, 4096, payload};
  auto rsp = response_as<ReadRsp>(call_blocking(client, (*server)->address(), Request{std::move(write)}, 10 * kSecond));
  ASSERT_TRUE(rsp.is_ok()) << rsp.status();
  EXPECT_EQ(rsp->data, payload);
  EXPECT_EQ(rsp->meta.committed_version, 5u);
  EXPECT_EQ(rsp->meta.committed_crc32c, 0xdeadbeefu);
  EXPECT_TRUE(rsp->dirty);
  EXPECT_EQ(handled.load(), 1);

  // A shared payload is sent from where it lies (gRPC: its own slice; TCP: sendmsg) and arrives the same way; the
  // payload the sender shares is not consumed.
  SharedBytes shared = SharedBytes::adopt(make_bytes(3 << 20, 5));
  WriteReq shared_write{ClientRequestId{7, 2, 99}, 4, 9, ChunkId{0x2a, 17}, 0, {}};
  shared_write.shared_data = shared;
  shared_write.chunk_size = 4 << 20;
  auto echoed =
      response_as<ReadRsp>(call_blocking(client, (*server)->address(), Request{std::move(shared_write)}, 5 * kSecond));
  ASSERT_TRUE(echoed.is_ok()) << echoed.status();
  EXPECT_EQ(echoed->data, shared.to_vector());
  EXPECT_EQ(shared.size(), size_t{3} << 20);
  EXPECT_EQ(handled.load(), 2);

  // Routing information with nested maps survives the trip.
  RoutingInfo routing;
  routing.version = 12;
  routing.nodes[1] = NodeInfo{1, "127.0.0.1:1", NodeStatus::kAlive};
  routing.nodes[2] = NodeInfo{2, "tcp://127.0.0.1:2", NodeStatus::kAlive};
  routing.targets[1001] = TargetInfo{1001, 1, 3, PublicTargetState::kSyncing, LocalTargetState::kOnline};
  routing.chains[3] = ChainInfo{3, 8, {{1001, PublicTargetState::kSyncing}, {2001, PublicTargetState::kOffline}}};
  routing.chain_tables[1] = ChainTable{1, 2, {3}};
  auto server2 = start("127.0.0.1:0", server_executor, [&](const ServerContext&, Request, Reply reply) {
    reply(Response{GetRoutingRsp{routing.version, routing}});
  });
  ASSERT_TRUE(server2.is_ok());
  auto got =
      response_as<GetRoutingRsp>(call_blocking(client, (*server2)->address(), Request{GetRoutingReq{}}, 10 * kSecond));
  ASSERT_TRUE(got.is_ok()) << got.status();
  ASSERT_TRUE(got->routing.has_value());
  EXPECT_EQ(*got->routing, routing);
}

TEST_P(BothTransportsTest, ErrorsKeepTheirCodeAndTagAndDroppedRepliesEndTheCall) {
  ThreadExecutor executor("server");
  auto server = start("127.0.0.1:0", executor, [](const ServerContext&, Request, Reply reply) {
    reply(fs_error(FsError::kStaleChainVersion, "chain 7: request has version 3, target has 4"));
  });
  ASSERT_TRUE(server.is_ok()) << server.status();
  ThreadExecutor client_executor("client");
  NetRpcClient client(client_executor);
  auto rsp = call_blocking(client, (*server)->address(), Request{GetRoutingReq{}}, 5 * kSecond);
  ASSERT_FALSE(rsp.is_ok());
  EXPECT_EQ(fs_error_of(rsp.status()), FsError::kStaleChainVersion) << rsp.status().to_string();
  EXPECT_EQ(rsp.status().code(), fs_error(FsError::kStaleChainVersion, "").code());
  EXPECT_NE(rsp.status().message().find("chain 7: request has version 3"), std::string::npos) << rsp.status();
  EXPECT_NE(rsp.status().message().find((*server)->address()), std::string::npos) << rsp.status();
  // A dropped reply (a stopped service) ends the call [not_serving] instead of hanging.
  auto dropping = start("127.0.0.1:0", executor, [](const ServerContext&, Request, Reply) {});
  ASSERT_TRUE(dropping.is_ok());
  auto dropped = call_blocking(client, (*dropping)->address(), Request{GetRoutingReq{}}, 5 * kSecond);
  EXPECT_EQ(fs_error_of(dropped.status()), FsError::kNotServing) << dropped.status().to_string();
}

// A late answer is dropped after the deadline; a port nobody listens on is unavailable at once; a server that
// comes up there later is found; a server that goes away fails the call on its connection, and one started on
// the same port is used next.
TEST_P(BothTransportsTest, DeadlinesUnreachablePeersAndRestartedServers) {
  ThreadExecutor executor("server");
  auto server = start("127.0.0.1:0", executor, [&](const ServerContext&, Request, Reply reply) {
    executor.post_after(1 * kSecond, [reply] { reply(Response{GetRoutingRsp{}}); });
  });
  ASSERT_TRUE(server.is_ok());
  ThreadExecutor client_executor("client");
  NetRpcClient client(client_executor);
  auto start_time = std::chrono::steady_clock::now();
  auto late = call_blocking(client, (*server)->address(), Request{GetRoutingReq{}}, 200'000'000);
  auto elapsed = std::chrono::steady_clock::now() - start_time;
  EXPECT_EQ(late.status().code(), StatusCode::kDeadlineExceeded) << late.status().to_string();
  EXPECT_GE(elapsed, std::chrono::milliseconds(150));
  EXPECT_LT(elapsed, std::chrono::milliseconds(900));
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));  // the late answer arrives and is dropped
  EXPECT_EQ(client.in_flight(), 0);

  const std::string host_port = "127.0.0.1:" + std::to_string(testing::free_port());
  const std::string address = with_scheme(host_port);
  start_time = std::chrono::steady_clock::now();
  auto unreachable = call_blocking(client, address, Request{GetRoutingReq{}}, 5 * kSecond);
  EXPECT_EQ(unreachable.status().code(), StatusCode::kUnavailable) << unreachable.status().to_string();
  EXPECT_LT(std::chrono::steady_clock::now() - start_time, std::chrono::seconds(2));
  auto answer = [](const ServerContext&, Request, Reply reply) { reply(Response{GetRoutingRsp{}}); };
  // Calls until one succeeds (a transport may pause briefly after a failed connect), within 5 s.
  auto call_until_ok = [&] {
    Result<Response> result = internal_error("not tried");
    for (int attempt = 0; attempt < 25 && !result.is_ok(); ++attempt) {
      result = call_blocking(client, address, Request{GetRoutingReq{}}, 2 * kSecond);
      if (!result.is_ok()) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return result;
  };
  auto later = start(host_port, executor, answer);
  ASSERT_TRUE(later.is_ok()) << later.status();
  auto found = call_until_ok();
  EXPECT_TRUE(found.is_ok()) << found.status();
  (*later)->shutdown(100);
  later->reset();
  auto gone = call_blocking(client, address, Request{GetRoutingReq{}}, 2 * kSecond);
  EXPECT_EQ(gone.status().code(), StatusCode::kUnavailable) << gone.status().to_string();
  auto again = start(host_port, executor, answer);
  ASSERT_TRUE(again.is_ok()) << again.status();
  auto back = call_until_ok();
  EXPECT_TRUE(back.is_ok()) << back.status();
}

// A service that holds a call's Reply and never answers (a stopped service whose queued work still holds it)
// cannot hang the server's shutdown: the call ends unavailable ([not_serving], or gRPC's own cancellation at the
// deadline, whichever lands first), and a late answer does nothing.
TEST_P(BothTransportsTest, ShutdownFinishesCallsTheServiceStillHolds) {
  ThreadExecutor executor("server");
  std::mutex mutex;
  std::vector<Reply> held;  // released only after the shutdown
  std::promise<void> received;
  auto server = start("127.0.0.1:0", executor, [&](const ServerContext&, Request, Reply reply) {
    std::lock_guard lock(mutex);
    held.push_back(std::move(reply));
    received.set_value();
  });
  ASSERT_TRUE(server.is_ok());
  ThreadExecutor client_executor("client");
  NetRpcClient client(client_executor);
  auto pending = std::async(std::launch::async, [&] {
    return call_blocking(client, (*server)->address(), Request{GetRoutingReq{}}, 30 * kSecond);
  });
  ASSERT_EQ(received.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
  const auto start_time = std::chrono::steady_clock::now();
  (*server)->shutdown(200);
  EXPECT_LT(std::chrono::steady_clock::now() - start_time, std::chrono::seconds(5));
  ASSERT_EQ(pending.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  auto rsp = pending.get();
  EXPECT_EQ(rsp.status().code(), StatusCode::kUnavailable) << rsp.status().to_string();
  std::lock_guard lock(mutex);
  held.front()(Response{GetRoutingRsp{}});
  held.clear();
}

INSTANTIATE_TEST_SUITE_P(Transports, BothTransportsTest, ::testing::Values("grpc", "tcp"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace
}  // namespace ff::fs::rpc
