// fs_bench_client: throughput of the native file client (FileClient over an EmbeddedFs: in-process
// meta on RocksDB, storage over gRPC) against a running cluster. Prefills one file (or, with --reuse, opens
// the one an earlier run left), then runs every (op, pattern, block, parallelism) case for --seconds, P threads
// each with one I/O in flight, and prints one JSON line per case. bench/fs/bench_client.py runs it beside fio.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include "ff/common/malloc_tuning.h"
#include "ff/fs/file_client.h"

namespace {

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  std::string part;
  while (std::getline(stream, part, ',')) {
    if (!part.empty()) parts.push_back(part);
  }
  return parts;
}

int fail(const ff::Status& status, const char* what) {
  std::fprintf(stderr, "fs_bench_client: %s: %s\n", what, status.to_string().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  ff::tune_malloc_for_io_buffers();  // as a client that reads and writes MiB-sized blocks should (malloc_tuning.h)
  CLI::App app{"Native fs client throughput (one JSON line per case)"};
  std::string mgmtd, meta_db, ops = "write,read", patterns = "seq,rand", blocks = "1048576,4194304",
                              parallelism = "1,4,16";
  uint64_t file_mb = 256;
  double seconds = 3;
  uint32_t chunk_size = 1u << 20;
  uint32_t max_parallel_chunks = 16;
  uint32_t read_split_bytes = 1u << 20;
  app.add_option("--mgmtd", mgmtd, "mgmtd host:port")->required();
  app.add_option("--meta-db", meta_db, "RocksDB directory for the in-process meta (created)")->required();
  app.add_option("--file-mb", file_mb, "file size in MiB (prefilled)");
  app.add_option("--seconds", seconds, "seconds per case");
  app.add_option("--ops", ops, "write,read");
  app.add_option("--patterns", patterns, "seq,rand");
  app.add_option("--blocks", blocks, "block sizes in bytes");
  app.add_option("--parallelism", parallelism, "threads, each with one I/O in flight");
  app.add_option("--chunk-size", chunk_size, "file chunk size");
  app.add_option("--max-parallel-chunks", max_parallel_chunks, "chunk I/Os in flight per call");
  app.add_option("--read-split-bytes", read_split_bytes, "chunk reads longer than this are split (0: off)");
  bool no_local_reads = false;
  uint64_t local_read_piece_bytes = ff::fs::FileClientConfig{}.local_read_piece_bytes;
  app.add_option("--local-read-piece-bytes", local_read_piece_bytes,
                 "local reads longer than this read in pieces, each checked as it lands (0: one read)");
  app.add_flag("--no-local-reads", no_local_reads, "read every chunk over RPC (FileClientConfig::local_reads off)");
  bool no_read_ahead = false;
  app.add_flag("--no-read-ahead", no_read_ahead,
               "sequential reads do not read ahead (FileClientConfig::read_ahead off)");
  bool reuse = false;
  app.add_flag("--reuse", reuse, "open the file an earlier run with the same --meta-db prefilled, if it is as long");
  CLI11_PARSE(app, argc, argv);

  ff::fs::FileClientConfig client_config;
  client_config.mgmtd_address = mgmtd;
  client_config.max_parallel_chunks = max_parallel_chunks;
  client_config.read_split_bytes = read_split_bytes;
  client_config.local_reads = !no_local_reads;
  client_config.local_read_piece_bytes = local_read_piece_bytes;
  client_config.read_ahead = !no_read_ahead;
  client_config.rpc_timeout_ms = 30'000;
  client_config.op_timeout_ms = 120'000;
  ff::fs::EmbeddedFsConfig fs_config;
  fs_config.kv_path = meta_db;
  fs_config.chunk_size = chunk_size;
  auto embedded = ff::fs::EmbeddedFs::open(client_config, fs_config);
  if (!embedded.is_ok()) return fail(embedded.status(), "open");
  ff::fs::FileClient& client = (*embedded)->client();
  ff::fs::meta::Caller root;
  const uint64_t file_bytes = file_mb << 20;
  const uint32_t flags = ff::fs::meta::kOpenRead | ff::fs::meta::kOpenWrite;
  ff::Result<ff::fs::FileHandle> fh = ff::invalid_argument("not opened");
  bool prefilled = false;
  if (reuse) {
    auto existing = client.meta().lookup(root, ff::fs::meta::kRootInode, "bench.dat");
    if (existing.is_ok() && existing->length >= file_bytes) {
      fh = client.open(root, existing->id, flags);
      if (!fh.is_ok()) return fail(fh.status(), "open");
      prefilled = true;
    }
  }
  if (!prefilled) {
    fh = client.create(root, ff::fs::meta::kRootInode, "bench.dat", 0644, flags);
    if (!fh.is_ok()) return fail(fh.status(), "create");
  }
  if (!prefilled) {
    // Prefill with 4 MiB writes, 4 threads: every later read finds data.
    std::vector<std::byte> block(4u << 20);
    std::mt19937_64 rng(1);
    for (auto& b : block) b = static_cast<std::byte>(rng());
    std::atomic<uint64_t> next{0};
    std::atomic<bool> failed{false};
    auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&] {
        for (uint64_t offset = next.fetch_add(block.size()); offset < file_bytes;
             offset = next.fetch_add(block.size())) {
          size_t n = std::min<uint64_t>(block.size(), file_bytes - offset);
          if (!client.write(*fh, offset, std::span(block).first(n)).is_ok()) failed = true;
        }
      });
    }
    for (auto& thread : threads) thread.join();
    if (failed) return fail(ff::io_error("a prefill write failed"), "prefill");
    auto synced = client.fsync(*fh);
    if (!synced.is_ok()) return fail(synced.status(), "fsync");
    double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "prefill: %llu MiB in %.1f s (%.1f MB/s)\n", static_cast<unsigned long long>(file_mb), elapsed,
                 file_bytes / elapsed / 1e6);
  }
  if (ops.find("read") != std::string::npos) {
    // Warm-up, untimed: one pass over the file, as a client that has read it before (it knows where each chunk's
    // bytes lie on this host's targets, so its reads start before their answers: docs/fs.md, "Local reads").
    std::vector<std::byte> block(1u << 20);
    for (uint64_t offset = 0; offset < file_bytes; offset += block.size()) {
      auto n = client.read(*fh, offset, std::span(block).first(std::min<uint64_t>(block.size(), file_bytes - offset)));
      if (!n.is_ok()) return fail(n.status(), "warm-up read");
    }
  }
  for (const std::string& block_text : split(blocks)) {
    const uint64_t block = std::stoull(block_text);
    if (block == 0 || block > file_bytes) {
      std::fprintf(stderr, "block %llu does not fit a %llu MiB file\n", static_cast<unsigned long long>(block),
                   static_cast<unsigned long long>(file_mb));
      return 1;
    }
    const uint64_t blocks_in_file = file_bytes / block;
    for (const std::string& op : split(ops)) {
      for (const std::string& pattern : split(patterns)) {
        for (const std::string& parallel_text : split(parallelism)) {
          const int parallel = std::stoi(parallel_text);
          std::atomic<uint64_t> ios{0}, errors{0};
          std::atomic<bool> stop{false};
          std::vector<std::thread> threads;
          const ff::fs::StorageClient::LocalReadCounts counts_before = client.local_read_counts();
          auto start = std::chrono::steady_clock::now();
          for (int t = 0; t < parallel; ++t) {
            threads.emplace_back([&, t] {
              // 4 KiB-aligned, as fio's O_DIRECT buffers (a local read then lands in it without a copy).
              std::unique_ptr<std::byte, decltype(&std::free)> memory(
                  static_cast<std::byte*>(std::aligned_alloc(4096, (block + 4095) / 4096 * 4096)), &std::free);
              std::span<std::byte> buffer(memory.get(), block);
              std::fill(buffer.begin(), buffer.end(), std::byte{static_cast<unsigned char>(t)});
              std::mt19937_64 rng(1000 + t);
              // Sequential: each thread walks its own slice of the file.
              uint64_t slice = std::max<uint64_t>(1, blocks_in_file / parallel);
              uint64_t position = (t * slice) % blocks_in_file;
              uint64_t step = 0;
              while (!stop.load(std::memory_order_relaxed)) {
                uint64_t index =
                    pattern == "seq" ? (position + step++ % slice) % blocks_in_file : rng() % blocks_in_file;
                uint64_t offset = index * block;
                bool ok =
                    op == "read" ? client.read(*fh, offset, buffer).is_ok() : client.write(*fh, offset, buffer).is_ok();
                ++(ok ? ios : errors);
              }
            });
          }
          std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
          stop = true;
          for (auto& thread : threads) thread.join();
          double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
          const ff::fs::StorageClient::LocalReadCounts counts = client.local_read_counts();
          nlohmann::json line = {
              {"op", op},
              {"local_reads", counts.served - counts_before.served},
              {"local_reads_read_before_answer", counts.read_before_answer - counts_before.read_before_answer},
              {"local_reads_read_ahead", counts.read_ahead - counts_before.read_ahead},
              {"pattern", pattern},
              {"block_bytes", block},
              {"parallel", parallel},
              {"ios", ios.load()},
              {"errors", errors.load()},
              {"seconds", elapsed},
              {"MB_per_s", ios.load() * block / elapsed / 1e6},
              {"avg_latency_ms", ios.load() ? elapsed * parallel / ios.load() * 1e3 : 0.0}};
          std::printf("%s\n", line.dump().c_str());
          std::fflush(stdout);
        }
      }
    }
  }
  (void)client.close(*fh);
  return 0;
}
