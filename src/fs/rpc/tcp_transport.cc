#include "ff/fs/rpc/tcp_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include "../chunk/read_buffer_pool.h"
#include "convert.h"
#include "ff/common/assert.h"
#include "ff/common/log.h"
#include "ff/fs/fs.pb.h"
#include "ff/fs/rpc/toml_config.h"
#include "least_busy.h"

namespace ff::fs::rpc {

namespace {

static_assert(std::endian::native == std::endian::little, "the TCP frames are written in host byte order");

constexpr uint32_t kMagic = 0x31524646;  // "FFR1"
enum FrameKind : uint8_t { kRequestFrame = 1, kResponseFrame = 2, kErrorFrame = 3 };

// The fixed part of every frame; header and payload bytes follow.
struct FrameHead {
  uint32_t magic = kMagic;
  uint8_t kind = 0;
  uint8_t reserved[3] = {0, 0, 0};
  uint64_t id = 0;            // the call, chosen by the client; a response carries its request's
  uint32_t header_bytes = 0;  // Envelope bytes, or an error frame's message
  int32_t code = 0;           // error frames: the StatusCode
  int64_t timeout_ns = 0;     // request frames: the caller's remaining time
  uint64_t payload_bytes = 0;
};
static_assert(sizeof(FrameHead) == 40);

constexpr uint32_t kMaxHeaderBytes = 64u << 20;
constexpr int64_t kRetryAfterFailedConnectNs = 200'000'000;
constexpr int kSendTimeoutS = 30;  // a peer that stops reading breaks the connection after this

int64_t now_ns() { return system_clock().now_ns(); }

std::string errno_text(int error) { return std::string(std::strerror(error)); }

// "tcp://host:port", "host:port", "[v6]:port" -> host (brackets dropped) and port, as getaddrinfo takes them.
Result<std::pair<std::string, std::string>> split_address(std::string_view address) {
  std::string_view rest = address;
  if (rest.starts_with(kTcpScheme)) rest.remove_prefix(kTcpScheme.size());
  FF_ASSIGN_OR_RETURN(HostPort parsed, parse_host_port(rest));
  std::string_view host = parsed.host;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return std::pair<std::string, std::string>{std::string(host), std::to_string(parsed.port)};
}

void set_socket_options(int fd) {
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  timeval send_timeout{kSendTimeoutS, 0};
  (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof send_timeout);
}

// Connects within timeout_ms; the socket comes back blocking.
Result<int> connect_to(const std::string& address, const std::string& host, const std::string& port,
                       int64_t timeout_ms) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return unavailable("{}: cannot resolve host '{}': {}", address, host, gai_strerror(rc));
  }
  std::string last_error = "no address";
  for (addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) {
      last_error = errno_text(errno);
      continue;
    }
    int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      int ready = poll(&p, 1, static_cast<int>(std::max<int64_t>(timeout_ms, 1)));
      int error = ETIMEDOUT;
      if (ready == 1) {
        socklen_t length = sizeof error;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0) error = errno;
      } else if (ready < 0) {
        error = errno;
      }
      rc = error == 0 ? 0 : -1;
      errno = error;
    }
    if (rc == 0) {
      (void)fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
      set_socket_options(fd);
      freeaddrinfo(found);
      return fd;
    }
    last_error = errno_text(errno);
    close(fd);
  }
  freeaddrinfo(found);
  return unavailable("{}: connect failed: {}", address, last_error);
}

// Sends every byte of iov[0..count) (one sendmsg per frame unless the socket buffer is full); false when the
// connection broke or the peer stopped reading for kSendTimeoutS.
bool send_all(int fd, iovec* iov, int count) {
  while (count > 0 && iov->iov_len == 0) ++iov, --count;
  while (count > 0) {
    msghdr message{};
    message.msg_iov = iov;
    message.msg_iovlen = static_cast<size_t>(count);
    ssize_t sent = sendmsg(fd, &message, MSG_NOSIGNAL);
    if (sent < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    auto left = static_cast<size_t>(sent);
    while (count > 0 && left >= iov->iov_len) {
      left -= iov->iov_len;
      ++iov;
      --count;
    }
    if (count > 0) {
      iov->iov_base = static_cast<char*>(iov->iov_base) + left;
      iov->iov_len -= left;
    }
  }
  return true;
}

// Reads a connection's byte stream through a buffer: small frames cost one recv for several; a large payload
// is received straight into its destination.
class StreamReader {
 public:
  explicit StreamReader(int fd) : fd_(fd), buffer_(kBufferBytes) {}
  // Reads exactly n bytes into out; false at the end of the stream or on an error.
  bool read(void* out, size_t n) {
    auto* dst = static_cast<std::byte*>(out);
    size_t take = std::min(n, end_ - begin_);
    if (take > 0) std::memcpy(dst, buffer_.data() + begin_, take);
    begin_ += take;
    dst += take;
    n -= take;
    if (n == 0) return true;
    begin_ = end_ = 0;
    if (n >= kBufferBytes / 2) return receive(dst, n, n) == n;
    while (end_ < n) {
      size_t got = receive(buffer_.data() + end_, n - end_, kBufferBytes - end_);
      if (got == 0) return false;
      end_ += got;
    }
    std::memcpy(dst, buffer_.data(), n);
    begin_ = n;
    return true;
  }

  // True when nothing more has arrived: the buffer is empty and so is the socket's receive queue.
  bool idle() const {
    if (begin_ != end_) return false;
    int queued = 0;
    return ioctl(fd_, FIONREAD, &queued) == 0 && queued == 0;
  }

 private:
  static constexpr size_t kBufferBytes = 256 << 10;
  // Receives at least `least` and at most `most` bytes; returns how many, 0 at the end or on an error.
  size_t receive(std::byte* into, size_t least, size_t most) {
    size_t got = 0;
    while (got < least) {
      ssize_t n = recv(fd_, into + got, most - got, 0);
      if (n > 0) {
        got += static_cast<size_t>(n);
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else {
        return 0;
      }
    }
    return got;
  }
  int fd_;
  std::vector<std::byte> buffer_;
  size_t begin_ = 0, end_ = 0;
};

// A received payload: into a recycled 4 KiB-aligned buffer (writes the chunk engine stores with O_DIRECT as
// they are; reads the caller takes as pieces) or into plain Bytes.
struct Payload {
  SharedBytes aligned;
  Bytes bytes;
};

Result<Payload> read_payload(StreamReader& reader, uint64_t size, bool aligned) {
  Payload payload;
  if (size == 0) return payload;
  if (aligned) {
    std::shared_ptr<std::byte> buffer = chunk_internal::process_io_buffers().acquire(size);
    if (buffer != nullptr) {
      if (!reader.read(buffer.get(), size)) return unavailable("connection closed");
      payload.aligned = SharedBytes{buffer, std::span<const std::byte>(buffer.get(), size)};
      return payload;
    }
  }
  payload.bytes.resize(size);
  if (!reader.read(payload.bytes.data(), size)) return unavailable("connection closed");
  return payload;
}

// One frame to send; `sent` bytes of it are gone already.
struct Frame {
  FrameHead head;
  std::string header;
  SharedBytes payload;
  size_t sent = 0;

  // The unsent rest as iovecs; returns how many.
  int rest(iovec (&iov)[3]) const {
    const std::span<const std::byte> parts[3] = {{reinterpret_cast<const std::byte*>(&head), sizeof head},
                                                 {reinterpret_cast<const std::byte*>(header.data()), header.size()},
                                                 payload.bytes};
    size_t skip = sent;
    int count = 0;
    for (const auto& part : parts) {
      if (skip >= part.size()) {
        skip -= part.size();
        continue;
      }
      iov[count++] = {const_cast<std::byte*>(part.data() + skip), part.size() - skip};
      skip = 0;
    }
    return count;
  }
  size_t size() const { return sizeof head + header.size() + payload.size(); }
};

// The frames leaving one connection, in order, without blocking whoever sends them: a frame goes out on the
// caller's thread when nothing is queued and the socket takes it at once (MSG_DONTWAIT); the rest waits in a
// queue that the connection's writer thread (started on first need) sends with blocking writes. So a storage
// service's executor never waits for a slow peer; a peer that stops reading breaks the connection after
// kSendTimeoutS (SO_SNDTIMEO), and every call on it fails.
//
// Thread-safety: push and close may be called from any thread.
class Outbox {
 public:
  explicit Outbox(int fd) : fd_(fd) {}
  ~Outbox() { close(); }
  Outbox(const Outbox&) = delete;
  Outbox& operator=(const Outbox&) = delete;

  void push(Frame frame) {
    std::lock_guard lock(mutex_);
    if (closed_ || broken_) return;  // the connection is going: its calls fail through its reader
    if (queue_.empty()) {
      while (frame.sent < frame.size()) {
        iovec iov[3];
        msghdr message{};
        message.msg_iov = iov;
        message.msg_iovlen = static_cast<size_t>(frame.rest(iov));
        ssize_t sent = sendmsg(fd_, &message, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (sent > 0) {
          frame.sent += static_cast<size_t>(sent);
        } else if (sent < 0 && errno == EINTR) {
          continue;
        } else if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
          break;
        } else {
          break_connection();
          return;
        }
      }
      if (frame.sent == frame.size()) return;
    }
    queue_.push_back(std::move(frame));
    if (!writer_.joinable()) {
      writer_ = std::thread([this] {
        pthread_setname_np(pthread_self(), "ff-tcp-writer");
        write_queued();
      });
    }
    wake_.notify_one();
  }

  // Stops the writer (a blocked write fails: the socket is shut down) and drops what is queued; the caller closes
  // the fd afterwards. Idempotent.
  void close() {
    {
      std::lock_guard lock(mutex_);
      if (closed_) return;
      closed_ = true;
      ::shutdown(fd_, SHUT_RDWR);
    }
    wake_.notify_all();
    if (writer_.joinable()) writer_.join();
    std::lock_guard lock(mutex_);
    queue_.clear();
  }

 private:
  void break_connection() {  // under mutex_
    broken_ = true;
    queue_.clear();
    ::shutdown(fd_, SHUT_RDWR);  // the reader sees the end and fails every call on the connection
  }

  void write_queued() {
    std::unique_lock lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return closed_ || !queue_.empty(); });
      if (closed_) return;
      // NOTE: a deque's push_back keeps references to its elements; only this thread pops, and close() clears
      // the queue only after joining this thread.
      Frame& frame = queue_.front();
      lock.unlock();
      iovec iov[3];
      const int count = frame.rest(iov);
      const bool ok = send_all(fd_, iov, count);
      lock.lock();
      if (closed_) return;
      if (!ok) {
        break_connection();
        continue;
      }
      queue_.pop_front();
    }
  }

  const int fd_;
  std::mutex mutex_;  // guards queue_, closed_, broken_; held for the inline send
  std::condition_variable wake_;
  std::deque<Frame> queue_;
  bool closed_ = false;
  bool broken_ = false;
  std::thread writer_;
};

}  // namespace

// ---------------------------------------------------------------- client

struct TcpRpcClient::Impl {
  struct Pending {
    Done done;
    std::string_view name;
    const std::string* address = nullptr;  // the lane's, outlives the call
    bool pieces = false;
    int64_t start_ns = 0;
    int64_t deadline_ns = 0;
  };
  // One connection to a peer, made on the lane's connector thread (so no caller waits for a connect) and made
  // again after it breaks.
  struct Lane {
    enum class State { kIdle, kConnecting, kConnected };
    std::string address, host, port;
    std::mutex mutex;  // guards everything below but the threads
    State state = State::kIdle;
    int fd = -1;
    uint64_t generation = 0;         // of the connection; a reader only cleans up after its own
    std::shared_ptr<Outbox> outbox;  // while connected
    std::vector<Frame> waiting;      // frames of calls made while connecting
    std::map<uint64_t, Pending> pending;
    std::set<std::pair<int64_t, uint64_t>> deadlines;  // (deadline, id) of pending
    int64_t retry_after_ns = 0;
    std::mutex threads_mutex;  // guards connector, reader (started and joined under it)
    std::thread connector;
    std::thread reader;
    std::atomic<int> busy{0};
  };
  struct Peer {
    std::vector<std::unique_ptr<Lane>> lanes;
    Lane& take_lane() { return take_least_busy(lanes); }
  };

  Executor& executor;
  TcpClientOptions options;
  Counter* calls = nullptr;
  Counter* failures = nullptr;
  Histogram* latency = nullptr;
  std::atomic<int64_t> in_flight{0};
  std::atomic<uint64_t> next_id{1};
  std::atomic<bool> stopped{false};

  std::mutex peers_mutex;  // guards peers (lanes are never destroyed before the client)
  std::map<std::string, std::unique_ptr<Peer>, std::less<>> peers;

  // Deadlines: one thread wakes at the earliest deadline of any lane.
  std::mutex reaper_mutex;  // guards stopping, poked
  std::condition_variable reaper_wake;
  bool stopping = false;
  bool poked = false;
  // When the reaper wakes next; 0 while it scans (a call registered then pokes it).
  std::atomic<int64_t> reaper_due_ns{0};
  std::thread reaper;

  Impl(Executor& e, TcpClientOptions o) : executor(e), options(o) {}

  Result<Peer*> peer(const std::string& address) {
    std::lock_guard lock(peers_mutex);
    auto it = peers.find(address);
    if (it != peers.end()) return it->second.get();
    FF_ASSIGN_OR_RETURN(auto host_port, split_address(address));
    auto made = std::make_unique<Peer>();
    for (int i = 0; i < std::max(1, options.connections_per_peer); ++i) {
      auto lane = std::make_unique<Lane>();
      lane->address = address;
      lane->host = host_port.first;
      lane->port = host_port.second;
      made->lanes.push_back(std::move(lane));
    }
    Peer* raw = made.get();
    peers.emplace(address, std::move(made));
    return raw;
  }

  std::vector<Lane*> all_lanes() {
    std::vector<Lane*> lanes;
    std::lock_guard lock(peers_mutex);
    for (auto& [address, peer] : peers) {
      for (auto& lane : peer->lanes) lanes.push_back(lane.get());
    }
    return lanes;
  }

  void complete(Pending pending, Result<Response> result) {
    if (latency != nullptr) latency->record_us(static_cast<uint64_t>((now_ns() - pending.start_ns) / 1000));
    if (!result.is_ok() && failures != nullptr) failures->add();
    if (pending.pieces && result.is_ok() && std::holds_alternative<ReadRsp>(*result)) {
      pending.done(std::move(result));  // ReadReq::accept_pieces: completes on this thread
    } else {
      executor.post(
          [done = std::move(pending.done), result = std::move(result)]() mutable { done(std::move(result)); });
    }
    in_flight.fetch_sub(1);
  }

  void fail(Lane& lane, Pending pending, Status status) {
    lane.busy.fetch_sub(1, std::memory_order_relaxed);
    complete(std::move(pending), std::move(status));
  }

  // Takes the pending calls of `frames` out of lane (under lane.mutex).
  static std::vector<Pending> take_pending(Lane& lane, const std::vector<Frame>& frames) {
    std::vector<Pending> taken;
    for (const Frame& frame : frames) {
      auto node = lane.pending.extract(frame.head.id);
      if (node.empty()) continue;  // its deadline passed already
      lane.deadlines.erase({node.mapped().deadline_ns, frame.head.id});
      taken.push_back(std::move(node.mapped()));
    }
    return taken;
  }

  // The lane's connector thread: connects, then hands the calls made meanwhile to the new connection (or fails
  // them when the peer cannot be reached).
  void connect_lane(Lane& lane) {
    Result<int> fd = connect_to(lane.address, lane.host, lane.port, options.connect_timeout_ms);
    if (!fd.is_ok() || stopped.load()) {
      if (fd.is_ok()) close(*fd);
      Status status = fd.is_ok() ? unavailable("{}: the client is stopping", lane.address) : fd.status();
      std::vector<Pending> failed;
      {
        std::lock_guard lock(lane.mutex);
        lane.state = Lane::State::kIdle;
        lane.retry_after_ns = now_ns() + kRetryAfterFailedConnectNs;
        failed = take_pending(lane, lane.waiting);
        lane.waiting.clear();
      }
      for (Pending& pending : failed) {
        std::string_view name = pending.name;
        fail(lane, std::move(pending), Status(status.code(), fmt::format("{} to {}", name, status.message())));
      }
      return;
    }
    // The previous connection's reader gave the lane up (state idle) and may still be failing its calls.
    if (lane.reader.joinable()) lane.reader.join();
    auto outbox = std::make_shared<Outbox>(*fd);
    std::vector<Frame> waiting;
    uint64_t generation;
    {
      std::lock_guard lock(lane.mutex);
      lane.fd = *fd;
      generation = ++lane.generation;
      lane.outbox = outbox;
      lane.state = Lane::State::kConnected;
      waiting.swap(lane.waiting);
    }
    lane.reader = std::thread([this, &lane, fd = *fd, generation, outbox] {
      pthread_setname_np(pthread_self(), "ff-tcp-client");
      read_responses(lane, fd, generation, outbox);
    });
    for (Frame& frame : waiting) outbox->push(std::move(frame));
  }

  void read_responses(Lane& lane, int fd, uint64_t generation, const std::shared_ptr<Outbox>& outbox) {
    StreamReader reader(fd);
    std::string header;
    for (;;) {
      FrameHead head;
      if (!reader.read(&head, sizeof head)) break;
      if (head.magic != kMagic || (head.kind != kResponseFrame && head.kind != kErrorFrame) ||
          head.header_bytes > kMaxHeaderBytes || head.payload_bytes > options.max_message_bytes) {
        FF_LOG_WARN("{}: unreadable frame (magic {:#x}, kind {}, header {} B, payload {} B); closing the connection",
                    lane.address, head.magic, head.kind, head.header_bytes, head.payload_bytes);
        break;
      }
      header.resize(head.header_bytes);
      if (!reader.read(header.data(), header.size())) break;
      std::optional<Pending> pending;
      {
        std::lock_guard lock(lane.mutex);
        auto node = lane.pending.extract(head.id);
        if (!node.empty()) {
          lane.deadlines.erase({node.mapped().deadline_ns, head.id});
          pending = std::move(node.mapped());
        }
      }
      // A read taken as pieces lands in a recycled aligned buffer (no fresh pages per read).
      auto payload = read_payload(reader, head.payload_bytes, pending.has_value() && pending->pieces);
      if (!payload.is_ok()) {
        if (pending)
          fail(lane, std::move(*pending), unavailable("{} to {}: connection lost", pending->name, lane.address));
        break;
      }
      if (!pending) continue;  // answered after its deadline: dropped
      lane.busy.fetch_sub(1, std::memory_order_relaxed);
      Result<Response> result = decode(head, header, std::move(*payload), *pending);
      complete(std::move(*pending), std::move(result));
    }
    // The connection is gone: every call still on it fails; the next call connects again.
    std::map<uint64_t, Pending> orphans;
    {
      std::lock_guard lock(lane.mutex);
      if (lane.generation == generation && lane.state == Lane::State::kConnected) {
        lane.state = Lane::State::kIdle;
        lane.fd = -1;
        lane.outbox.reset();
        orphans.swap(lane.pending);
        lane.deadlines.clear();
      }
    }
    outbox->close();
    close(fd);
    for (auto& [id, pending] : orphans) {
      std::string_view name = pending.name;
      fail(lane, std::move(pending), unavailable("{} to {}: connection lost", name, lane.address));
    }
  }

  static Result<Response> decode(const FrameHead& head, const std::string& header, Payload payload,
                                 const Pending& pending) {
    if (head.kind == kErrorFrame) {
      auto code = static_cast<StatusCode>(head.code);
      if (head.code <= 0 || head.code > static_cast<int>(StatusCode::kInternal)) code = StatusCode::kInternal;
      return Status(code, fmt::format("{} to {}: {}", pending.name, *pending.address, header));
    }
    pb::Envelope envelope;
    if (!envelope.ParseFromString(header)) {
      return fs_error(FsError::kMalformed,
                      fmt::format("{} to {}: response header is not an Envelope", pending.name, *pending.address));
    }
    FF_ASSIGN_OR_RETURN(Response response, response_from_proto(std::move(envelope)));
    if (payload.aligned.is_set()) {
      auto* read = std::get_if<ReadRsp>(&response);
      if (read == nullptr) {
        return fs_error(FsError::kMalformed, fmt::format("{} to {}: {} payload bytes for a response that is not a "
                                                         "ReadRsp",
                                                         pending.name, *pending.address, payload.aligned.size()));
      }
      read->pieces.size = payload.aligned.size();
      read->pieces.pieces.push_back(payload.aligned.bytes);
      read->pieces.owner = std::move(payload.aligned.owner);
      return response;
    }
    FF_RETURN_IF_ERROR(put_response_payload(response, std::move(payload.bytes)));
    return response;
  }

  void note_deadline(int64_t deadline_ns) {
    if (deadline_ns >= reaper_due_ns.load()) return;
    std::lock_guard lock(reaper_mutex);
    poked = true;
    reaper_wake.notify_one();
  }

  void reap() {
    pthread_setname_np(pthread_self(), "ff-tcp-deadline");
    for (;;) {
      {
        std::lock_guard lock(reaper_mutex);
        if (stopping) return;
        poked = false;
        reaper_due_ns.store(0);
      }
      int64_t now = now_ns(), earliest = now + 1'000'000'000;
      for (Lane* lane : all_lanes()) {
        std::vector<Pending> expired;
        {
          std::lock_guard lock(lane->mutex);
          while (!lane->deadlines.empty() && lane->deadlines.begin()->first <= now) {
            auto node = lane->pending.extract(lane->deadlines.begin()->second);
            lane->deadlines.erase(lane->deadlines.begin());
            if (!node.empty()) expired.push_back(std::move(node.mapped()));
          }
          if (!lane->deadlines.empty()) earliest = std::min(earliest, lane->deadlines.begin()->first);
        }
        for (Pending& pending : expired) {
          std::string_view name = pending.name;
          int64_t waited_ms = (now - pending.start_ns) / 1'000'000;
          fail(*lane, std::move(pending),
               deadline_exceeded("{} to {}: no answer within its deadline ({} ms)", name, lane->address, waited_ms));
        }
      }
      std::unique_lock lock(reaper_mutex);
      reaper_due_ns.store(earliest);
      reaper_wake.wait_for(lock, std::chrono::nanoseconds(std::max<int64_t>(earliest - now_ns(), 0)),
                           [&] { return stopping || poked; });
    }
  }

  void stop() {
    stopped = true;
    {
      std::lock_guard lock(reaper_mutex);
      stopping = true;
    }
    reaper_wake.notify_all();
    if (reaper.joinable()) reaper.join();
    for (Lane* lane : all_lanes()) {
      std::lock_guard threads(lane->threads_mutex);
      if (lane->connector.joinable()) lane->connector.join();  // a connect ends within connect_timeout_ms
      {
        std::lock_guard lock(lane->mutex);
        if (lane->fd >= 0) ::shutdown(lane->fd, SHUT_RDWR);  // the reader fails its calls and exits
      }
      if (lane->reader.joinable()) lane->reader.join();
    }
  }
};

TcpRpcClient::TcpRpcClient(Executor& executor, TcpClientOptions options, MetricsRegistry* metrics)
    : impl_(std::make_shared<Impl>(executor, options)) {
  if (metrics != nullptr) {
    impl_->calls = &metrics->counter("ff_rpc_client_calls_total", "RPC calls sent.");
    impl_->failures = &metrics->counter("ff_rpc_client_failures_total", "RPC calls that failed.");
    impl_->latency = &metrics->histogram("ff_rpc_client_seconds", "RPC call latency.");
  }
  impl_->reaper = std::thread([impl = impl_.get()] { impl->reap(); });
}

TcpRpcClient::~TcpRpcClient() { impl_->stop(); }

int64_t TcpRpcClient::in_flight() const { return impl_->in_flight.load(); }

void TcpRpcClient::call(const std::string& address, Request request, int64_t timeout_ns, Done done) {
  Impl& impl = *impl_;
  Impl::Pending pending;
  pending.name = request_name(request);
  if (const auto* read = std::get_if<ReadReq>(&request)) pending.pieces = read->accept_pieces;
  pending.start_ns = now_ns();
  pending.deadline_ns = pending.start_ns + std::max<int64_t>(timeout_ns, 1);
  pending.done = std::move(done);
  impl.in_flight.fetch_add(1);
  if (impl.calls != nullptr) impl.calls->add();

  Result<Impl::Peer*> peer = impl.peer(address);
  if (!peer.is_ok()) return impl.complete(std::move(pending), peer.status());
  Frame frame;
  frame.payload = take_request_payload(request);
  pb::Envelope envelope;
  request_to_proto(std::move(request), &envelope);
  frame.header = envelope.SerializeAsString();
  if (frame.header.size() + frame.payload.size() > impl.options.max_message_bytes) {
    std::string_view name = pending.name;
    return impl.complete(std::move(pending),
                         invalid_argument("{} to {}: {} bytes exceed the transport's limit of {} bytes", name, address,
                                          frame.header.size() + frame.payload.size(), impl.options.max_message_bytes));
  }
  Impl::Lane& lane = (*peer)->take_lane();
  pending.address = &lane.address;
  const uint64_t id = impl.next_id.fetch_add(1);
  const int64_t deadline_ns = pending.deadline_ns;
  frame.head.kind = kRequestFrame;
  frame.head.id = id;
  frame.head.header_bytes = static_cast<uint32_t>(frame.header.size());
  frame.head.timeout_ns = std::max<int64_t>(timeout_ns, 1);
  frame.head.payload_bytes = frame.payload.size();
  std::shared_ptr<Outbox> outbox;
  bool start_connector = false;
  {
    std::lock_guard lock(lane.mutex);
    if (lane.state == Impl::Lane::State::kIdle && now_ns() < lane.retry_after_ns) {
      std::string_view name = pending.name;
      impl.fail(lane, std::move(pending),
                unavailable("{} to {}: not reachable (a connect failed less than {} ms ago)", name, address,
                            kRetryAfterFailedConnectNs / 1'000'000));
      return;
    }
    lane.pending.emplace(id, std::move(pending));
    lane.deadlines.emplace(deadline_ns, id);
    if (lane.state == Impl::Lane::State::kConnected) {
      outbox = lane.outbox;
    } else {
      start_connector = lane.state == Impl::Lane::State::kIdle;
      lane.state = Impl::Lane::State::kConnecting;
      lane.waiting.push_back(std::move(frame));
    }
  }
  impl.note_deadline(deadline_ns);
  if (outbox != nullptr) {
    outbox->push(std::move(frame));  // a broken connection drops it; its reader fails the call
  } else if (start_connector) {
    std::lock_guard threads(lane.threads_mutex);
    if (lane.connector.joinable()) lane.connector.join();  // the last connect, finished (the lane was idle)
    if (impl.stopped.load()) {  // a call racing the client's destruction: no connect any more
      std::vector<Impl::Pending> failed;
      {
        std::lock_guard lock(lane.mutex);
        failed = Impl::take_pending(lane, lane.waiting);
        lane.waiting.clear();
        lane.state = Impl::Lane::State::kIdle;
      }
      for (auto& waiting : failed)
        impl.fail(lane, std::move(waiting), unavailable("{}: the client is stopping", address));
      return;
    }
    lane.connector = std::thread([&impl, &lane] {
      pthread_setname_np(pthread_self(), "ff-tcp-connect");
      impl.connect_lane(lane);
    });
  }
}

// ---------------------------------------------------------------- server

namespace {

// One accepted connection. Replies may come from any thread, after the reader stopped.
struct ServerConnection {
  std::string peer;
  std::mutex mutex;  // guards fd, outbox
  int fd = -1;
  std::shared_ptr<Outbox> outbox;
  std::thread reader;
  std::atomic<bool> finished{false};  // the reader returned (joinable without waiting)

  void send(Frame frame) {
    std::shared_ptr<Outbox> out;
    {
      std::lock_guard lock(mutex);
      out = outbox;
    }
    if (out != nullptr) out->push(std::move(frame));  // closed: the client has failed the call already
  }
  // Stops reading requests; replies still go out.
  void stop_reading() {
    std::lock_guard lock(mutex);
    if (fd >= 0) ::shutdown(fd, SHUT_RD);
  }
  void close_now() {
    std::shared_ptr<Outbox> out;
    int closing;
    {
      std::lock_guard lock(mutex);
      if (fd < 0) return;
      out = std::move(outbox);
      closing = fd;
      fd = -1;
    }
    out->close();
    close(closing);
  }
};

class OpenCalls;

// One request's reply: sent exactly once; a Reply dropped without being called answers [not_serving].
struct TcpReplyState {
  std::shared_ptr<ServerConnection> connection;
  uint64_t id = 0;
  std::atomic<bool> finished{false};
  Histogram* latency = nullptr;
  int64_t start_ns = 0;
  std::shared_ptr<OpenCalls> open;
  std::list<std::weak_ptr<TcpReplyState>>::iterator entry;

  void finish(Result<Response> result) {
    if (finished.exchange(true)) return;
    if (latency != nullptr) latency->record_us(static_cast<uint64_t>((now_ns() - start_ns) / 1000));
    Frame frame;
    frame.head.id = id;
    if (result.is_ok()) {
      frame.payload = take_response_payload(*result);
      pb::Envelope envelope;
      response_to_proto(std::move(*result), &envelope);
      frame.header = envelope.SerializeAsString();
      frame.head.kind = kResponseFrame;
      frame.head.payload_bytes = frame.payload.size();
    } else {
      frame.header = result.status().message();
      frame.head.kind = kErrorFrame;
      frame.head.code = static_cast<int32_t>(result.status().code());
    }
    frame.head.header_bytes = static_cast<uint32_t>(frame.header.size());
    connection->send(std::move(frame));
  }
  ~TcpReplyState();
};

// The requests a server has taken and not yet answered (for shutdown).
class OpenCalls {
 public:
  void add(const std::shared_ptr<OpenCalls>& self, const std::shared_ptr<TcpReplyState>& state) {
    std::lock_guard lock(mutex_);
    state->open = self;
    state->entry = calls_.insert(calls_.end(), state);
  }
  void remove(TcpReplyState& state) {
    {
      std::lock_guard lock(mutex_);
      calls_.erase(state.entry);
    }
    emptied_.notify_all();
  }
  // Waits until none is open or the deadline passed; then answers those left [not_serving].
  void drain(std::chrono::steady_clock::time_point deadline) {
    std::vector<std::shared_ptr<TcpReplyState>> left;
    {
      std::unique_lock lock(mutex_);
      emptied_.wait_until(lock, deadline, [&] { return calls_.empty(); });
      for (const auto& call : calls_) {
        if (auto state = call.lock()) left.push_back(std::move(state));
      }
    }
    for (const auto& state : left) state->finish(fs_error(FsError::kNotServing, "the server is shutting down"));
  }

 private:
  std::mutex mutex_;
  std::condition_variable emptied_;
  std::list<std::weak_ptr<TcpReplyState>> calls_;
};

TcpReplyState::~TcpReplyState() {
  if (!finished.load()) finish(fs_error(FsError::kNotServing, "the server dropped the request"));
  if (open != nullptr) open->remove(*this);
}

}  // namespace

struct TcpServer::Impl {
  Executor& executor;
  Handler handler;
  FastHandler fast;
  uint64_t max_message_bytes;
  Counter* requests = nullptr;
  Counter* malformed = nullptr;
  Histogram* latency = nullptr;
  int listen_fd = -1;
  uint16_t port = 0;
  std::string address;
  std::atomic<bool> stopping{false};
  bool shut_down = false;
  std::thread acceptor;
  std::mutex connections_mutex;  // guards connections
  std::list<std::shared_ptr<ServerConnection>> connections;
  std::shared_ptr<OpenCalls> open = std::make_shared<OpenCalls>();

  Impl(Executor& e, Handler h, FastHandler f, uint64_t max)
      : executor(e), handler(std::move(h)), fast(std::move(f)), max_message_bytes(max) {}

  void accept_loop() {
    pthread_setname_np(pthread_self(), "ff-tcp-accept");
    while (!stopping.load()) {
      pollfd p{listen_fd, POLLIN, 0};
      int ready = poll(&p, 1, 100);
      join_finished();
      if (ready <= 0) continue;
      sockaddr_storage from{};
      socklen_t length = sizeof from;
      int fd = accept4(listen_fd, reinterpret_cast<sockaddr*>(&from), &length, SOCK_CLOEXEC);
      if (fd < 0) continue;
      set_socket_options(fd);
      auto connection = std::make_shared<ServerConnection>();
      connection->fd = fd;
      connection->outbox = std::make_shared<Outbox>(fd);
      char text[INET6_ADDRSTRLEN] = "?";
      uint16_t from_port = 0;
      if (from.ss_family == AF_INET) {
        auto* in = reinterpret_cast<sockaddr_in*>(&from);
        inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
        from_port = ntohs(in->sin_port);
      } else if (from.ss_family == AF_INET6) {
        auto* in = reinterpret_cast<sockaddr_in6*>(&from);
        inet_ntop(AF_INET6, &in->sin6_addr, text, sizeof text);
        from_port = ntohs(in->sin6_port);
      }
      connection->peer = fmt::format("tcp:{}:{}", text, from_port);
      std::lock_guard lock(connections_mutex);
      connections.push_back(connection);
      connection->reader = std::thread([this, connection] {
        pthread_setname_np(pthread_self(), "ff-tcp-server");
        read_requests(connection, connection->fd);
        connection->finished = true;
      });
    }
  }

  // Joins the readers of connections their clients closed.
  void join_finished() {
    std::list<std::shared_ptr<ServerConnection>> done;
    {
      std::lock_guard lock(connections_mutex);
      for (auto it = connections.begin(); it != connections.end();) {
        if ((*it)->finished.load()) {
          done.push_back(std::move(*it));
          it = connections.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (auto& connection : done) connection->reader.join();
  }

  void read_requests(const std::shared_ptr<ServerConnection>& connection, int fd) {
    StreamReader reader(fd);
    std::string header;
    for (;;) {
      FrameHead head;
      if (!reader.read(&head, sizeof head)) break;
      if (head.magic != kMagic || head.kind != kRequestFrame || head.header_bytes > kMaxHeaderBytes ||
          head.payload_bytes > max_message_bytes) {
        if (malformed != nullptr) malformed->add();
        FF_LOG_WARN(
            "{}: unreadable request frame (magic {:#x}, kind {}, header {} B, payload {} B, limit {} B); "
            "closing the connection",
            connection->peer, head.magic, head.kind, head.header_bytes, head.payload_bytes, max_message_bytes);
        break;
      }
      header.resize(head.header_bytes);
      if (!reader.read(header.data(), header.size())) break;
      if (requests != nullptr) requests->add();
      pb::Envelope envelope;
      const bool parsed = envelope.ParseFromString(header);
      // Write payloads go to an aligned buffer the chunk engine writes as it is (as GrpcServer does).
      const bool aligned = parsed && (envelope.has_write_req() || envelope.has_forward_req());
      auto payload = read_payload(reader, head.payload_bytes, aligned);
      if (!payload.is_ok()) break;
      auto state = std::make_shared<TcpReplyState>();
      state->connection = connection;
      state->id = head.id;
      state->latency = latency;
      state->start_ns = now_ns();
      Result<Request> request =
          parsed ? request_from_proto(std::move(envelope))
                 : Result<Request>(fs_error(FsError::kMalformed, "request header is not an Envelope"));
      if (request.is_ok()) {
        Status installed = payload->aligned.is_set() ? put_request_shared_payload(*request, std::move(payload->aligned))
                                                     : put_request_payload(*request, std::move(payload->bytes));
        if (!installed.is_ok()) request = installed;
      }
      if (!request.is_ok()) {
        if (malformed != nullptr) malformed->add();
        state->finish(request.status());
        continue;
      }
      // Asked only where a fast handler may use it: a plain read or a batch of them (one syscall fewer on every
      // other request).
      const bool idle = fast &&
                        (std::holds_alternative<ReadReq>(*request) || std::holds_alternative<BatchReadReq>(*request)) &&
                        reader.idle();
      dispatch(connection, head, std::move(*request), std::move(state), idle);
    }
    // The client went away (or the server stops reading): replies still to come are dropped, except during
    // shutdown, which keeps the connection open for them until its deadline.
    if (!stopping.load()) connection->close_now();
  }

  void dispatch(const std::shared_ptr<ServerConnection>& connection, const FrameHead& head, Request request,
                std::shared_ptr<TcpReplyState> state, bool receiver_idle) {
    ServerContext context;
    context.receiver_idle = receiver_idle;
    context.deadline_ns = executor.clock().now_ns() + std::max<int64_t>(head.timeout_ns, 0);
    context.peer = connection->peer;
    context.shared_payloads = true;
    context.reply_from_any_thread = true;
    open->add(open, state);
    if (fast) {
      Reply reply = [state](Result<Response> result) { state->finish(std::move(result)); };
      if (fast(context, request, reply)) return;
    }
    executor.post([this, context = std::move(context), request = std::move(request), state]() mutable {
      Reply reply = [state](Result<Response> result) { state->finish(std::move(result)); };
      state.reset();
      handler(context, std::move(request), std::move(reply));
    });
  }
};

Result<std::unique_ptr<TcpServer>> TcpServer::start(const std::string& listen, Executor& executor, Handler handler,
                                                    MetricsRegistry* metrics, uint64_t max_message_bytes,
                                                    FastHandler fast) {
  FF_ASSIGN_OR_RETURN(auto host_port, split_address(listen));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
  addrinfo* found = nullptr;
  const char* host = host_port.first.empty() ? nullptr : host_port.first.c_str();
  if (int rc = getaddrinfo(host, host_port.second.c_str(), &hints, &found); rc != 0) {
    return invalid_argument("listen address '{}': cannot resolve '{}': {}", listen, host_port.first, gai_strerror(rc));
  }
  int fd = -1;
  std::string error = "no address";
  for (addrinfo* ai = found; ai != nullptr && fd < 0; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      error = errno_text(errno);
      continue;
    }
    int one = 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd, 512) != 0) {
      error = errno_text(errno);
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(found);
  if (fd < 0) return unavailable("TCP server could not listen on {}: {}", listen, error);
  sockaddr_storage bound{};
  socklen_t length = sizeof bound;
  (void)getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length);
  uint16_t port = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                              : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  std::unique_ptr<TcpServer> server(new TcpServer());
  server->impl_ = std::make_unique<Impl>(executor, std::move(handler), std::move(fast), max_message_bytes);
  Impl& impl = *server->impl_;
  if (metrics != nullptr) {
    impl.requests = &metrics->counter("ff_rpc_server_requests_total", "RPC requests received.");
    impl.malformed = &metrics->counter("ff_rpc_server_malformed_total", "Requests that could not be decoded.");
    impl.latency = &metrics->histogram("ff_rpc_server_seconds", "Time from receiving a request to its reply.");
  }
  impl.listen_fd = fd;
  impl.port = port;
  std::string shown_host =
      host_port.first.find(':') != std::string::npos ? "[" + host_port.first + "]" : host_port.first;
  impl.address = fmt::format("{}{}:{}", kTcpScheme, shown_host, port);
  impl.acceptor = std::thread([&impl] { impl.accept_loop(); });
  return server;
}

TcpServer::~TcpServer() { shutdown(1000); }

uint16_t TcpServer::port() const { return impl_->port; }

const std::string& TcpServer::address() const { return impl_->address; }

void TcpServer::shutdown(int64_t timeout_ms) {
  if (impl_ == nullptr || impl_->shut_down) return;
  impl_->shut_down = true;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  impl_->stopping = true;
  if (impl_->acceptor.joinable()) impl_->acceptor.join();
  close(impl_->listen_fd);
  std::list<std::shared_ptr<ServerConnection>> connections;
  {
    std::lock_guard lock(impl_->connections_mutex);
    connections.swap(impl_->connections);
  }
  // No new requests: each reader sees the end of its stream and returns; replies can still be sent.
  for (auto& connection : connections) connection->stop_reading();
  for (auto& connection : connections) connection->reader.join();
  impl_->open->drain(deadline);
  for (auto& connection : connections) connection->close_now();
}

// ---------------------------------------------------------------- both transports

NetRpcClient::NetRpcClient(Executor& executor, GrpcClientOptions grpc_options, TcpClientOptions tcp_options,
                           MetricsRegistry* metrics)
    : grpc_(executor, grpc_options, metrics), tcp_(executor, tcp_options, metrics) {}

void NetRpcClient::call(const std::string& address, Request request, int64_t timeout_ns, Done done) {
  if (address.starts_with(kTcpScheme)) {
    tcp_.call(address, std::move(request), timeout_ns, std::move(done));
  } else {
    grpc_.call(address, std::move(request), timeout_ns, std::move(done));
  }
}

int64_t NetRpcClient::in_flight() const { return grpc_.in_flight() + tcp_.in_flight(); }

Result<std::unique_ptr<RpcServer>> start_rpc_server(const std::string& listen, Executor& executor, Handler handler,
                                                    MetricsRegistry* metrics, FastHandler fast) {
  if (listen.starts_with(kTcpScheme)) {
    FF_ASSIGN_OR_RETURN(auto server,
                        TcpServer::start(listen, executor, std::move(handler), metrics, 256ull << 20, std::move(fast)));
    return std::unique_ptr<RpcServer>(std::move(server));
  }
  FF_ASSIGN_OR_RETURN(auto server,
                      GrpcServer::start(listen, executor, std::move(handler), metrics, 256 << 20, std::move(fast)));
  return std::unique_ptr<RpcServer>(std::move(server));
}

Result<std::string> listen_with_transport(const std::string& listen) {
  const char* chosen = std::getenv("FF_RPC_TRANSPORT");
  if (chosen == nullptr || *chosen == '\0') return listen;
  std::string_view bare = listen;
  if (bare.starts_with(kTcpScheme)) bare.remove_prefix(kTcpScheme.size());
  if (std::string_view(chosen) == "tcp") return std::string(kTcpScheme) + std::string(bare);
  if (std::string_view(chosen) == "grpc") return std::string(bare);
  return invalid_argument("FF_RPC_TRANSPORT={}: expected 'tcp' or 'grpc'", chosen);
}

}  // namespace ff::fs::rpc
