// EmbeddedFs: a FileClient over an in-process MetaService (include/ff/fs/file_client.h).
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "ff/common/log.h"
#include "ff/fs/file_client.h"
#include "ff/fs/kv_engines.h"
#include "ff/fs/mgmtd_addresses.h"
#include "ff/fs/rpc/tcp_transport.h"

namespace ff::fs {

namespace {

// The MetaService needs its FileStorage at open, and the FileClient that implements it needs the
// MetaService: this forwards to the client's once both exist.
class DeferredFileStorage final : public meta::FileStorage {
 public:
  void set(meta::FileStorage* target) { target_.store(target, std::memory_order_release); }

  Result<uint64_t> file_length(const meta::Inode& inode) override {
    FF_ASSIGN_OR_RETURN(meta::FileStorage * target, get());
    return target->file_length(inode);
  }
  Status truncate(const meta::Inode& inode, uint64_t length) override {
    FF_ASSIGN_OR_RETURN(meta::FileStorage * target, get());
    return target->truncate(inode, length);
  }
  Status remove_file(const meta::Inode& inode) override {
    FF_ASSIGN_OR_RETURN(meta::FileStorage * target, get());
    return target->remove_file(inode);
  }

 private:
  Result<meta::FileStorage*> get() const {
    meta::FileStorage* target = target_.load(std::memory_order_acquire);
    if (target == nullptr) return unavailable("file storage is not connected yet (or already gone)");
    return target;
  }
  std::atomic<meta::FileStorage*> target_{nullptr};
};

// The chains of `table` from mgmtd, waiting up to timeout_ms for mgmtd to answer and the table to exist.
Result<std::vector<ChainId>> fetch_chains(const std::string& mgmtd, ChainTableId table, int64_t timeout_ms) {
  rpc::ThreadExecutor executor("fs-routing", 1);
  Status last = unavailable("no answer yet");
  std::vector<ChainId> chains;
  {
    rpc::NetRpcClient client(executor);
    MgmtdAddresses addresses = MgmtdAddresses::unchecked(mgmtd);  // a primary and its standbys
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (true) {
      const std::string address = addresses.current();
      auto rsp = response_as<GetRoutingRsp>(rpc::call_blocking(client, address, Request{GetRoutingReq{}}, 2'000'000'000));
      if (!rsp.is_ok()) addresses.failed(address, rsp.status());  // the next attempt goes to the next one
      if (rsp.is_ok() && rsp->routing) {
        auto it = rsp->routing->chain_tables.find(table);
        if (it != rsp->routing->chain_tables.end() && !it->second.chains.empty()) {
          chains = it->second.chains;
          break;
        }
        last =
            not_found("mgmtd at {} has no chain table {} (create it with ff-admin create-chain-table)", mgmtd, table);
      } else if (!rsp.is_ok()) {
        last = rsp.status();
      }
      if (std::chrono::steady_clock::now() >= deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    for (int i = 0; i < 100 && client.in_flight() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    executor.stop();
  }
  if (chains.empty()) return last.with_context(fmt::format("routing from mgmtd {} (waited {} ms)", mgmtd, timeout_ms));
  return chains;
}

}  // namespace

struct EmbeddedFs::Impl {
  DeferredFileStorage storage;
  std::unique_ptr<kv::KvEngine> engine;
  std::unique_ptr<meta::MetaService> meta;
  std::unique_ptr<FileClient> client;
  int64_t gc_interval_ms = 1000;
  std::mutex mutex;  // guards stopping
  std::condition_variable wake;
  bool stopping = false;
  std::thread gc;

  void gc_loop() {
    std::unique_lock lock(mutex);
    while (!stopping) {
      wake.wait_for(lock, std::chrono::milliseconds(gc_interval_ms), [&] { return stopping; });
      if (stopping) break;
      lock.unlock();
      auto reclaimed = meta->reclaim_expired_sessions();
      if (!reclaimed.is_ok()) FF_LOG_DEBUG("embedded fs: session reclaim failed: {}", reclaimed.status());
      auto collected = meta->collect_garbage();
      if (!collected.is_ok()) FF_LOG_DEBUG("embedded fs: garbage collection failed: {}", collected.status());
      lock.lock();
    }
  }
};

Result<std::unique_ptr<EmbeddedFs>> EmbeddedFs::open(FileClientConfig client_config, EmbeddedFsConfig config) {
  if (config.gc_interval_ms <= 0)
    return invalid_argument("EmbeddedFsConfig.gc_interval_ms is {}, expected > 0", config.gc_interval_ms);
  FF_ASSIGN_OR_RETURN(std::vector<ChainId> chains,
                      fetch_chains(client_config.mgmtd_address, config.chain_table, config.routing_timeout_ms));
  if (config.stripe > chains.size()) {
    return invalid_argument("EmbeddedFsConfig.stripe is {}, but chain table {} has {} chains", config.stripe,
                            config.chain_table, chains.size());
  }
  auto impl = std::make_unique<Impl>();
  impl->gc_interval_ms = config.gc_interval_ms;
  if (config.kv_path.empty()) {
    impl->engine = kv::open_memory_kv();
  } else {
    FF_ASSIGN_OR_RETURN(impl->engine, kv::open_rocksdb_kv({.path = config.kv_path, .sync = config.kv_sync}));
  }
  meta::MetaConfig meta_config;
  meta_config.chain_table = config.chain_table;
  meta_config.chains = chains;
  meta_config.stripe = config.stripe == 0 ? static_cast<uint32_t>(chains.size()) : config.stripe;
  meta_config.chunk_size = config.chunk_size;
  meta_config.client_lease_ms = config.client_lease_ms;
  FF_ASSIGN_OR_RETURN(impl->meta, meta::MetaService::open(*impl->engine, meta_config, &impl->storage));
  FF_ASSIGN_OR_RETURN(impl->client, FileClient::connect(std::move(client_config), *impl->meta));
  impl->storage.set(&impl->client->file_storage());
  Impl* raw = impl.get();
  impl->gc = std::thread([raw] { raw->gc_loop(); });
  return std::unique_ptr<EmbeddedFs>(new EmbeddedFs(std::move(impl)));
}

EmbeddedFs::EmbeddedFs(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

EmbeddedFs::~EmbeddedFs() {
  {
    std::lock_guard lock(impl_->mutex);
    impl_->stopping = true;
  }
  impl_->wake.notify_all();
  if (impl_->gc.joinable()) impl_->gc.join();
  // The client closes its handles through meta (which may ask storage for lengths): it goes first,
  // while the storage it implements is still connected; then nothing calls storage any more.
  impl_->client.reset();
  impl_->storage.set(nullptr);
  impl_->meta.reset();
  impl_->engine.reset();
}

FileClient& EmbeddedFs::client() { return *impl_->client; }
meta::MetaService& EmbeddedFs::meta() { return *impl_->meta; }

}  // namespace ff::fs
