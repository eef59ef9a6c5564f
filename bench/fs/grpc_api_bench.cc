// grpc_api_bench: what one unary gRPC call costs with each of gRPC's server and client APIs, on this host.
//
// The fs services (ff-storage, ff-meta) serve with gRPC's callback API and call with the callback API
// (storage forwards, StorageClient) or the blocking API (RemoteMeta). This measures the alternative,
// the completion-queue ("async") API with our own polling threads, before a transport is rewritten for it
// (docs/fs-operations.md, "Next"). One process: a generic server on 127.0.0.1 that answers every request
// with 16 bytes, and `depth` calls kept in flight by the client API under test, for --seconds; calls per
// second and CPU time (the process's, both sides) per call. One JSON line per (client API, depth,
// request size): the callback server's figure (the baseline), the completion-queue server's, the ratio.
//
//   fs_grpc_api_bench [--seconds 2] [--depths 1,8,16] [--request-bytes 512,4096] [--server-threads 1] [--channels 1]
//                     [--client-apis callback,completion_queue,blocking] [--out x.json]
//
// Client APIs: "callback" (GenericStub::UnaryCall, completion on gRPC's thread), "completion_queue" (calls
// started on and completed by one thread polling a CompletionQueue), "blocking" (`depth` threads, each
// in a blocking call, as RemoteMeta's callers). Beside them, per (depth, request size), the transport's floor:
// the same request and reply over plain loopback TCP (`depth` connections, each a client thread sending the
// request and waiting for the 16-byte reply, a server thread answering; TCP_NODELAY), what a transport of our own
// could reach at most.
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/client_unary_call.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <fmt/chrono.h>
#include <fmt/format.h>

#include "../cpu_model.h"

namespace {

using ff::bench::cpu_model;

constexpr size_t kReplyBytes = 16;
constexpr const char* kMethod = "/ff.bench.Echo/Call";
constexpr auto kCallTimeout = std::chrono::seconds(10);

grpc::ByteBuffer filled_buffer(size_t bytes) {
  std::string data(bytes, 'x');
  grpc::Slice slice(data);
  return grpc::ByteBuffer(&slice, 1);
}

double process_cpu_s() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) * 1e-6;
}

// The callback API's server: one reactor per call reads the request and answers.
class CallbackEcho final : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext*) override {
    class Reactor final : public grpc::ServerGenericBidiReactor {
     public:
      Reactor() { StartRead(&request_); }
      void OnReadDone(bool ok) override {
        if (!ok) {
          Finish(grpc::Status::OK);
          return;
        }
        reply_ = filled_buffer(kReplyBytes);
        StartWriteAndFinish(&reply_, grpc::WriteOptions(), grpc::Status::OK);
      }
      void OnDone() override { delete this; }

     private:
      grpc::ByteBuffer request_, reply_;
    };
    return new Reactor;
  }
};

// The completion-queue API's server: each polling thread takes calls from its queue and answers them
// inline. A call's steps: requested -> request read -> reply written and finished.
class QueueEchoCall {
 public:
  QueueEchoCall(grpc::AsyncGenericService& service, grpc::ServerCompletionQueue& queue)
      : service_(service), queue_(queue), stream_(&context_) {
    service_.RequestCall(&context_, &stream_, &queue_, &queue_, this);
  }
  // Advances the call after its last step completed; deletes it when done.
  void proceed(bool ok) {
    switch (step_) {
      case Step::kRequested:
        if (!ok) {  // the server is shutting down
          delete this;
          return;
        }
        new QueueEchoCall(service_, queue_);  // the next call of this queue
        step_ = Step::kReading;
        stream_.Read(&request_, this);
        return;
      case Step::kReading:
        step_ = Step::kFinishing;
        reply_ = filled_buffer(kReplyBytes);
        stream_.WriteAndFinish(reply_, grpc::WriteOptions(), grpc::Status::OK, this);
        return;
      case Step::kFinishing: delete this; return;
    }
  }

 private:
  enum class Step { kRequested, kReading, kFinishing };
  grpc::AsyncGenericService& service_;
  grpc::ServerCompletionQueue& queue_;
  grpc::GenericServerContext context_;
  grpc::GenericServerAsyncReaderWriter stream_;
  grpc::ByteBuffer request_, reply_;
  Step step_ = Step::kRequested;
};

struct Case {
  std::string server_api;  // callback | completion_queue
  std::string client_api;  // callback | completion_queue | blocking
  int depth = 1;
  size_t request_bytes = 512;
  double seconds = 2;
  int server_threads = 1;
  int channels = 1;  // client channels, each its own TCP connection; calls spread over them in turn
};

struct Figure {
  double calls_per_s = 0;
  double cpu_us_per_call = 0;
  uint64_t errors = 0;
};

// Keeps `depth` calls in flight through the callback API until `stop`, then waits for them to end.
uint64_t run_callback_client(std::vector<std::unique_ptr<grpc::GenericStub>>& stubs, const grpc::ByteBuffer& request,
                             int depth, std::atomic<bool>& stop, std::atomic<uint64_t>& errors) {
  struct Call {
    grpc::ClientContext context;
    grpc::ByteBuffer reply;
  };
  std::atomic<uint64_t> done{0};
  std::mutex mutex;  // guards live
  std::condition_variable ended;
  int live = depth;
  // Each call takes the channel with the fewest calls in flight (the first on a tie), as fs/rpc's client does.
  std::vector<std::atomic<int>> busy(stubs.size());
  std::function<void()> start = [&] {
    auto* call = new Call;
    call->context.set_deadline(std::chrono::system_clock::now() + kCallTimeout);
    size_t pick = 0;
    for (size_t i = 1; i < stubs.size(); ++i)
      if (busy[i].load(std::memory_order_relaxed) < busy[pick].load(std::memory_order_relaxed)) pick = i;
    busy[pick].fetch_add(1, std::memory_order_relaxed);
    stubs[pick]->UnaryCall(&call->context, kMethod, grpc::StubOptions(), &request, &call->reply,
                           [&, call, pick](const grpc::Status& status) {
                             busy[pick].fetch_sub(1, std::memory_order_relaxed);
                             delete call;
                             if (!status.ok()) errors.fetch_add(1);
                             done.fetch_add(1);
                             if (!stop.load()) {
                               start();
                               return;
                             }
                             std::lock_guard lock(mutex);
                             if (--live == 0) ended.notify_all();
                           });
  };
  for (int i = 0; i < depth; ++i) start();
  std::unique_lock lock(mutex);
  // Bounded: every call in flight ends by its deadline.
  ended.wait_for(lock, kCallTimeout + std::chrono::seconds(5), [&] { return live == 0; });
  return done.load();
}

// Keeps `depth` calls in flight through one CompletionQueue polled by this thread.
uint64_t run_queue_client(std::vector<std::unique_ptr<grpc::GenericStub>>& stubs, const grpc::ByteBuffer& request,
                          int depth, std::atomic<bool>& stop, std::atomic<uint64_t>& errors) {
  struct Call {
    grpc::ClientContext context;
    grpc::ByteBuffer reply;
    grpc::Status status;
    std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader;
  };
  grpc::CompletionQueue queue;
  size_t next = 0;
  auto start = [&] {
    auto* call = new Call;
    call->context.set_deadline(std::chrono::system_clock::now() + kCallTimeout);
    call->reader = stubs[next++ % stubs.size()]->PrepareUnaryCall(&call->context, kMethod, request, &queue);
    call->reader->StartCall();
    call->reader->Finish(&call->reply, &call->status, call);
  };
  for (int i = 0; i < depth; ++i) start();
  uint64_t done = 0;
  int live = depth;
  void* tag = nullptr;
  bool ok = false;
  while (live > 0 && queue.Next(&tag, &ok)) {  // each call ends by its deadline
    auto* call = static_cast<Call*>(tag);
    if (!ok || !call->status.ok()) errors.fetch_add(1);
    delete call;
    ++done;
    if (stop.load()) {
      --live;
    } else {
      start();
    }
  }
  queue.Shutdown();
  while (queue.Next(&tag, &ok)) {
  }
  return done;
}

// `depth` threads, each making one blocking call after the other.
uint64_t run_blocking_client(const std::vector<std::shared_ptr<grpc::Channel>>& channels,
                             const grpc::ByteBuffer& request, int depth, std::atomic<bool>& stop,
                             std::atomic<uint64_t>& errors) {
  std::atomic<uint64_t> done{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < depth; ++i) {
    threads.emplace_back([&, &channel = channels[static_cast<size_t>(i) % channels.size()]] {
      grpc::internal::RpcMethod method(kMethod, grpc::internal::RpcMethod::NORMAL_RPC, channel);
      while (!stop.load()) {
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() + kCallTimeout);
        grpc::ByteBuffer reply;
        grpc::Status status = grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
            channel.get(), method, &context, request, &reply);
        if (!status.ok()) errors.fetch_add(1);
        done.fetch_add(1);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  return done.load();
}

Figure run_case(const Case& c) {
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  CallbackEcho callback_service;
  grpc::AsyncGenericService queue_service;
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues;
  if (c.server_api == "callback") {
    builder.RegisterCallbackGenericService(&callback_service);
  } else {
    builder.RegisterAsyncGenericService(&queue_service);
    for (int i = 0; i < c.server_threads; ++i) queues.push_back(builder.AddCompletionQueue());
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    fmt::print(stderr, "grpc_api_bench: the server could not listen on 127.0.0.1\n");
    std::exit(1);
  }
  std::vector<std::thread> pollers;
  for (auto& queue : queues) {
    pollers.emplace_back([&service = queue_service, queue = queue.get(), depth = c.depth] {
      // Enough requested calls that no client call waits for one to be posted.
      for (int i = 0; i < depth + 4; ++i) new QueueEchoCall(service, *queue);
      void* tag = nullptr;
      bool ok = false;
      while (queue->Next(&tag, &ok)) static_cast<QueueEchoCall*>(tag)->proceed(ok);
    });
  }
  // A local subchannel pool per channel: channels with equal arguments would otherwise share one connection.
  grpc::ChannelArguments arguments;
  arguments.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  arguments.SetMaxSendMessageSize(64 << 20);
  arguments.SetMaxReceiveMessageSize(64 << 20);
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs;
  for (int i = 0; i < c.channels; ++i) {
    channels.push_back(
        grpc::CreateCustomChannel(fmt::format("127.0.0.1:{}", port), grpc::InsecureChannelCredentials(), arguments));
    stubs.push_back(std::make_unique<grpc::GenericStub>(channels.back()));
  }
  const grpc::ByteBuffer request = filled_buffer(c.request_bytes);

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> errors{0};
  std::thread timer([&] {
    std::this_thread::sleep_for(std::chrono::duration<double>(c.seconds));
    stop.store(true);
  });
  const double cpu_start = process_cpu_s();
  const auto start = std::chrono::steady_clock::now();
  uint64_t calls = 0;
  if (c.client_api == "callback") {
    calls = run_callback_client(stubs, request, c.depth, stop, errors);
  } else if (c.client_api == "completion_queue") {
    calls = run_queue_client(stubs, request, c.depth, stop, errors);
  } else {
    calls = run_blocking_client(channels, request, c.depth, stop, errors);
  }
  const double wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double cpu_s = process_cpu_s() - cpu_start;
  timer.join();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  for (auto& queue : queues) queue->Shutdown();
  for (auto& poller : pollers) poller.join();
  Figure figure;
  figure.calls_per_s = static_cast<double>(calls) / wall_s;
  figure.cpu_us_per_call = calls > 0 ? cpu_s / static_cast<double>(calls) * 1e6 : 0;
  figure.errors = errors.load();
  return figure;
}

// Moves all of `bytes` through a blocking socket; false on an error or a closed peer.
bool transfer(int fd, char* data, size_t bytes, bool receive) {
  while (bytes > 0) {
    const ssize_t n = receive ? ::recv(fd, data, bytes, 0) : ::send(fd, data, bytes, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data += n;
    bytes -= static_cast<size_t>(n);
  }
  return true;
}

// The raw-TCP floor of one (depth, request size): `depth` loopback connections, each with a client thread that
// sends the request and waits for the reply and a server thread that answers, for `seconds`.
Figure run_raw_tcp(size_t request_bytes, int depth, double seconds) {
  Figure figure;
  if (request_bytes == 0) return figure;  // nothing to wait for on the server's side: no floor
  const int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  if (listener < 0 || ::bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      ::listen(listener, depth) != 0 || ::getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    fmt::print(stderr, "raw TCP: no loopback listener: {}\n", std::strerror(errno));
    if (listener >= 0) ::close(listener);
    figure.errors = 1;
    return figure;
  }
  const auto no_delay = [](int fd) {
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  };
  std::vector<int> clients, servers;
  for (int i = 0; i < depth; ++i) {
    const int client = ::socket(AF_INET, SOCK_STREAM, 0);
    if (client < 0 || ::connect(client, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
      if (client >= 0) ::close(client);
      break;
    }
    const int server = ::accept(listener, nullptr, nullptr);
    if (server < 0) {
      ::close(client);
      break;
    }
    no_delay(client);
    no_delay(server);
    clients.push_back(client);
    servers.push_back(server);
  }
  ::close(listener);
  if (static_cast<int>(clients.size()) != depth) {
    fmt::print(stderr, "raw TCP: {} of {} loopback connections\n", clients.size(), depth);
    for (int fd : clients) ::close(fd);
    for (int fd : servers) ::close(fd);
    figure.errors = 1;
    return figure;
  }
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> calls{0}, errors{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < depth; ++i) {
    threads.emplace_back([fd = servers[static_cast<size_t>(i)], request_bytes] {
      std::vector<char> request(request_bytes), reply(kReplyBytes, 'y');
      // Ends when its client closes the connection.
      while (transfer(fd, request.data(), request.size(), true) && transfer(fd, reply.data(), reply.size(), false)) {
      }
    });
  }
  const double cpu_start = process_cpu_s();
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> callers;
  for (int i = 0; i < depth; ++i) {
    callers.emplace_back([&, fd = clients[static_cast<size_t>(i)]] {
      std::vector<char> request(request_bytes, 'x'), reply(kReplyBytes);
      while (!stop.load(std::memory_order_relaxed)) {
        if (!transfer(fd, request.data(), request.size(), false) || !transfer(fd, reply.data(), reply.size(), true)) {
          errors.fetch_add(1);
          return;
        }
        calls.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop.store(true);
  for (auto& caller : callers) caller.join();
  const double wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double cpu_s = process_cpu_s() - cpu_start;
  for (int fd : clients) ::shutdown(fd, SHUT_RDWR);
  for (auto& thread : threads) thread.join();
  for (int fd : clients) ::close(fd);
  for (int fd : servers) ::close(fd);
  figure.calls_per_s = static_cast<double>(calls.load()) / wall_s;
  figure.cpu_us_per_call = calls.load() > 0 ? cpu_s / static_cast<double>(calls.load()) * 1e6 : 0;
  figure.errors = errors.load();
  return figure;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"gRPC unary call cost: callback against completion-queue server, by client API"};
  double seconds = 2;
  std::vector<int64_t> depth_list{1, 8, 16};
  std::vector<int64_t> size_list{512, 4096};
  int server_threads = 1;
  int channels = 1;
  std::vector<std::string> client_apis{"callback", "completion_queue", "blocking"};
  std::string out;
  app.add_option("--seconds", seconds, "seconds per measurement")->check(CLI::Range(0.1, 600.0));
  app.add_option("--depths", depth_list, "calls in flight, comma-separated")
      ->delimiter(',')
      ->check(CLI::Range(int64_t{1}, int64_t{1024}));
  app.add_option("--request-bytes", size_list, "request sizes, comma-separated")
      ->delimiter(',')
      ->check(CLI::Range(int64_t{0}, int64_t{16} << 20));
  app.add_option("--server-threads", server_threads, "polling threads of the completion-queue server")
      ->check(CLI::Range(1, 64));
  app.add_option("--channels", channels, "client channels (TCP connections), calls spread over them in turn")
      ->check(CLI::Range(1, 64));
  app.add_option("--client-apis", client_apis, "client APIs to time, comma-separated")
      ->delimiter(',')
      ->check(CLI::IsMember({"callback", "completion_queue", "blocking"}));
  app.add_option("--out", out, "also write every line into one JSON document");
  CLI11_PARSE(app, argc, argv);
  const std::string device = fmt::format("{}, {} cores", cpu_model(), std::thread::hardware_concurrency());
  nlohmann::json lines = nlohmann::json::array();
  for (int64_t bytes : size_list) {
    std::vector<Figure> floors;  // per depth
    for (int64_t depth : depth_list)
      floors.push_back(run_raw_tcp(static_cast<size_t>(bytes), static_cast<int>(depth), seconds));
    for (const std::string& client_api : client_apis) {
      for (size_t d = 0; d < depth_list.size(); ++d) {
        const int64_t depth = depth_list[d];
        const Figure& floor = floors[d];
        Case c{.client_api = client_api,
               .depth = static_cast<int>(depth),
               .request_bytes = static_cast<size_t>(bytes),
               .seconds = seconds,
               .server_threads = server_threads,
               .channels = channels};
        c.server_api = "callback";
        Figure baseline = run_case(c);
        c.server_api = "completion_queue";
        Figure ours = run_case(c);
        nlohmann::json line = {
            {"bench", "fs_grpc_api"},
            {"device", device},
            {"client_api", client_api},
            {"depth", depth},
            {"request_bytes", bytes},
            {"reply_bytes", kReplyBytes},
            {"server_threads", server_threads},
            {"channels", channels},
            {"baseline", "callback server"},
            {"baseline_calls_per_s", baseline.calls_per_s},
            {"baseline_cpu_us_per_call", baseline.cpu_us_per_call},
            {"completion_queue_calls_per_s", ours.calls_per_s},
            {"completion_queue_cpu_us_per_call", ours.cpu_us_per_call},
            {"ratio", baseline.calls_per_s > 0 ? ours.calls_per_s / baseline.calls_per_s : 0},
            {"raw_tcp_calls_per_s", floor.calls_per_s},
            {"raw_tcp_cpu_us_per_call", floor.cpu_us_per_call},
            {"baseline_vs_raw_tcp", floor.calls_per_s > 0 ? baseline.calls_per_s / floor.calls_per_s : 0},
            {"errors", baseline.errors + ours.errors + floor.errors},
        };
        std::puts(line.dump().c_str());
        std::fflush(stdout);
        lines.push_back(std::move(line));
      }
    }
  }
  if (!out.empty()) {
    const std::string date = fmt::format("{:%Y-%m-%dT%H:%M:%SZ}", fmt::gmtime(std::time(nullptr)));
    nlohmann::json document = {{"benchmark", "fs_grpc_api"}, {"device", device}, {"date", date}, {"cases", lines}};
    std::ofstream file(out);
    file << document.dump(1) << "\n";
    if (!file) {
      fmt::print(stderr, "could not write {}\n", out);
      return 1;
    }
  }
  return 0;
}
