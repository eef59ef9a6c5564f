#include "ff/fs/rpc/tcp_transport.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <future>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "ff/fs/fs.pb.h"
#include "test_util.h"

namespace ff::fs::rpc {
namespace {

using testing::kSecond;
using testing::make_bytes;

// The server echoes a WriteReq's payload and chunk id back as a ReadRsp.
Handler echo_handler(std::atomic<int>* handled = nullptr) {
  return [handled](const ServerContext&, Request request, Reply reply) {
    if (handled != nullptr) ++*handled;
    auto* write = std::get_if<WriteReq>(&request);
    if (write == nullptr) {
      reply(Response{GetRoutingRsp{}});
      return;
    }
    ReadRsp rsp;
    rsp.meta.id = write->chunk;
    rsp.data = Bytes(write->payload().begin(), write->payload().end());
    reply(Response{std::move(rsp)});
  };
}

// What the TCP server tells a handler and its address form; the round trip itself is in transports_test.cc.
TEST(TcpTransportTest, ContextAndAddressName) {
  ThreadExecutor server_executor("server");
  ThreadExecutor client_executor("client");
  auto server =
      TcpServer::start("127.0.0.1:0", server_executor, [&](const ServerContext& context, Request, Reply reply) {
        EXPECT_LE(context.deadline_ns, server_executor.clock().now_ns() + 10 * kSecond);
        EXPECT_GT(context.deadline_ns, server_executor.clock().now_ns() + 5 * kSecond);
        EXPECT_TRUE(context.shared_payloads);
        EXPECT_TRUE(context.reply_from_any_thread);
        EXPECT_TRUE(context.peer.starts_with("tcp:127.0.0.1:")) << context.peer;
        reply(Response{GetRoutingRsp{}});
      });
  ASSERT_TRUE(server.is_ok()) << server.status();
  EXPECT_EQ((*server)->address(), fmt::format("tcp://127.0.0.1:{}", (*server)->port()));
  TcpRpcClient client(client_executor);
  // "host:port" without the scheme works too.
  auto got =
      call_blocking(client, fmt::format("127.0.0.1:{}", (*server)->port()), Request{GetRoutingReq{}}, 10 * kSecond);
  EXPECT_TRUE(got.is_ok()) << got.status();
}

// A ReadReq with accept_pieces gets its payload as pieces of one recycled aligned buffer, completed on the
// connection's thread; a plain one gets `data`.
TEST(TcpTransportTest, ReadsTakenAsPiecesArriveInOneAlignedBuffer) {
  ThreadExecutor server_executor("server");
  ThreadExecutor client_executor("client");
  const Bytes payload = make_bytes(1 << 20, 9);
  auto server = TcpServer::start("127.0.0.1:0", server_executor, [&](const ServerContext&, Request, Reply reply) {
    ReadRsp rsp;
    rsp.shared_data = SharedBytes::adopt(Bytes(payload));
    reply(Response{std::move(rsp)});
  });
  ASSERT_TRUE(server.is_ok()) << server.status();
  TcpRpcClient client(client_executor);
  ReadReq read{1, 2, 1001, ChunkId{5, 6}, 0, 1 << 20, ReadMode::kStrict};
  read.accept_pieces = true;
  auto pieces = response_as<ReadRsp>(call_blocking(client, (*server)->address(), Request{read}, 5 * kSecond));
  ASSERT_TRUE(pieces.is_ok()) << pieces.status();
  ASSERT_TRUE(pieces->pieces.is_set());
  ASSERT_EQ(pieces->pieces.size, payload.size());
  ASSERT_EQ(pieces->pieces.pieces.size(), 1u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(pieces->pieces.pieces[0].data()) % 4096, 0u);
  Bytes copied(payload.size());
  pieces->pieces.copy_to(0, copied);
  EXPECT_EQ(copied, payload);
  read.accept_pieces = false;
  auto plain = response_as<ReadRsp>(call_blocking(client, (*server)->address(), Request{read}, 5 * kSecond));
  ASSERT_TRUE(plain.is_ok()) << plain.status();
  EXPECT_FALSE(plain->pieces.is_set());
  EXPECT_EQ(plain->data, payload);
}

TEST(TcpTransportTest, OversizeRequestIsRefusedBeforeItIsSent) {
  ThreadExecutor executor("server");
  std::atomic<int> handled{0};
  auto server = TcpServer::start("127.0.0.1:0", executor, echo_handler(&handled));
  ASSERT_TRUE(server.is_ok());
  ThreadExecutor client_executor("client");
  TcpRpcClient client(client_executor, TcpClientOptions{.max_message_bytes = 1 << 20});
  WriteReq write{ClientRequestId{1, 1, 1}, 1, 1, ChunkId{1, 1}, 0, make_bytes(2 << 20, 1)};
  auto rsp = call_blocking(client, (*server)->address(), Request{std::move(write)}, 5 * kSecond);
  EXPECT_EQ(rsp.status().code(), StatusCode::kInvalidArgument) << rsp.status();
  EXPECT_NE(rsp.status().message().find("limit of 1048576 bytes"), std::string::npos) << rsp.status();
  EXPECT_EQ(handled.load(), 0);
  auto bad_address = call_blocking(client, "tcp://127.0.0.1:http", Request{GetRoutingReq{}}, 5 * kSecond);
  EXPECT_EQ(bad_address.status().code(), StatusCode::kInvalidArgument) << bad_address.status();
  EXPECT_NE(bad_address.status().message().find("'http'"), std::string::npos) << bad_address.status();
}

// The frame layout of tcp_transport.h, written by hand here to send what our client never would.
struct RawHead {
  uint32_t magic;
  uint8_t kind;
  uint8_t reserved[3];
  uint64_t id;
  uint32_t header_bytes;
  int32_t code;
  int64_t timeout_ns;
  uint64_t payload_bytes;
};
static_assert(sizeof(RawHead) == 40);

int raw_connect(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Reads up to n bytes within 5 s; returns what came (0 at the end of the stream).
ssize_t read_within(int fd, void* out, size_t n) {
  size_t got = 0;
  while (got < n) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 5000) != 1) return -1;
    ssize_t r = recv(fd, static_cast<char*>(out) + got, n - got, 0);
    if (r <= 0) return static_cast<ssize_t>(got);
    got += static_cast<size_t>(r);
  }
  return static_cast<ssize_t>(got);
}

// A header that is no Envelope gets a [malformed] error frame for its call; bytes that are no frame at all close
// that connection only; the server keeps serving.
TEST(TcpTransportTest, MalformedFramesGetAnErrorOrLoseTheirConnectionOnly) {
  ThreadExecutor executor("server");
  std::atomic<int> handled{0};
  auto server = TcpServer::start("127.0.0.1:0", executor, echo_handler(&handled));
  ASSERT_TRUE(server.is_ok());
  int fd = raw_connect((*server)->port());
  ASSERT_GE(fd, 0);
  const std::string junk = "\xff\xff\xff not protobuf";
  RawHead head{0x31524646, 1, {0, 0, 0}, 42, static_cast<uint32_t>(junk.size()), 0, kSecond, 0};
  ASSERT_EQ(send(fd, &head, sizeof head, 0), static_cast<ssize_t>(sizeof head));
  ASSERT_EQ(send(fd, junk.data(), junk.size(), 0), static_cast<ssize_t>(junk.size()));
  RawHead answer{};
  ASSERT_EQ(read_within(fd, &answer, sizeof answer), static_cast<ssize_t>(sizeof answer));
  EXPECT_EQ(answer.kind, 3);  // an error
  EXPECT_EQ(answer.id, 42u);
  std::string message(answer.header_bytes, '\0');
  ASSERT_EQ(read_within(fd, message.data(), message.size()), static_cast<ssize_t>(message.size()));
  EXPECT_EQ(answer.code, static_cast<int32_t>(fs_error(FsError::kMalformed, "").code()));
  EXPECT_NE(message.find("[malformed]"), std::string::npos) << message;
  // Not a frame: the connection is closed.
  const char garbage[64] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(send(fd, garbage, sizeof garbage, 0), static_cast<ssize_t>(sizeof garbage));
  char rest[8];
  EXPECT_EQ(read_within(fd, rest, sizeof rest), 0);
  close(fd);
  // A frame announcing more than the limit: closed too, before its bytes are read.
  fd = raw_connect((*server)->port());
  ASSERT_GE(fd, 0);
  RawHead huge{0x31524646, 1, {0, 0, 0}, 43, 0, 0, kSecond, 1ull << 40};
  ASSERT_EQ(send(fd, &huge, sizeof huge, 0), static_cast<ssize_t>(sizeof huge));
  EXPECT_EQ(read_within(fd, rest, sizeof rest), 0);
  close(fd);
  EXPECT_EQ(handled.load(), 0);
  ThreadExecutor client_executor("client");
  TcpRpcClient client(client_executor);
  EXPECT_TRUE(call_blocking(client, (*server)->address(), Request{GetRoutingReq{}}, 5 * kSecond).is_ok());
}

// Many threads, many calls in flight over 4 connections, payloads of many sizes: every answer reaches its own
// call (matched by id), and calls in flight spread over the connections.
TEST(TcpTransportTest, ConcurrentCallsEachGetTheirOwnAnswer) {
  ThreadExecutor server_executor("server", 4);
  std::mutex mutex;
  std::set<std::string> peers;
  auto echo = echo_handler();
  auto server =
      TcpServer::start("127.0.0.1:0", server_executor, [&](const ServerContext& context, Request request, Reply reply) {
        {
          std::lock_guard lock(mutex);
          peers.insert(context.peer);
        }
        // Answer from a worker after a short random pause, so answers come back out of order.
        server_executor.offload(
            [request = std::move(request), reply = std::move(reply), echo]() mutable {
              std::this_thread::sleep_for(std::chrono::microseconds(std::rand() % 500));
              echo(ServerContext{}, std::move(request), std::move(reply));
            },
            nullptr);
      });
  ASSERT_TRUE(server.is_ok());
  ThreadExecutor client_executor("client");
  TcpRpcClient client(client_executor, TcpClientOptions{.connections_per_peer = 4});
  std::atomic<int> wrong{0}, failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 random(static_cast<uint32_t>(t));
      for (int i = 0; i < 100; ++i) {
        const size_t size = std::vector<size_t>{0, 1, 4096, 65536, 300000}[random() % 5];
        const auto seed = static_cast<uint8_t>(t * 31 + i);
        Bytes payload = make_bytes(size, seed);
        WriteReq write{ClientRequestId{1, 1, static_cast<uint64_t>(i)},
                       1,
                       1,
                       ChunkId{static_cast<uint64_t>(t), static_cast<uint64_t>(i)},
                       0,
                       payload};
        auto rsp =
            response_as<ReadRsp>(call_blocking(client, (*server)->address(), Request{std::move(write)}, 10 * kSecond));
        if (!rsp.is_ok()) {
          ++failed;
          continue;
        }
        if (rsp->meta.id != (ChunkId{static_cast<uint64_t>(t), static_cast<uint64_t>(i)}) || rsp->data != payload)
          ++wrong;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(wrong.load(), 0);
  // A call counts as in flight until its completion is posted, a moment after the caller may have seen it.
  for (int i = 0; i < 100 && client.in_flight() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(client.in_flight(), 0);
  std::lock_guard lock(mutex);
  EXPECT_GE(peers.size(), 2u) << "8 callers at once stayed on one connection";
  EXPECT_LE(peers.size(), 4u);
}

// A client destroyed with calls in flight ends each of them once (unavailable) and does not wait for answers.
TEST(TcpTransportTest, ClientDestroyedWithCallsInFlightEndsThem) {
  ThreadExecutor executor("server");
  std::mutex mutex;
  std::vector<Reply> held;
  auto server = TcpServer::start("127.0.0.1:0", executor, [&](const ServerContext&, Request, Reply reply) {
    std::lock_guard lock(mutex);
    held.push_back(std::move(reply));
  });
  ASSERT_TRUE(server.is_ok());
  ThreadExecutor client_executor("client");
  std::atomic<int> ended{0}, unavailable_count{0};
  {
    TcpRpcClient client(client_executor);
    for (int i = 0; i < 5; ++i) {
      client.call((*server)->address(), Request{GetRoutingReq{}}, 60 * kSecond, [&](Result<Response> result) {
        ++ended;
        if (result.status().code() == StatusCode::kUnavailable) ++unavailable_count;
      });
    }
    for (int i = 0; i < 500; ++i) {
      std::lock_guard lock(mutex);
      if (held.size() == 5) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }  // ~TcpRpcClient
  for (int i = 0; i < 500 && ended.load() < 5; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(ended.load(), 5);
  EXPECT_EQ(unavailable_count.load(), 5);
  std::lock_guard lock(mutex);
  for (auto& reply : held) reply(Response{GetRoutingRsp{}});  // answers to a closed connection go nowhere
}

// A peer that accepts connections and never reads: calls return at once (their frames wait for the connection's
// writer thread) and end deadline_exceeded at their deadlines; destroying the client does not wait for the peer.
TEST(TcpTransportTest, APeerThatDoesNotReadBlocksNoCaller) {
  int listener = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in bound{};
  bound.sin_family = AF_INET;
  bound.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&bound), sizeof bound), 0);
  ASSERT_EQ(listen(listener, 16), 0);
  socklen_t length = sizeof bound;
  ASSERT_EQ(getsockname(listener, reinterpret_cast<sockaddr*>(&bound), &length), 0);
  const std::string address = fmt::format("tcp://127.0.0.1:{}", ntohs(bound.sin_port));
  ThreadExecutor client_executor("client");
  std::atomic<int> ended{0}, expired{0};
  const SharedBytes payload = SharedBytes::adopt(Bytes(4 << 20));
  {
    TcpRpcClient client(client_executor, TcpClientOptions{.connections_per_peer = 1});
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < 16; ++i) {  // 64 MiB: far more than the socket buffers hold
      WriteReq write{ClientRequestId{1, 1, static_cast<uint64_t>(i)}, 1, 1, ChunkId{1, 1}, 0, {}};
      write.shared_data = payload;
      client.call(address, Request{std::move(write)}, 500'000'000, [&](Result<Response> result) {
        if (result.status().code() == StatusCode::kDeadlineExceeded) ++expired;
        ++ended;
      });
    }
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(300));
    for (int i = 0; i < 500 && ended.load() < 16; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_EQ(ended.load(), 16);
    EXPECT_EQ(expired.load(), 16);
  }
  close(listener);
}

// NetRpcClient sends "tcp://" addresses over TCP and the rest over gRPC; start_rpc_server picks the same way;
// FF_RPC_TRANSPORT rewrites a listen address or is refused by name.
// ServerContext::receiver_idle: set for a read (or a batch of them) when nothing more has arrived on the connection as
// the request is handed over. A lone read sees it; reads sent on one connection while the fast handler holds the
// receiving thread find the next requests already queued behind them; other requests never see it.
TEST(TcpTransportTest, TheReceiverIsIdleOnlyWhenNothingElseWaitsOnTheConnection) {
  ThreadExecutor server_executor("server");
  std::mutex mutex;
  std::vector<bool> idle;  // receiver_idle of each request, in arrival order
  auto server = TcpServer::start("127.0.0.1:0", server_executor, echo_handler(), nullptr, 256ull << 20,
                                 [&](const ServerContext& context, Request&, Reply&) {
                                   bool first_of_burst = false;
                                   {
                                     std::lock_guard lock(mutex);
                                     idle.push_back(context.receiver_idle);
                                     first_of_burst = idle.size() == 2;
                                   }
                                   // Hold the receiving thread on the burst's first request, so that the others arrive
                                   // meanwhile.
                                   if (first_of_burst) std::this_thread::sleep_for(std::chrono::milliseconds(200));
                                   return false;  // the executor's handler answers
                                 });
  ASSERT_TRUE(server.is_ok()) << server.status();
  ThreadExecutor client_executor("client");
  TcpRpcClient client(client_executor, TcpClientOptions{.connections_per_peer = 1});
  const ReadReq read{1, 2, 1001, ChunkId{5, 6}, 0, 4096, ReadMode::kStrict};
  auto lone = call_blocking(client, (*server)->address(), Request{read}, 10 * kSecond);
  ASSERT_TRUE(lone.is_ok()) << lone.status();
  constexpr int kBurst = 5;
  std::vector<std::promise<Result<Response>>> answers(kBurst);
  for (int i = 0; i < kBurst; ++i) {
    client.call((*server)->address(), Request{read}, 10 * kSecond,
                [&answers, i](Result<Response> rsp) { answers[static_cast<size_t>(i)].set_value(std::move(rsp)); });
  }
  for (auto& answer : answers) EXPECT_TRUE(answer.get_future().get().is_ok());
  {
    std::lock_guard lock(mutex);
    ASSERT_EQ(idle.size(), static_cast<size_t>(kBurst + 1));
    EXPECT_TRUE(idle[0]) << "a lone read found something else waiting";
    EXPECT_FALSE(idle[2]) << "the burst's second request arrived while the first held the thread; it was not last";
    EXPECT_TRUE(idle.back()) << "the burst's last request had nothing behind it";
    idle.clear();
  }
  auto other = call_blocking(client, (*server)->address(), Request{GetRoutingReq{}}, 10 * kSecond);
  ASSERT_TRUE(other.is_ok()) << other.status();
  std::lock_guard lock(mutex);
  ASSERT_EQ(idle.size(), 1u);
  EXPECT_FALSE(idle[0]) << "a request other than a read was offered the receiving thread";
}

TEST(TcpTransportTest, TheAddressSchemePicksTheTransport) {
  ThreadExecutor executor("server");
  auto tcp = start_rpc_server("tcp://127.0.0.1:0", executor, echo_handler());
  auto grpc = start_rpc_server("127.0.0.1:0", executor, echo_handler());
  ASSERT_TRUE(tcp.is_ok()) << tcp.status();
  ASSERT_TRUE(grpc.is_ok()) << grpc.status();
  EXPECT_TRUE((*tcp)->address().starts_with("tcp://"));
  EXPECT_FALSE((*grpc)->address().starts_with("tcp://"));
  EXPECT_NE(dynamic_cast<TcpServer*>(tcp->get()), nullptr);
  EXPECT_NE(dynamic_cast<GrpcServer*>(grpc->get()), nullptr);
  ThreadExecutor client_executor("client");
  NetRpcClient client(client_executor);
  for (const auto* server : {tcp->get(), grpc->get()}) {
    Bytes payload = make_bytes(100000, 7);
    WriteReq write{ClientRequestId{1, 1, 1}, 1, 1, ChunkId{3, 4}, 0, payload};
    auto rsp = response_as<ReadRsp>(call_blocking(client, server->address(), Request{std::move(write)}, 5 * kSecond));
    ASSERT_TRUE(rsp.is_ok()) << server->address() << ": " << rsp.status();
    EXPECT_EQ(rsp->data, payload);
  }
  // A gRPC client does not speak to a TCP server: the call fails, it does not hang.
  auto mismatched =
      call_blocking(client, fmt::format("127.0.0.1:{}", (*tcp)->port()), Request{GetRoutingReq{}}, 2 * kSecond);
  EXPECT_FALSE(mismatched.is_ok());

  ::unsetenv("FF_RPC_TRANSPORT");
  EXPECT_EQ(*listen_with_transport("127.0.0.1:9000"), "127.0.0.1:9000");
  ::setenv("FF_RPC_TRANSPORT", "tcp", 1);
  EXPECT_EQ(*listen_with_transport("127.0.0.1:9000"), "tcp://127.0.0.1:9000");
  EXPECT_EQ(*listen_with_transport("tcp://127.0.0.1:9000"), "tcp://127.0.0.1:9000");
  ::setenv("FF_RPC_TRANSPORT", "grpc", 1);
  EXPECT_EQ(*listen_with_transport("tcp://127.0.0.1:9000"), "127.0.0.1:9000");
  ::setenv("FF_RPC_TRANSPORT", "rdma", 1);
  auto bad = listen_with_transport("127.0.0.1:9000");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("FF_RPC_TRANSPORT=rdma"), std::string::npos) << bad.status();
  ::unsetenv("FF_RPC_TRANSPORT");
}

}  // namespace
}  // namespace ff::fs::rpc
