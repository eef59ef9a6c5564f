#include "ff/fs/rpc/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "ff/common/assert.h"
#include "ff/common/log.h"
#include "ff/fs/rpc/toml_config.h"

namespace ff::fs::rpc {

void Histogram::record_us(uint64_t micros) {
  int index = micros <= 1 ? 0 : static_cast<int>(std::bit_width(micros - 1));
  if (index >= kBuckets) index = kBuckets - 1;
  buckets_[index].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_us_.fetch_add(micros, std::memory_order_relaxed);
}

uint64_t Histogram::quantile_us(double q) const {
  uint64_t total = count();
  if (total == 0) return 0;
  uint64_t rank = static_cast<uint64_t>(q * static_cast<double>(total));
  if (rank >= total) rank = total - 1;
  uint64_t seen = 0;
  for (int i = 0; i < kBuckets; ++i) {
    seen += bucket(i);
    if (seen > rank) return bucket_upper_us(i);
  }
  return bucket_upper_us(kBuckets - 1);
}

MetricsRegistry::Family& MetricsRegistry::family(const std::string& name, const std::string& help, Kind kind) {
  auto [it, inserted] = families_.try_emplace(name);
  if (inserted) {
    it->second.kind = kind;
    it->second.help = help;
  }
  FF_ASSERT(it->second.kind == kind, "metric {} registered with two kinds", name);
  return it->second;
}

Counter& MetricsRegistry::counter(const std::string& name, const std::string& help, const std::string& labels) {
  std::lock_guard lock(mutex_);
  auto& slot = family(name, help, Kind::kCounter).counters[labels];
  if (!slot) slot = std::make_unique<Counter>();
  return *slot;
}

Gauge& MetricsRegistry::gauge(const std::string& name, const std::string& help, const std::string& labels) {
  std::lock_guard lock(mutex_);
  auto& slot = family(name, help, Kind::kGauge).gauges[labels];
  if (!slot) slot = std::make_unique<Gauge>();
  return *slot;
}

Histogram& MetricsRegistry::histogram(const std::string& name, const std::string& help, const std::string& labels) {
  std::lock_guard lock(mutex_);
  auto& slot = family(name, help, Kind::kHistogram).histograms[labels];
  if (!slot) slot = std::make_unique<Histogram>();
  return *slot;
}

std::string MetricsRegistry::prometheus_text() const {
  std::lock_guard lock(mutex_);
  std::string out;
  auto braces = [](const std::string& labels) { return labels.empty() ? std::string() : "{" + labels + "}"; };
  for (const auto& [name, family] : families_) {
    const char* type = family.kind == Kind::kCounter ? "counter" : family.kind == Kind::kGauge ? "gauge" : "histogram";
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, family.help, name, type);
    for (const auto& [labels, counter] : family.counters) {
      out += fmt::format("{}{} {}\n", name, braces(labels), counter->value());
    }
    for (const auto& [labels, gauge] : family.gauges) {
      out += fmt::format("{}{} {}\n", name, braces(labels), gauge->value());
    }
    for (const auto& [labels, histogram] : family.histograms) {
      std::string prefix = labels.empty() ? std::string() : labels + ",";
      uint64_t cumulative = 0;
      // Seconds, as Prometheus expects; bucket bounds are powers of two microseconds.
      for (int i = 0; i < Histogram::kBuckets; ++i) {
        cumulative += histogram->bucket(i);
        out += fmt::format("{}_bucket{{{}le=\"{:g}\"}} {}\n", name, prefix,
                           static_cast<double>(Histogram::bucket_upper_us(i)) * 1e-6, cumulative);
      }
      out += fmt::format("{}_bucket{{{}le=\"+Inf\"}} {}\n", name, prefix, histogram->count());
      out += fmt::format("{}_sum{} {:g}\n", name, braces(labels), static_cast<double>(histogram->sum_us()) * 1e-6);
      out += fmt::format("{}_count{} {}\n", name, braces(labels), histogram->count());
    }
  }
  return out;
}

namespace {

Status set_timeouts(int fd, int timeout_ms) {
  timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0 ||
      setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0) {
    return errno_error(errno, "setsockopt(SO_RCVTIMEO/SO_SNDTIMEO)");
  }
  return Status::ok();
}

Status send_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t sent = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (sent < 0) {
      if (errno == EINTR) continue;
      return errno_error(errno, "send");
    }
    data.remove_prefix(static_cast<size_t>(sent));
  }
  return Status::ok();
}

Result<sockaddr_in> make_address(const std::string& host, uint16_t port) {
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  std::string ip = host == "localhost" ? "127.0.0.1" : host;
  if (inet_pton(AF_INET, ip.c_str(), &address.sin_addr) != 1) {
    return invalid_argument("host '{}' is not an IPv4 address (e.g. 127.0.0.1)", host);
  }
  return address;
}

}  // namespace

Result<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::start(const MetricsRegistry* registry,
                                                                    const std::string& host, uint16_t port) {
  FF_ASSERT(registry != nullptr);
  FF_ASSIGN_OR_RETURN(sockaddr_in address, make_address(host, port));
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno_error(errno, "socket");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    Status status = errno_error(errno, fmt::format("bind metrics endpoint {}:{}", host, port));
    ::close(fd);
    return status;
  }
  if (::listen(fd, 16) != 0) {
    Status status = errno_error(errno, "listen");
    ::close(fd);
    return status;
  }
  socklen_t length = sizeof(address);
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  return std::unique_ptr<MetricsHttpServer>(new MetricsHttpServer(registry, fd, ntohs(address.sin_port)));
}

MetricsHttpServer::MetricsHttpServer(const MetricsRegistry* registry, int listen_fd, uint16_t port)
    : registry_(registry), listen_fd_(listen_fd), port_(port) {
  thread_ = std::thread([this] { serve(); });
}

MetricsHttpServer::~MetricsHttpServer() { stop(); }

void MetricsHttpServer::stop() {
  stopping_.store(true);
  if (thread_.joinable()) thread_.join();
  if (listen_fd_ >= 0) {
    ::close(listen_fd_);
    listen_fd_ = -1;
  }
}

void MetricsHttpServer::serve() {
  while (!stopping_.load()) {
    pollfd pfd{listen_fd_, POLLIN, 0};
    // Wake up every 100 ms to notice stop().
    int ready = ::poll(&pfd, 1, 100);
    if (ready <= 0) continue;
    int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    if (set_timeouts(client, 2000).is_ok()) {
      std::string request;
      char buffer[2048];
      // Bounded: a request line and headers beyond 16 KiB are not ours to serve.
      while (request.find("\r\n\r\n") == std::string::npos && request.size() < 16384) {
        ssize_t got = ::recv(client, buffer, sizeof(buffer), 0);
        if (got <= 0) break;
        request.append(buffer, static_cast<size_t>(got));
      }
      std::string response;
      if (request.starts_with("GET /metrics ") || request.starts_with("GET /metrics?")) {
        std::string body = registry_->prometheus_text();
        response = fmt::format(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n"
            "Connection: close\r\n\r\n{}",
            body.size(), body);
      } else {
        std::string body = "only GET /metrics is served here\n";
        response = fmt::format("HTTP/1.0 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                               body.size(), body);
      }
      (void)send_all(client, response);
    }
    ::close(client);
  }
}

Result<std::unique_ptr<MetricsHttpServer>> start_metrics_endpoint(const MetricsRegistry& registry,
                                                                  const std::string& listen,
                                                                  std::string_view program) {
  auto address = parse_host_port(listen);
  if (!address.is_ok()) return invalid_argument("metrics.listen: {}", address.status().message());
  FF_ASSIGN_OR_RETURN(std::unique_ptr<MetricsHttpServer> server,
                      MetricsHttpServer::start(&registry, address->host, address->port));
  FF_LOG_INFO("{}: metrics at http://{}:{}/metrics", program, address->host, server->port());
  return server;
}

Result<std::string> http_get(const std::string& host, uint16_t port, const std::string& path, int timeout_ms) {
  FF_ASSIGN_OR_RETURN(sockaddr_in address, make_address(host, port));
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno_error(errno, "socket");
  Status status = set_timeouts(fd, timeout_ms);
  std::string response;
  if (status.is_ok() && ::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    status = errno_error(errno, fmt::format("connect {}:{}", host, port));
  }
  if (status.is_ok()) status = send_all(fd, fmt::format("GET {} HTTP/1.0\r\nHost: {}\r\n\r\n", path, host));
  if (status.is_ok()) {
    char buffer[8192];
    while (response.size() < (64u << 20)) {
      ssize_t got = ::recv(fd, buffer, sizeof(buffer), 0);
      if (got < 0) {
        if (errno == EINTR) continue;
        status = errno_error(errno, fmt::format("recv from {}:{}", host, port));
        break;
      }
      if (got == 0) break;
      response.append(buffer, static_cast<size_t>(got));
    }
  }
  ::close(fd);
  FF_RETURN_IF_ERROR(status);
  size_t header_end = response.find("\r\n\r\n");
  if (header_end == std::string::npos) return unavailable("GET {}:{}{}: malformed HTTP response", host, port, path);
  if (!response.starts_with("HTTP/1.0 200") && !response.starts_with("HTTP/1.1 200")) {
    return unavailable("GET {}:{}{}: {}", host, port, path, response.substr(0, response.find("\r\n")));
  }
  return response.substr(header_end + 4);
}

StatsReporter::StatsReporter(int64_t interval_ms, std::function<std::string()> line)
    : interval_ms_(interval_ms), line_(std::move(line)) {
  FF_ASSERT(interval_ms_ > 0, "stats interval must be positive, got {} ms", interval_ms_);
  thread_ = std::thread([this] {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
      if (wake_.wait_for(lock, std::chrono::milliseconds(interval_ms_), [this] { return stopping_; })) break;
      lock.unlock();
      FF_LOG_INFO("stats: {}", line_());
      lock.lock();
    }
  });
}

StatsReporter::~StatsReporter() { stop(); }

void StatsReporter::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

double RateMeter::rate_per_s(uint64_t value, int64_t now_ns) {
  double rate = 0;
  if (last_ns_ != 0 && now_ns > last_ns_) {
    rate = static_cast<double>(value - last_value_) * 1e9 / static_cast<double>(now_ns - last_ns_);
  }
  last_value_ = value;
  last_ns_ = now_ns;
  return rate;
}

}  // namespace ff::fs::rpc
