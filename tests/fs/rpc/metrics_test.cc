#include "ff/fs/rpc/metrics.h"

#include <gtest/gtest.h>

#include "test_util.h"

namespace ff::fs::rpc {
namespace {

TEST(MetricsTest, PrometheusTextHasEveryKind) {
  MetricsRegistry registry;
  registry.counter("ff_writes_total", "Writes.", "target=\"101\"").add(3);
  registry.counter("ff_writes_total", "Writes.", "target=\"101\"").add(2);  // same object
  registry.gauge("ff_targets", "Targets.").set(-4);
  Histogram& latency = registry.histogram("ff_write_seconds", "Write latency.");
  latency.record_us(3);
  latency.record_us(1000);
  std::string text = registry.prometheus_text();
  EXPECT_NE(text.find("# TYPE ff_writes_total counter\nff_writes_total{target=\"101\"} 5\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("ff_targets -4\n"), std::string::npos) << text;
  EXPECT_NE(text.find("ff_write_seconds_bucket{le=\"4e-06\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("ff_write_seconds_bucket{le=\"+Inf\"} 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("ff_write_seconds_count 2\n"), std::string::npos) << text;
  EXPECT_EQ(latency.quantile_us(0.0), 4u);
  EXPECT_EQ(latency.quantile_us(0.99), 1024u);
}

TEST(MetricsTest, HttpEndpointServesMetricsOnLoopback) {
  MetricsRegistry registry;
  registry.counter("ff_requests_total", "Requests.").add(42);
  auto server = MetricsHttpServer::start(&registry, "127.0.0.1", 0);
  ASSERT_TRUE(server.is_ok()) << server.status();
  ASSERT_NE((*server)->port(), 0);
  auto body = http_get("127.0.0.1", (*server)->port(), "/metrics", 2000);
  ASSERT_TRUE(body.is_ok()) << body.status();
  EXPECT_NE(body->find("ff_requests_total 42"), std::string::npos) << *body;
  auto missing = http_get("127.0.0.1", (*server)->port(), "/other", 2000);
  EXPECT_FALSE(missing.is_ok());
  (*server)->stop();
  EXPECT_FALSE(http_get("127.0.0.1", (*server)->port(), "/metrics", 500).is_ok());
}

TEST(MetricsTest, StartMetricsEndpointParsesTheAddress) {
  MetricsRegistry registry;
  registry.counter("ff_test_total", "A test counter.").add(3);
  auto server = start_metrics_endpoint(registry, "127.0.0.1:0", "test");
  ASSERT_TRUE(server.is_ok()) << server.status().to_string();
  auto body = http_get("127.0.0.1", (*server)->port(), "/metrics", 2000);
  ASSERT_TRUE(body.is_ok()) << body.status().to_string();
  EXPECT_NE(body->find("ff_test_total 3"), std::string::npos);
  auto bad = start_metrics_endpoint(registry, "no-port", "test");
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("metrics.listen"), std::string::npos);
}

TEST(MetricsTest, StatsReporterStopsPromptly) {
  std::atomic<int> lines{0};
  auto start = std::chrono::steady_clock::now();
  {
    StatsReporter reporter(20, [&] {
      lines.fetch_add(1);
      return std::string("x");
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(110));
  }
  auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_GE(lines.load(), 2);
  EXPECT_LT(elapsed, std::chrono::milliseconds(1000));
}

}  // namespace
}  // namespace ff::fs::rpc
