// ff-bench-storage: drives a running cluster through StorageClient over gRPC.
//   bench        sequential/random read and write of one block size at one queue depth; one JSON line
//                (bench/fs/bench_storage.py runs the grid beside fio)
//   write-check  writes checksummed chunks (each chunk once, contents derived from its id) for a while
//                and appends every acknowledged chunk to a log
//   verify       reads every logged chunk from EVERY target of its chain (direct reads of that target)
//                and checks its bytes; exit 1 on any mismatch
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <future>
#include <iostream>
#include <random>
#include <thread>

#include "ff/common/log.h"
#include "ff/common/malloc_tuning.h"
#include "ff/fs/client.h"
#include "ff/fs/crc32c.h"
#include "ff/fs/rpc/tcp_transport.h"

namespace {

using namespace ff;
using namespace ff::fs;
using namespace ff::fs::rpc;

// Contents of chunk (inode, index): a xorshift stream seeded by the id, so any reader can recompute it.
Bytes chunk_contents(uint64_t inode, uint64_t index, uint64_t bytes) {
  Bytes data(bytes);
  uint64_t state = inode * 0x9E3779B97F4A7C15ull ^ (index + 1) * 0xBF58476D1CE4E5B9ull;
  for (uint64_t i = 0; i < bytes; i += 8) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    std::memcpy(data.data() + i, &state, std::min<uint64_t>(8, bytes - i));
  }
  return data;
}

template <typename T>
Result<T> wait_for(std::future<Result<T>>& future, int64_t timeout_ms) {
  if (future.wait_for(std::chrono::milliseconds(timeout_ms)) != std::future_status::ready) {
    return deadline_exceeded("operation did not finish within {} ms", timeout_ms);
  }
  return future.get();
}

Result<RoutingInfo> fetch_routing(ThreadExecutor& executor, StorageClient& client) {
  auto promise = std::make_shared<std::promise<Result<RoutingVersion>>>();
  auto future = promise->get_future();
  executor.post([&client, promise] { client.refresh_routing([promise](Result<RoutingVersion> v) { promise->set_value(std::move(v)); }); });
  FF_RETURN_IF_ERROR(wait_for(future, 60000).status());
  RoutingInfo routing;
  FF_RETURN_IF_ERROR(executor.run_sync([&] { routing = client.routing(); }, 5000));
  return routing;
}

std::vector<ChainId> chains_of(const RoutingInfo& routing, ChainTableId table) {
  auto it = routing.chain_tables.find(table);
  return it == routing.chain_tables.end() ? std::vector<ChainId>{} : it->second.chains;
}

int write_check(ThreadExecutor& executor, StorageClient& client, ChainTableId table, double seconds,
                uint64_t chunk_bytes, const std::string& log_path, uint64_t inode) {
  auto routing = fetch_routing(executor, client);
  if (!routing.is_ok()) {
    FF_LOG_ERROR("routing: {}", routing.status());
    return 1;
  }
  std::vector<ChainId> chains = chains_of(*routing, table);
  if (chains.empty()) {
    FF_LOG_ERROR("chain table {} has no chains", table);
    return 1;
  }
  std::ofstream log(log_path, std::ios::app);
  int64_t end = system_clock().now_ms() + static_cast<int64_t>(seconds * 1000);
  uint64_t acked = 0, failed = 0;
  for (uint64_t index = 0; system_clock().now_ms() < end; ++index) {
    ChainId chain = chains[index % chains.size()];
    Bytes data = chunk_contents(inode, index, chunk_bytes);
    uint32_t crc = crc32c(data);
    auto promise = std::make_shared<std::promise<Result<WriteRsp>>>();
    auto future = promise->get_future();
    executor.post([&, chain, index, data = std::move(data), promise]() mutable {
      client.write(chain, ChunkId{inode, index}, 0, std::move(data),
                   [promise](Result<WriteRsp> rsp) { promise->set_value(std::move(rsp)); });
    });
    auto rsp = wait_for(future, 90000);
    if (rsp.is_ok()) {
      if (rsp->crc32c != crc) {
        FF_LOG_ERROR("chunk {}:{}: acknowledged CRC {:08x}, expected {:08x}", inode, index, rsp->crc32c, crc);
        return 1;
      }
      log << fmt::format("{} {} {} {} {}\n", chain, inode, index, chunk_bytes, crc) << std::flush;
      ++acked;
    } else {
      ++failed;
      FF_LOG_WARN("chunk {}:{} not acknowledged: {}", inode, index, rsp.status());
    }
  }
  std::cout << nlohmann::json{{"acknowledged", acked}, {"failed", failed}}.dump() << std::endl;
  return 0;
}

int verify(ThreadExecutor& executor, StorageClient& client, NetRpcClient& rpc, const std::string& log_path,
           double rpc_timeout_s) {
  auto routing = fetch_routing(executor, client);
  if (!routing.is_ok()) {
    FF_LOG_ERROR("routing: {}", routing.status());
    return 1;
  }
  std::ifstream log(log_path);
  uint64_t chunks = 0, replica_reads = 0, bad = 0;
  ChainId chain_id;
  uint64_t inode, index, bytes;
  uint32_t crc;
  while (log >> chain_id >> inode >> index >> bytes >> crc) {
    ++chunks;
    const ChainInfo* chain = routing->chain(chain_id);
    if (chain == nullptr) {
      FF_LOG_ERROR("chain {} is not in routing", chain_id);
      return 1;
    }
    Bytes expected = chunk_contents(inode, index, bytes);
    for (const ChainTarget& target : chain->targets) {
      auto address = routing->address_of(target.target);
      ReadReq read{chain->id, chain->version, target.target, ChunkId{inode, index}, 0, bytes, ReadMode::kStrict};
      auto rsp = response_as<ReadRsp>(
          call_blocking(rpc, address.value_or("?"), Request{read}, static_cast<int64_t>(rpc_timeout_s * 1e9)));
      ++replica_reads;
      if (!rsp.is_ok()) {
        FF_LOG_ERROR("chunk {}:{} on target {} ({}): {}", inode, index, target.target, target.state, rsp.status());
        ++bad;
      } else if (rsp->data != expected || rsp->meta.committed_crc32c != crc) {
        FF_LOG_ERROR("chunk {}:{} on target {}: {} bytes with CRC {:08x}, expected {} bytes with CRC {:08x}", inode,
                     index, target.target, rsp->data.size(), crc32c(rsp->data), bytes, crc);
        ++bad;
      }
    }
  }
  std::cout << nlohmann::json{{"chunks", chunks}, {"replica_reads", replica_reads}, {"bad", bad}}.dump() << std::endl;
  return bad == 0 && chunks > 0 ? 0 : 1;
}

struct BenchCase {
  std::string op = "write";   // read | write
  std::string pattern = "seq";  // seq | rand
  uint64_t block_bytes = 1 << 20;
  uint32_t queue_depth = 1;
  uint64_t file_bytes = 256ull << 20;
  double seconds = 5;
  ChainTableId table = 1;
  uint64_t inode = 7;
  uint64_t max_ops = 0;  // 0: until `seconds` pass
  bool local_reads = false;  // ClientConfig::local_reads
  // Reads by queue_depth threads, one block at a time each (synchronous callers: FUSE's threads, a thread pool),
  // served on the caller's thread where a kept answer allows (StorageClient::read_cached_now).
  bool caller_threads = false;
  // Reads by one thread keeping queue_depth reads in flight through a StorageClient::CachedReadQueue (one io_uring for
  // all of them, as fio's one job at iodepth N); a read no kept answer serves is read with read() and waited for.
  bool caller_queue = false;
  // The file's chunk size (the file system's default layout, MetaConfig::chunk_size). A block smaller than a chunk
  // is one chunk I/O (a part of the chunk); a larger one is block / chunk_bytes whole-chunk I/Os in parallel, and the
  // operation ends with the last of them (as FileClient splits a call at chunk boundaries).
  uint64_t chunk_bytes = 1 << 20;
};

int bench(ThreadExecutor& executor, StorageClient& client, const BenchCase& c) {
  auto routing = fetch_routing(executor, client);
  if (!routing.is_ok()) {
    FF_LOG_ERROR("routing: {}", routing.status());
    return 1;
  }
  std::vector<ChainId> chains = chains_of(*routing, c.table);
  if (chains.empty()) {
    FF_LOG_ERROR("chain table {} has no chains", c.table);
    return 1;
  }
  // The file is striped over the chains in chunks of c.chunk_bytes.
  const uint64_t chunk_bytes = c.chunk_bytes;
  if (chunk_bytes == 0 ||
      (c.block_bytes < chunk_bytes ? chunk_bytes % c.block_bytes : c.block_bytes % chunk_bytes) != 0) {
    FF_LOG_ERROR("block_bytes {} and chunk_bytes {}: one must be a multiple of the other", c.block_bytes, chunk_bytes);
    return 1;
  }
  const uint64_t pieces = std::max<uint64_t>(1, c.block_bytes / chunk_bytes);  // chunk I/Os per operation
  const uint64_t piece_bytes = c.block_bytes / pieces;
  const uint64_t blocks = c.file_bytes / c.block_bytes;
  if (blocks == 0) {
    FF_LOG_ERROR("file_bytes {} < block_bytes {}", c.file_bytes, c.block_bytes);
    return 1;
  }
  // One payload shared by every write (sent without a copy per operation).
  SharedBytes payload = SharedBytes::adopt(chunk_contents(c.inode, 0, c.block_bytes));
  struct Shared {
    std::mutex mutex;
    std::condition_variable done;
    uint64_t issued = 0, completed = 0, errors = 0, in_flight = 0;
    bool stop = false;
    std::string first_error;
    Histogram latency;
  };
  auto shared = std::make_shared<Shared>();
  std::mt19937_64 rng(42);
  uint64_t next_seq = 0;
  int64_t start_ns = system_clock().now_ns();
  int64_t end_ns = start_ns + static_cast<int64_t>(c.seconds * 1e9);
  // issue() runs on the executor: keeps queue_depth operations in flight until the time is up.
  std::function<void()> issue = [&, shared]() {
    while (!shared->stop && shared->in_flight < c.queue_depth) {
      if (system_clock().now_ns() >= end_ns || (c.max_ops != 0 && shared->issued >= c.max_ops)) {
        shared->stop = true;
        break;
      }
      uint64_t block = c.pattern == "seq" ? next_seq++ % blocks : rng() % blocks;
      ++shared->in_flight;
      ++shared->issued;
      int64_t op_start = system_clock().now_ns();
      // The operation's outcome once its last chunk I/O is done: the first error, if any.
      struct Operation {
        std::mutex mutex;
        uint64_t left = 0;
        Status status;
      };
      auto operation = std::make_shared<Operation>();
      operation->left = pieces;
      auto finish_op = [&, shared, op_start](const Status& status) {
        shared->latency.record_us(static_cast<uint64_t>((system_clock().now_ns() - op_start) / 1000));
        std::lock_guard lock(shared->mutex);
        --shared->in_flight;
        ++shared->completed;
        if (!status.is_ok()) {
          if (shared->errors++ == 0) shared->first_error = status.to_string();
        }
        if (shared->stop && shared->in_flight == 0) shared->done.notify_all();
      };
      // Runs after each chunk I/O; the last one ends the operation and issues the next.
      auto piece_done = [operation, finish_op, issue](const Status& status) {
        Status outcome;
        {
          std::lock_guard lock(operation->mutex);
          if (!status.is_ok() && operation->status.is_ok()) operation->status = status;
          if (--operation->left > 0) return;
          outcome = operation->status;
        }
        finish_op(outcome);
        issue();
      };
      for (uint64_t piece = 0; piece < pieces; ++piece) {
        const uint64_t offset = block * c.block_bytes + piece * piece_bytes;
        const ChunkId chunk{c.inode, offset / chunk_bytes};
        const ChainId chain = chains[chunk.index % chains.size()];
        const uint64_t in_chunk = offset % chunk_bytes;
        if (c.op == "write") {
          SharedBytes part{payload.owner, payload.bytes.subspan(piece * piece_bytes, piece_bytes)};
          client.write(
              chain, chunk, in_chunk, std::move(part),
              [piece_done](Result<WriteRsp> rsp) { piece_done(rsp.is_ok() ? Status::ok() : rsp.status()); }, 0,
              chunk_bytes);
        } else {
          // The answer comes as pieces, as FileClient and ff-fuse take it: over RPC the payload lands in a recycled
          // aligned buffer (a fresh Bytes would be zeroed first: a 1 MiB memset per read, a quarter of the
          // receiving thread's CPU), and a local read is the caller's own. Either completes on the transport's or
          // an offload thread: back to the executor, where issue() runs (the same one hop an answer without
          // pieces takes).
          client.read(
              chain, chunk, in_chunk, piece_bytes, ReadMode::kStrict,
              [piece_done, &executor](Result<ReadRsp> rsp) {
                Status status = rsp.is_ok() ? Status::ok() : rsp.status();
                executor.post([piece_done, status] { piece_done(status); });
              },
              true);
        }
      }
    }
    std::lock_guard lock(shared->mutex);
    if (shared->stop && shared->in_flight == 0) shared->done.notify_all();
  };
  // A read through the executor, waited for (the callers' way for a read no kept answer serves).
  const auto read_waited = [&](ChainId chain, const ChunkId& chunk, uint64_t in_chunk, uint64_t length) {
    auto promise = std::make_shared<std::promise<Status>>();
    auto future = promise->get_future();
    executor.post([&client, chain, chunk, in_chunk, length, promise] {
      client.read(
          chain, chunk, in_chunk, length, ReadMode::kStrict,
          [promise](Result<ReadRsp> rsp) { promise->set_value(rsp.is_ok() ? Status::ok() : rsp.status()); }, true);
    });
    return future.wait_for(std::chrono::seconds(120)) == std::future_status::ready
               ? future.get()
               : deadline_exceeded("read of chunk {} got no answer in 120 s", chunk.to_string());
  };
  const auto record = [&](int64_t op_start, const Status& status) {
    std::lock_guard lock(shared->mutex);
    shared->latency.record_us(static_cast<uint64_t>((system_clock().now_ns() - op_start) / 1000));
    ++shared->issued;
    ++shared->completed;
    if (!status.is_ok() && shared->errors++ == 0) shared->first_error = status.to_string();
  };
  const auto time_left = [&](uint64_t issued) {
    return system_clock().now_ns() < end_ns && (c.max_ops == 0 || issued < c.max_ops);
  };
  if (c.caller_queue && c.op == "read") {
    if (pieces != 1) {
      FF_LOG_ERROR("--caller-queue reads blocks within a chunk: block_bytes {} > chunk_bytes {}", c.block_bytes,
                   chunk_bytes);
      return 1;
    }
    StorageClient::CachedReadQueue queue(client, c.queue_depth);
    struct Started {
      ChunkId chunk;
      ChainId chain = 0;
      uint64_t in_chunk = 0;
      int64_t at_ns = 0;
    };
    std::unordered_map<uint64_t, Started> started;  // by tag
    std::vector<StorageClient::CachedReadQueue::Done> done;
    uint64_t issued = 0;
    const auto place = [&](uint64_t block) {
      const uint64_t offset = block * c.block_bytes;
      const ChunkId chunk{c.inode, offset / chunk_bytes};
      return std::tuple(chunk, chains[chunk.index % chains.size()], offset % chunk_bytes);
    };
    while (time_left(issued) || queue.in_flight() > 0) {
      while (queue.in_flight() < c.queue_depth && time_left(issued)) {
        const uint64_t block = c.pattern == "seq" ? issued % blocks : rng() % blocks;
        const uint64_t tag = issued++;
        const auto [chunk, chain, in_chunk] = place(block);
        const int64_t op_start = system_clock().now_ns();
        if (queue.submit(chain, chunk, in_chunk, piece_bytes, tag)) {
          started.emplace(tag, Started{chunk, chain, in_chunk, op_start});
        } else {
          record(op_start, read_waited(chain, chunk, in_chunk, piece_bytes));
        }
      }
      // One at a time: the next read goes to the disk before the queue checks the one after (as fio's io_uring job
      // resubmits as each read completes).
      done.clear();
      queue.reap(1, done, 1);
      for (auto& [tag, rsp] : done) {
        const Started read = started.at(tag);
        started.erase(tag);
        // One the chunk's change refused: read as usual.
        record(read.at_ns, rsp ? Status::ok() : read_waited(read.chain, read.chunk, read.in_chunk, piece_bytes));
      }
    }
    std::lock_guard lock(shared->mutex);
    shared->stop = true;
  } else if (c.caller_threads && c.op == "read") {
    // queue_depth callers, each reading one block at a time on its own thread: a read a kept answer can serve
    // (StorageClient::read_cached_now) is read right there, others go through the executor and are waited for.
    std::atomic<uint64_t> next_block{0};
    std::vector<std::thread> callers;
    for (uint32_t index = 0; index < c.queue_depth; ++index) {
      callers.emplace_back([&, index] {
        std::mt19937_64 caller_rng(42 + index);
        while (time_left(next_block.load())) {
          const uint64_t block = c.pattern == "seq" ? next_block++ % blocks : (next_block++, caller_rng() % blocks);
          const int64_t op_start = system_clock().now_ns();
          Status status;
          for (uint64_t piece = 0; piece < pieces && status.is_ok(); ++piece) {
            const uint64_t offset = block * c.block_bytes + piece * piece_bytes;
            const ChunkId chunk{c.inode, offset / chunk_bytes};
            const ChainId chain = chains[chunk.index % chains.size()];
            const uint64_t in_chunk = offset % chunk_bytes;
            std::optional<Result<ReadRsp>> now = client.read_cached_now(chain, chunk, in_chunk, piece_bytes);
            status = now ? now->status() : read_waited(chain, chunk, in_chunk, piece_bytes);
          }
          record(op_start, status);
        }
      });
    }
    for (auto& caller : callers) caller.join();
    std::lock_guard lock(shared->mutex);
    shared->stop = true;
  } else {
    executor.post(issue);
  }
  {
    std::unique_lock lock(shared->mutex);
    shared->done.wait_for(lock, std::chrono::seconds(static_cast<int64_t>(c.seconds) + 120),
                          [&] { return shared->stop && shared->in_flight == 0; });
  }
  double seconds = static_cast<double>(system_clock().now_ns() - start_ns) / 1e9;
  uint64_t ok_ops = shared->completed - shared->errors;
  nlohmann::json line = {{"bench", "fs_storage"},
                         {"op", c.op},
                         {"pattern", c.pattern},
                         {"block_bytes", c.block_bytes},
                         {"queue_depth", c.queue_depth},
                         {"caller_threads", c.caller_threads && c.op == "read"},
                         {"caller_queue", c.caller_queue && c.op == "read"},
                         {"ops", ok_ops},
                         {"errors", shared->errors},
                         {"seconds", seconds},
                         {"MB_per_s", static_cast<double>(ok_ops * c.block_bytes) / 1e6 / seconds},
                         {"iops", static_cast<double>(ok_ops) / seconds},
                         {"p50_us", shared->latency.quantile_us(0.5)},
                         {"p99_us", shared->latency.quantile_us(0.99)},
                         {"local_reads", client.local_read_counts().served},
                         {"local_read_fallbacks", client.local_read_counts().fallbacks},
                         {"local_reads_read_before_answer", client.local_read_counts().read_before_answer},
                         {"cached_local_reads", client.local_read_counts().cached},
                         {"cached_local_read_misses", client.local_read_counts().cache_misses},
                         {"cached_local_reads_changed", client.local_read_counts().cache_changed},
                         {"queued_local_reads", client.local_read_counts().queued},
                         {"read_rpcs", client.coalesced_read_counts().rpcs},
                         {"batched_reads", client.coalesced_read_counts().batched_reads},
                         {"coalesced_writes", client.stats().coalesced_writes},
                         {"coalesced_write_requests", client.stats().coalesced_write_requests}};
  if (!shared->first_error.empty()) line["first_error"] = shared->first_error;
  std::cout << line.dump() << std::endl;
  return shared->errors == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  ff::tune_malloc_for_io_buffers();  // as a client that reads and writes MiB-sized blocks should (malloc_tuning.h)
  CLI::App app{"ff-bench-storage: benchmark / checked writer / verifier against an fs cluster"};
  app.require_subcommand(1);
  std::string mgmtd = "127.0.0.1:9000";
  double rpc_timeout_s = 5;
  uint64_t client_id = static_cast<uint64_t>(system_clock().now_ns());
  app.add_option("--mgmtd", mgmtd, "ff-mgmtd address");
  app.add_option("--rpc-timeout-s", rpc_timeout_s, "deadline of each RPC");
  app.add_option("--client-id", client_id, "unique client id (write dedupe key)");

  BenchCase bench_case;
  auto* bench_cmd = app.add_subcommand("bench", "one benchmark case; prints a JSON line");
  bench_cmd->add_option("--op", bench_case.op)->check(CLI::IsMember({"read", "write"}));
  bench_cmd->add_option("--pattern", bench_case.pattern)->check(CLI::IsMember({"seq", "rand"}));
  bench_cmd->add_option("--block-bytes", bench_case.block_bytes);
  bench_cmd->add_option("--queue-depth", bench_case.queue_depth)->check(CLI::Range(1u, 1024u));
  bench_cmd->add_option("--file-bytes", bench_case.file_bytes);
  bench_cmd->add_option("--seconds", bench_case.seconds);
  bench_cmd->add_option("--table", bench_case.table);
  bench_cmd->add_option("--inode", bench_case.inode);
  bench_cmd->add_option("--max-ops", bench_case.max_ops, "stop after this many operations (prefill)");
  bench_cmd->add_option("--chunk-bytes", bench_case.chunk_bytes,
                        "the file's chunk size (default 1 MiB, the file system's); larger blocks span several chunks");
  bench_cmd->add_flag("--local-reads", bench_case.local_reads,
                      "read chunks of targets on this host from their files (docs/fs.md, Local reads)");
  bench_cmd->add_flag("--caller-threads", bench_case.caller_threads,
                      "reads: queue-depth threads each reading one block at a time, served on the thread where a "
                      "kept answer of cached local reads allows (StorageClient::read_cached_now)");
  bench_cmd->add_flag("--caller-queue", bench_case.caller_queue,
                      "reads: one thread keeping queue-depth reads in flight through one io_uring "
                      "(StorageClient::CachedReadQueue), those no kept answer serves read as usual and waited for");
  bool no_read_before_answer = false;
  bench_cmd->add_flag("--no-read-before-answer", no_read_before_answer,
                      "local reads wait for the target's answer before reading (ClientConfig::read_before_answer off)");
  uint32_t read_rpcs_per_node = ClientConfig{}.read_rpcs_per_node;
  bench_cmd->add_option("--read-rpcs-per-node", read_rpcs_per_node,
                        "small reads beyond this many RPCs in flight to a node wait and go as one batch (0: off; "
                        "ClientConfig::read_rpcs_per_node)");
  uint32_t cached_local_read_chunks = ClientConfig{}.cached_local_read_chunks;
  bench_cmd->add_option("--cached-local-read-chunks", cached_local_read_chunks,
                        "with --local-reads: chunks whose whole-version answer is kept and read again while the "
                        "target's read stamps show no change (0: off; ClientConfig::cached_local_read_chunks)");
  uint64_t coalesce_write_max_bytes = ClientConfig{}.coalesce_write_max_bytes;
  bench_cmd->add_option("--coalesce-write-max-bytes", coalesce_write_max_bytes,
                        "writes of a chunk go one at a time; waiting ones of at most this many bytes that touch go as "
                        "one (0: off, every write sent at once; ClientConfig::coalesce_write_max_bytes)");

  auto* write_cmd = app.add_subcommand("write-check", "write checksummed chunks, log the acknowledged ones");
  double seconds = 10;
  uint64_t chunk_bytes = 64 << 10;
  std::string log_path;
  ChainTableId table = 1;
  uint64_t inode = 1;
  write_cmd->add_option("--seconds", seconds);
  write_cmd->add_option("--chunk-bytes", chunk_bytes);
  write_cmd->add_option("--log", log_path)->required();
  write_cmd->add_option("--table", table);
  write_cmd->add_option("--inode", inode);

  auto* verify_cmd = app.add_subcommand("verify", "read every logged chunk from every replica");
  verify_cmd->add_option("--log", log_path)->required();
  CLI11_PARSE(app, argc, argv);

  // Local reads are blocking preads on the executor's offload threads: one per read in flight.
  ThreadExecutor executor("bench", bench_case.local_reads ? std::clamp<uint32_t>(bench_case.queue_depth, 1, 64) : 1);
  NetRpcClient rpc(executor);
  ClientConfig config;
  config.client_id = client_id;
  config.mgmtd_address = mgmtd;
  config.rpc_timeout_ns = static_cast<int64_t>(rpc_timeout_s * 1e9);
  config.op_timeout_ns = 60'000'000'000;
  config.max_attempts = 200;
  config.local_reads = bench_case.local_reads;
  config.read_before_answer = !no_read_before_answer;
  config.read_rpcs_per_node = read_rpcs_per_node;
  config.coalesce_write_max_bytes = coalesce_write_max_bytes;
  config.cached_local_read_chunks = cached_local_read_chunks;
  int code = 0;
  {
    StorageClient client(config, executor, rpc);
    if (*bench_cmd) code = bench(executor, client, bench_case);
    if (*write_cmd) code = write_check(executor, client, table, seconds, chunk_bytes, log_path, inode);
    if (*verify_cmd) code = verify(executor, client, rpc, log_path, rpc_timeout_s);
    for (int i = 0; i < 200 && rpc.in_flight() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    executor.stop();
  }
  return code;
}
