// Metrics of the fs processes: counters, gauges and latency histograms in one registry, exported as
// Prometheus text over HTTP on 127.0.0.1 (MetricsHttpServer: GET /metrics) and summarised in a periodic
// stats line in the log (StatsReporter). Why Prometheus text over HTTP: every monitoring stack scrapes
// it, curl reads it, and it needs no client library.
//
// Hot paths only touch atomics (Counter::add, Histogram::record); registering a metric takes a lock
// and is done at start-up. Metric objects live as long as the registry; references stay valid.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "ff/common/result.h"
#include "ff/common/status.h"

namespace ff::fs::rpc {

class Counter {
 public:
  void add(uint64_t delta = 1) { value_.fetch_add(delta, std::memory_order_relaxed); }
  uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

class Gauge {
 public:
  void set(int64_t value) { value_.store(value, std::memory_order_relaxed); }
  void add(int64_t delta) { value_.fetch_add(delta, std::memory_order_relaxed); }
  int64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> value_{0};
};

// Latencies in microseconds, in power-of-two buckets (le 1us, 2us, ... 2^25us ~ 33s, +Inf).
class Histogram {
 public:
  static constexpr int kBuckets = 27;
  void record_us(uint64_t micros);
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  uint64_t sum_us() const { return sum_us_.load(std::memory_order_relaxed); }
  // Upper bound of the bucket holding quantile q in [0,1] (microseconds); 0 when empty.
  uint64_t quantile_us(double q) const;
  uint64_t bucket(int index) const { return buckets_[index].load(std::memory_order_relaxed); }
  static uint64_t bucket_upper_us(int index) { return uint64_t{1} << index; }

 private:
  std::array<std::atomic<uint64_t>, kBuckets> buckets_{};
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_us_{0};
};

class MetricsRegistry {
 public:
  // `name` is a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*); `labels` is a label set without
  // braces ("target=\"101\"", may be empty). Asking twice for the same name and labels returns the same
  // object; the same name with another kind is a programmer error (asserted).
  Counter& counter(const std::string& name, const std::string& help, const std::string& labels = "");
  Gauge& gauge(const std::string& name, const std::string& help, const std::string& labels = "");
  Histogram& histogram(const std::string& name, const std::string& help, const std::string& labels = "");

  // The whole registry in the Prometheus text exposition format (version 0.0.4).
  std::string prometheus_text() const;

 private:
  enum class Kind { kCounter, kGauge, kHistogram };
  struct Family {
    Kind kind;
    std::string help;
    // labels -> metric; std::map keeps output order stable.
    std::map<std::string, std::unique_ptr<Counter>> counters;
    std::map<std::string, std::unique_ptr<Gauge>> gauges;
    std::map<std::string, std::unique_ptr<Histogram>> histograms;
  };
  Family& family(const std::string& name, const std::string& help, Kind kind);
  mutable std::mutex mutex_;
  std::map<std::string, Family> families_;
};

// A minimal HTTP/1.0 server for GET /metrics (anything else: 404). One thread, one connection at a time,
// every socket operation with a timeout; binds only the given host (127.0.0.1 by default).
class MetricsHttpServer {
 public:
  // port 0: the OS picks one (see port()).
  static Result<std::unique_ptr<MetricsHttpServer>> start(const MetricsRegistry* registry,
                                                          const std::string& host, uint16_t port);
  ~MetricsHttpServer();
  uint16_t port() const { return port_; }
  void stop();

 private:
  MetricsHttpServer(const MetricsRegistry* registry, int listen_fd, uint16_t port);
  void serve();
  const MetricsRegistry* registry_;
  int listen_fd_;
  uint16_t port_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

// The metrics start-up every fs program shares: parses `listen` ("host:port", port 0: any free port),
// starts the endpoint and logs "<program>: metrics at http://host:port/metrics". Errors:
// invalid_argument naming the bad address (a config error), or the server's own error.
Result<std::unique_ptr<MetricsHttpServer>> start_metrics_endpoint(const MetricsRegistry& registry,
                                                                  const std::string& listen,
                                                                  std::string_view program);

// GET http://host:port/path with a timeout; returns the body of a 200 response. For tests and ff-admin.
Result<std::string> http_get(const std::string& host, uint16_t port, const std::string& path, int timeout_ms);

// Logs `line()` every interval_ms on its own thread ("stats: ..."); stop() or the destructor ends it
// within one interval's wake-up (it waits on a condition variable, not a sleep).
class StatsReporter {
 public:
  StatsReporter(int64_t interval_ms, std::function<std::string()> line);
  ~StatsReporter();
  void stop();

 private:
  int64_t interval_ms_;
  std::function<std::string()> line_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

// Rate helper for stats lines: remembers the last value of a counter and returns units per second
// since the previous call.
class RateMeter {
 public:
  double rate_per_s(uint64_t value, int64_t now_ns);

 private:
  uint64_t last_value_ = 0;
  int64_t last_ns_ = 0;
};

}  // namespace ff::fs::rpc
