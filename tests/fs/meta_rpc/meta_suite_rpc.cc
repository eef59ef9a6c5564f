// fs_meta_rpc_test runs the metadata behaviour and concurrency suites (tests/fs/meta/meta_test.cc,
// meta_concurrency_test.cc) through RemoteMeta and a MetaRpcServer on 127.0.0.1: every operation and
// errno case, and the racing threads, cross gRPC (and the behaviour suite our TCP transport too).
#include "../meta/meta_test.h"
#include "ff/common/assert.h"
#include "ff/fs/meta_rpc.h"

namespace ff::fs::meta::testing {

namespace {

class RpcFrontend final : public MetaFrontend {
 public:
  // listen: "127.0.0.1:0" (gRPC) or "tcp://127.0.0.1:0" (our TCP transport).
  RpcFrontend(MetaService& service, bool inline_reads, const std::string& listen = "127.0.0.1:0") {
    // The server must not own the service: the fixture does.
    std::shared_ptr<MetaApi> api(&service, [](MetaApi*) {});
    auto server = MetaRpcServer::start(api, MetaServerOptions{.listen = listen, .inline_reads = inline_reads});
    FF_ASSERT(server.is_ok(), "{}", server.status().to_string());
    server_ = std::move(*server);
    auto client = RemoteMeta::connect(RemoteMetaOptions{.addresses = {server_->address()}});
    FF_ASSERT(client.is_ok(), "{}", client.status().to_string());
    client_ = std::move(*client);
  }
  ~RpcFrontend() override {
    client_.reset();
    server_->shutdown(1000);
  }
  MetaApi& api() override { return *client_; }

 private:
  std::unique_ptr<MetaRpcServer> server_;
  std::unique_ptr<RemoteMeta> client_;
};

}  // namespace

std::vector<MetaSuiteParam> meta_suite_params() {
  // Reads on worker threads (etcd's setting) and inline on gRPC's threads (RocksDB's).
  return {MetaSuiteParam{"Grpc",
                         [](MetaService& service) -> std::unique_ptr<MetaFrontend> {
                           return std::make_unique<RpcFrontend>(service, false);
                         }},
          MetaSuiteParam{"GrpcInlineReads",
                         [](MetaService& service) -> std::unique_ptr<MetaFrontend> {
                           return std::make_unique<RpcFrontend>(service, true);
                         }},
          MetaSuiteParam{"Tcp",
                         [](MetaService& service) -> std::unique_ptr<MetaFrontend> {
                           return std::make_unique<RpcFrontend>(service, false, "tcp://127.0.0.1:0");
                         }},
          MetaSuiteParam{"TcpInlineReads", [](MetaService& service) -> std::unique_ptr<MetaFrontend> {
                           return std::make_unique<RpcFrontend>(service, true, "tcp://127.0.0.1:0");
                         }}};
}

// Memory and RocksDB (etcd's races are the same service code; its case stays in fs_meta_test).
ConcurrencySuite concurrency_suite() {
  return {{"memory_grpc", "rocksdb_grpc"}, [](MetaService& service) -> std::unique_ptr<MetaFrontend> {
            return std::make_unique<RpcFrontend>(service, true);
          }};
}

}  // namespace ff::fs::meta::testing
