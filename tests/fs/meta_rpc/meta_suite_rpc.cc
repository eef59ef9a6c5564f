// fs_meta_rpc_test runs the metadata behaviour and concurrency suites (tests/fs/meta/meta_test.cc,
// meta_concurrency_test.cc) through RemoteMeta and a MetaRpcServer on 127.0.0.1: every operation and
// errno case, and the racing threads, cross gRPC.
#include "../meta/meta_test.h"
#include "ff/common/assert.h"
#include "ff/fs/meta_rpc.h"

namespace ff::fs::meta::testing {

namespace {

class GrpcFrontend final : public MetaFrontend {
 public:
  GrpcFrontend(MetaService& service, bool inline_reads) {
    // The server must not own the service: the fixture does.
    std::shared_ptr<MetaApi> api(&service, [](MetaApi*) {});
    auto server = MetaRpcServer::start(api, MetaServerOptions{.inline_reads = inline_reads});
    FF_ASSERT(server.is_ok(), "{}", server.status().to_string());
    server_ = std::move(*server);
    auto client = RemoteMeta::connect(RemoteMetaOptions{.addresses = {server_->address()}});
    FF_ASSERT(client.is_ok(), "{}", client.status().to_string());
    client_ = std::move(*client);
  }
  ~GrpcFrontend() override {
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
                           return std::make_unique<GrpcFrontend>(service, false);
                         }},
          MetaSuiteParam{"GrpcInlineReads", [](MetaService& service) -> std::unique_ptr<MetaFrontend> {
                           return std::make_unique<GrpcFrontend>(service, true);
                         }}};
}

// Memory and RocksDB (etcd's races are the same service code; its case stays in fs_meta_test).
ConcurrencySuite concurrency_suite() {
  return {{"memory_grpc", "rocksdb_grpc"}, [](MetaService& service) -> std::unique_ptr<MetaFrontend> {
            return std::make_unique<GrpcFrontend>(service, true);
          }};
}

}  // namespace ff::fs::meta::testing
