// chunk_engine_bench: the chunk engine alone against fio on the same disk, one JSON line per case.
//
// Engine side: `qd` threads, each issuing one synchronous call at a time (read_into into an aligned
// buffer, or put_pending + commit), so `qd` calls are in flight. fio side: one job, ioengine=io_uring,
// direct=1, iodepth=qd, the same block size and pattern, on a file of the same size in the same
// directory (writes with sync=dsync, as the engine's O_DIRECT + RWF_DSYNC data writes; reads on the
// engine's own block-class file, read-only, so both read the same bytes). Each case runs
// for --seconds; the line carries both figures and their ratio.
//
//   chunk_engine_bench [--dir /mnt/nvme/bench] [--chunk-bytes 4194304] [--chunks 64] [--seconds 3] [--out x.json]
//
// --out also writes every line into one JSON document with the CPU's name (scripts/bench.sh, `make bench`, passes
// it); --dir defaults to a scratch directory under /tmp (the disk under test).
//
// --scale-chunks N measures instead what grows with the number of chunks on a target: N chunks of 4 KiB
// (in 4 KiB blocks) are written, then the engine is reopened (open rebuilds the free-block maps from every
// record) and listed in full (what a storage server does at start-up and per chain change), timed. Baseline in the
// same run: RocksDB alone on the engine's metadata directory (open, then one iterator over every record, values
// read), the floor for anything that must look at every record.
#include <rocksdb/db.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <stdlib.h>

#include <atomic>
#include <bit>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../cpu_model.h"
#include "ff/common/log.h"
#include "ff/fs/chunk_engine.h"

namespace {

using ff::fs::ChunkEngine;
using ff::fs::ChunkId;
using ff::fs::ChunkUpdate;
using ff::fs::ReadMode;
using Clock = std::chrono::steady_clock;

struct Measured {
  double seconds = 0;
  uint64_t operations = 0;
  uint64_t bytes = 0;
  uint64_t errors = 0;
};

struct AlignedBuffer {
  explicit AlignedBuffer(size_t bytes) {
    if (posix_memalign(&memory, 4096, bytes) != 0) memory = nullptr;
    size = bytes;
  }
  ~AlignedBuffer() { std::free(memory); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  std::span<std::byte> span() const { return {static_cast<std::byte*>(memory), size}; }
  void* memory = nullptr;
  size_t size = 0;
};

// Runs `body(thread, iteration)` on `threads` threads for `seconds`; body returns bytes moved or -1.
template <typename Body>
Measured run_threads(int threads, double seconds, Body body) {
  std::atomic<bool> stop{false};
  std::vector<Measured> per_thread(static_cast<size_t>(threads));
  std::vector<std::thread> workers;
  const auto start = Clock::now();
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      Measured& mine = per_thread[static_cast<size_t>(t)];
      for (uint64_t i = 0; !stop.load(std::memory_order_relaxed); ++i) {
        const int64_t moved = body(t, i);
        if (moved < 0) {
          ++mine.errors;
        } else {
          ++mine.operations;
          mine.bytes += static_cast<uint64_t>(moved);
        }
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& worker : workers) worker.join();
  Measured total;
  total.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  for (const Measured& m : per_thread) {
    total.operations += m.operations;
    total.bytes += m.bytes;
    total.errors += m.errors;
  }
  return total;
}

// fio on `file` with the same pattern; returns {bytes/s, ops/s} or zeros when fio is unavailable.
std::pair<double, double> run_fio(const std::string& fio, const std::string& file, uint64_t file_bytes,
                                  const std::string& rw, uint64_t block_bytes, int depth, double seconds) {
  if (fio.empty()) return {0, 0};
  const std::string command = fmt::format(
      "{} --name=baseline --filename={} --size={} --rw={} --bs={} --direct=1 --ioengine=io_uring --iodepth={} "
      "--numjobs=1 --time_based --runtime={} --ramp_time=0.5 --randrepeat=0 --norandommap {} --output-format=json "
      "2>/dev/null",
      fio, file, file_bytes, rw, block_bytes, depth, std::max(1, static_cast<int>(seconds)),
      rw.find("write") != std::string::npos ? "--sync=dsync" : "");
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return {0, 0};
  std::string output;
  char chunk[4096];
  size_t n = 0;
  while ((n = std::fread(chunk, 1, sizeof(chunk), pipe)) > 0) output.append(chunk, n);
  ::pclose(pipe);
  const auto json_start = output.find('{');
  if (json_start == std::string::npos) return {0, 0};
  auto parsed = nlohmann::json::parse(output.substr(json_start), nullptr, false);
  if (parsed.is_discarded() || !parsed.contains("jobs") || parsed["jobs"].empty()) return {0, 0};
  const auto& job = parsed["jobs"][0];
  const auto& side = job[rw.find("write") != std::string::npos ? "write" : "read"];
  return {side["bw_bytes"].get<double>(), side["iops"].get<double>()};
}

std::vector<nlohmann::json> printed;  // every line, for --out

void print_line(const nlohmann::json& line) {
  std::printf("%s\n", line.dump().c_str());
  std::fflush(stdout);
  printed.push_back(line);
}

using ff::bench::cpu_model;

void print_case(const std::string& name, const std::string& pattern, uint64_t block_bytes, int depth,
                const Measured& measured, std::pair<double, double> fio, const std::string& note = "") {
  const double bytes_per_s = static_cast<double>(measured.bytes) / measured.seconds;
  const double ops_per_s = static_cast<double>(measured.operations) / measured.seconds;
  nlohmann::json line = {{"bench", "fs_chunk_engine"},
                         {"case", name},
                         {"pattern", pattern},
                         {"block_bytes", block_bytes},
                         {"depth", depth},
                         {"engine_MBps", bytes_per_s / 1e6},
                         {"engine_iops", ops_per_s},
                         {"errors", measured.errors}};
  if (fio.first > 0) {
    line["fio_MBps"] = fio.first / 1e6;
    line["fio_iops"] = fio.second;
    line["ratio"] = bytes_per_s / fio.first;
  }
  if (!note.empty()) line["note"] = note;
  print_line(line);
}

// The baseline of the scale case: RocksDB alone opens `meta_dir` and iterates every record (keys and values).
struct RawScan {
  double open_s = 0, scan_s = 0;
  uint64_t records = 0, bytes = 0;  // keys and values
  std::string error;                // empty when it worked
};
RawScan raw_rocksdb_scan(const std::string& meta_dir) {
  RawScan raw;
  rocksdb::Options db_options;
  db_options.max_background_jobs = 2;
  rocksdb::DB* db = nullptr;
  const auto open_start = Clock::now();
  rocksdb::Status status = rocksdb::DB::Open(db_options, meta_dir, &db);
  raw.open_s = std::chrono::duration<double>(Clock::now() - open_start).count();
  if (!status.ok()) {
    raw.error = status.ToString();
    return raw;
  }
  std::unique_ptr<rocksdb::DB> owned(db);
  const auto scan_start = Clock::now();
  std::unique_ptr<rocksdb::Iterator> it(owned->NewIterator(rocksdb::ReadOptions()));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    raw.bytes += it->key().size() + it->value().size();
    ++raw.records;
  }
  raw.scan_s = std::chrono::duration<double>(Clock::now() - scan_start).count();
  if (!it->status().ok()) raw.error = it->status().ToString();
  return raw;
}

// --scale-chunks: the time of open and of a full listing with `chunks` records.
int run_scale(const std::string& directory, uint64_t chunks) {
  ff::fs::ChunkEngineOptions options;
  options.directory = directory + "/target";
  options.min_block_bytes = 4096;
  options.max_block_bytes = 64 << 10;
  options.preallocate_bytes_per_class = 64 << 20;  // also the step the 4 KiB class grows by
  options.io_contexts = 16;
  std::vector<std::byte> content(4096, std::byte{0x5a});
  auto opened = ChunkEngine::open(options);
  if (!opened.is_ok()) {
    std::fprintf(stderr, "open: %s\n", opened.status().to_string().c_str());
    return 1;
  }
  std::unique_ptr<ChunkEngine> engine = std::move(*opened);
  std::atomic<uint64_t> next_chunk{0};
  std::atomic<uint64_t> failures{0};
  const auto fill_start = Clock::now();
  std::vector<std::thread> writers;
  for (int t = 0; t < 16; ++t) {
    writers.emplace_back([&] {
      for (uint64_t c = next_chunk++; c < chunks; c = next_chunk++) {
        // The tail's path: the pending batch is made durable with the commit.
        ChunkUpdate update{ChunkId{c / 1024 + 1, c % 1024}, 1, 1, 0, content, true};
        update.defer_metadata_sync = true;
        if (!engine->put_pending(update).is_ok() || !engine->commit(update.id, 1).is_ok()) ++failures;
      }
    });
  }
  for (auto& writer : writers) writer.join();
  const double fill_s = std::chrono::duration<double>(Clock::now() - fill_start).count();
  engine.reset();
  const auto open_start = Clock::now();
  opened = ChunkEngine::open(options);
  const double open_s = std::chrono::duration<double>(Clock::now() - open_start).count();
  if (!opened.is_ok()) return 1;
  // A second open: the first one also replayed the fill's RocksDB write-ahead log.
  opened->reset();
  const auto reopen_start = Clock::now();
  opened = ChunkEngine::open(options);
  const double reopen_s = std::chrono::duration<double>(Clock::now() - reopen_start).count();
  if (!opened.is_ok()) return 1;
  engine = std::move(*opened);
  const auto list_start = Clock::now();
  auto listed = engine->list(ChunkId{0, 0}, ChunkId{UINT64_MAX, UINT64_MAX}, UINT64_MAX);
  const double list_s = std::chrono::duration<double>(Clock::now() - list_start).count();
  const uint64_t records = listed.is_ok() ? listed->size() : 0;
  engine.reset();
  const RawScan raw = raw_rocksdb_scan(options.directory + "/meta");
  nlohmann::json line = {{"bench", "fs_chunk_engine"},
                         {"case", "scale"},
                         {"chunks", chunks},
                         {"records_listed", records},
                         {"failures", failures.load()},
                         {"fill_chunks_per_s", static_cast<double>(chunks) / fill_s},
                         {"open_s", open_s},
                         {"reopen_s", reopen_s},
                         {"list_s", list_s},
                         {"list_records_per_s", static_cast<double>(records) / list_s},
                         {"rocksdb_open_s", raw.open_s},
                         {"rocksdb_scan_s", raw.scan_s},
                         {"rocksdb_records", raw.records},
                         {"rocksdb_bytes", raw.bytes},
                         {"reopen_vs_rocksdb_open_and_scan", reopen_s / (raw.open_s + raw.scan_s)},
                         {"list_vs_rocksdb_scan", list_s / raw.scan_s}};
  if (!raw.error.empty()) line["rocksdb_error"] = raw.error;
  print_line(line);
  std::filesystem::remove_all(directory);
  return records == chunks && failures.load() == 0 && raw.error.empty() ? 0 : 1;
}

// Writes the printed lines as one document to `path` (nothing without one); returns `status`, or 1 when the file
// cannot be written.
int write_out(const std::string& path, int status) {
  if (path.empty()) return status;
  nlohmann::json document = {{"benchmark", "fs_chunk_engine: the chunk engine alone beside fio on the same disk"},
                             {"device", fmt::format("{}, {} cores", cpu_model(), std::thread::hardware_concurrency())},
                             {"results", printed}};
  std::ofstream file(path);
  file << document.dump(1) << "\n";
  return file.good() ? status : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"chunk engine micro-benchmark beside fio"};
  std::string directory = "/tmp/ff_chunk_engine_bench";
  std::string out;
  uint64_t chunk_bytes = 4ull << 20;
  uint64_t chunks = 64;
  double seconds = 3;
  std::string fio = "fio";
  std::vector<int> depths = {1, 16, 32};
  std::vector<uint64_t> block_sizes = {4096, 1ull << 20, 4ull << 20};
  bool quick = false;
  uint64_t scale_chunks = 0;
  app.add_option("--dir", directory, "scratch directory on the disk to measure (removed before and after)");
  app.add_option("--out", out, "also write every line into one JSON document here");
  app.add_option("--chunk-bytes", chunk_bytes, "bytes per chunk");
  app.add_option("--chunks", chunks, "chunks in the data set");
  app.add_option("--seconds", seconds, "seconds per case");
  app.add_option("--fio", fio, "fio binary ('' to skip the baseline)");
  app.add_option("--depths", depths, "queue depths (engine threads / fio iodepth)")->delimiter(',');
  app.add_option("--block-sizes", block_sizes, "read block sizes")->delimiter(',');
  app.add_flag("--quick", quick, "only 4 KiB random and 1 MiB sequential reads, plus writes");
  app.add_option("--scale-chunks", scale_chunks, "instead: time open and a full listing with this many chunks");
  CLI11_PARSE(app, argc, argv);
  ff::logger().set_level(spdlog::level::warn);

  std::filesystem::remove_all(directory);
  std::filesystem::create_directories(directory);
  if (scale_chunks > 0) return write_out(out, run_scale(directory, scale_chunks));
  ff::fs::ChunkEngineOptions options;
  options.directory = directory + "/target";
  options.max_block_bytes = std::max<uint64_t>(64ull << 20, chunk_bytes);
  options.preallocate_bytes_per_class = 2 * chunks * chunk_bytes;
  options.io_contexts = 64;
  auto opened = ChunkEngine::open(options);
  if (!opened.is_ok()) {
    std::fprintf(stderr, "open: %s\n", opened.status().to_string().c_str());
    return 1;
  }
  std::unique_ptr<ChunkEngine> engine = std::move(*opened);
  const auto stats = engine->stats();
  std::fprintf(stderr, "engine: direct_io=%d io_uring=%d\n", stats.direct_io, stats.io_uring);

  // The data set, also the sequential full-chunk write case (qd = 1 writer per chunk stream).
  std::vector<std::byte> content(chunk_bytes);
  std::mt19937_64 random(42);
  for (auto& byte : content) byte = static_cast<std::byte>(random() & 0xFF);
  const int fill_depth = 16;
  std::atomic<uint64_t> next_chunk{0};
  const auto fill_start = Clock::now();
  {
    std::vector<std::thread> writers;
    for (int t = 0; t < fill_depth; ++t) {
      writers.emplace_back([&] {
        for (uint64_t c = next_chunk++; c < chunks; c = next_chunk++) {
          ChunkUpdate update{ChunkId{1, c}, 1, 1, 0, content, true};
          if (!engine->put_pending(update).is_ok() || !engine->commit(update.id, 1).is_ok()) std::abort();
        }
      });
    }
    for (auto& writer : writers) writer.join();
  }
  Measured fill;
  fill.seconds = std::chrono::duration<double>(Clock::now() - fill_start).count();
  fill.operations = chunks;
  fill.bytes = chunks * chunk_bytes;

  // fio's file: the same size, in the same directory.
  const std::string fio_file = directory + "/fio.data";
  const uint64_t file_bytes = chunks * chunk_bytes;
  const std::string engine_file = fmt::format("{}/blocks.{}", options.directory, std::bit_ceil(chunk_bytes));
  print_case("write_new_chunk", "seq", chunk_bytes, fill_depth, fill,
             run_fio(fio, fio_file, file_bytes, "write", chunk_bytes, fill_depth, seconds),
             "put_pending(full chunk) + commit per chunk vs fio sequential O_DSYNC writes");

  std::vector<std::unique_ptr<AlignedBuffer>> buffers;
  for (int t = 0; t < 64; ++t)
    buffers.push_back(std::make_unique<AlignedBuffer>(std::max<uint64_t>(chunk_bytes, 4ull << 20)));

  for (uint64_t block_bytes : block_sizes) {
    if (block_bytes > chunk_bytes) continue;
    for (const char* pattern : {"rand", "seq"}) {
      if (quick && !((block_bytes == 4096 && pattern[0] == 'r') || (block_bytes == (1u << 20) && pattern[0] == 's')))
        continue;
      const bool sequential = pattern[0] == 's';
      for (int depth : depths) {
        const uint64_t blocks_per_chunk = chunk_bytes / block_bytes;
        const uint64_t total_blocks = blocks_per_chunk * chunks;
        std::vector<std::mt19937_64> generators;
        for (int t = 0; t < depth; ++t) generators.emplace_back(static_cast<uint64_t>(t) * 7919 + 1);
        const Measured measured = run_threads(depth, seconds, [&](int t, uint64_t i) -> int64_t {
          uint64_t block =
              sequential ? (static_cast<uint64_t>(t) * (total_blocks / static_cast<uint64_t>(depth)) + i) % total_blocks
                         : generators[static_cast<size_t>(t)]() % total_blocks;
          const ChunkId id{1, block / blocks_per_chunk};
          const uint64_t offset = (block % blocks_per_chunk) * block_bytes;
          auto result = engine->read_into(id, offset, buffers[static_cast<size_t>(t)]->span().first(block_bytes),
                                          ReadMode::kStrict);
          return result.is_ok() ? static_cast<int64_t>(result->bytes_read) : -1;
        });
        // NOTE: fio reads the engine's own class file (the chunks are its first `chunks` blocks), so both
        // read the same bytes at the same disk offsets (and the same host-side caching, on a VM disk).
        print_case(
            "read", pattern, block_bytes, depth, measured,
            run_fio(fio, engine_file, file_bytes, sequential ? "read" : "randread", block_bytes, depth, seconds));
      }
    }
  }

  // Writes. Appends of 1 MiB take the in-place path; 4 KiB overwrites inside a chunk are copy-on-write
  // of the whole chunk (the engine's documented cost).
  for (int depth : {1, 16}) {
    const uint64_t inode_base = 1000 * static_cast<uint64_t>(depth);  // fresh chunks for every depth
    std::vector<uint32_t> versions(64, 1);
    std::vector<uint64_t> lengths(64, 0);
    const uint64_t append_bytes = 1ull << 20;
    const uint64_t appends_per_chunk = chunk_bytes / append_bytes;
    std::vector<uint64_t> chunk_index(64, 0);
    const Measured appends = run_threads(depth, seconds, [&](int t, uint64_t) -> int64_t {
      const size_t slot = static_cast<size_t>(t);
      if (lengths[slot] + append_bytes > chunk_bytes) {
        ++chunk_index[slot];
        lengths[slot] = 0;
        versions[slot] = 1;
      }
      const ChunkId id{inode_base + slot, chunk_index[slot]};
      ChunkUpdate update{
          id,    versions[slot], 1, lengths[slot], std::span<const std::byte>(content).first(append_bytes),
          false, chunk_bytes};
      if (!engine->put_pending(update).is_ok() || !engine->commit(id, versions[slot]).is_ok()) return -1;
      ++versions[slot];
      lengths[slot] += append_bytes;
      return static_cast<int64_t>(append_bytes);
    });
    (void)appends_per_chunk;
    print_case("append", "seq", append_bytes, depth, appends,
               run_fio(fio, fio_file, file_bytes, "write", append_bytes, depth, seconds),
               "in-place append path (put_pending + commit) vs fio sequential O_DSYNC writes");
    std::vector<uint32_t> overwrite_versions(chunks, 1);
    for (uint64_t c = 0; c < chunks; ++c) overwrite_versions[c] = engine->stat(ChunkId{1, c})->committed_version;
    std::vector<std::mt19937_64> generators;
    for (int t = 0; t < depth; ++t) generators.emplace_back(static_cast<uint64_t>(t) + 99);
    const Measured overwrites = run_threads(depth, seconds, [&](int t, uint64_t) -> int64_t {
      // Each thread owns the chunks c with c % depth == t, so writes to one chunk stay serialised.
      const uint64_t owned = chunks / static_cast<uint64_t>(depth);
      if (owned == 0) return -1;
      const uint64_t c =
          (generators[static_cast<size_t>(t)]() % owned) * static_cast<uint64_t>(depth) + static_cast<uint64_t>(t);
      const uint64_t offset = (generators[static_cast<size_t>(t)]() % (chunk_bytes / 4096)) * 4096;
      const uint32_t version = overwrite_versions[c] + 1;
      ChunkUpdate update{ChunkId{1, c}, version, 1, offset, std::span<const std::byte>(content).first(4096), false};
      if (!engine->put_pending(update).is_ok() || !engine->commit(update.id, version).is_ok()) return -1;
      overwrite_versions[c] = version;
      return 4096;
    });
    print_case("overwrite", "rand", 4096, depth, overwrites,
               run_fio(fio, fio_file, file_bytes, "randwrite", 4096, depth, seconds),
               "a 4 KiB patch per update (kept in the pending record, applied in place after the commit by the settler) + "
               "commit vs fio random O_DSYNC writes");
    // The same through each thread's chunks front to back: each update lands next to the previous one's patch,
    // which the settler has usually not applied yet, and takes it in (docs/fs-chunk-engine.md, "Merged patches").
    std::vector<uint64_t> cursors(static_cast<size_t>(depth), 0);
    const ff::fs::ChunkEngineStats before_seq = engine->stats();
    const Measured sequential = run_threads(depth, seconds, [&](int t, uint64_t) -> int64_t {
      const uint64_t owned = chunks / static_cast<uint64_t>(depth);
      if (owned == 0) return -1;
      uint64_t& cursor = cursors[static_cast<size_t>(t)];
      const uint64_t blocks_per_chunk = chunk_bytes / 4096;
      const uint64_t c = (cursor / blocks_per_chunk % owned) * static_cast<uint64_t>(depth) + static_cast<uint64_t>(t);
      const uint64_t offset = (cursor % blocks_per_chunk) * 4096;
      ++cursor;
      const uint32_t version = overwrite_versions[c] + 1;
      ChunkUpdate update{ChunkId{1, c}, version, 1, offset, std::span<const std::byte>(content).first(4096), false};
      if (!engine->put_pending(update).is_ok() || !engine->commit(update.id, version).is_ok()) return -1;
      overwrite_versions[c] = version;
      return 4096;
    });
    const ff::fs::ChunkEngineStats after_seq = engine->stats();
    print_case(
        "overwrite", "seq", 4096, depth, sequential, run_fio(fio, fio_file, file_bytes, "write", 4096, depth, seconds),
        fmt::format("4 KiB updates front to back through a chunk: {} of {} merged into the unapplied patch before "
                    "them + commit vs fio sequential O_DSYNC writes",
                    after_seq.merged_patches - before_seq.merged_patches,
                    after_seq.patched_writes - before_seq.patched_writes));
  }
  // Context-pool strategy: the same 4 KiB random reads with one shared context (all calls serialised on
  // one ring) and with pread instead of io_uring.
  for (const auto& [label, contexts, uring] :
       {std::tuple<const char*, uint32_t, bool>{"pool_1_context", 1, true},
        std::tuple<const char*, uint32_t, bool>{"pread_64_contexts", 64, false}}) {
    engine.reset();
    ff::fs::ChunkEngineOptions variant = options;
    variant.io_contexts = contexts;
    variant.use_io_uring = uring;
    auto reopened = ChunkEngine::open(variant);
    if (!reopened.is_ok()) return 1;
    engine = std::move(*reopened);
    const int depth = 16;
    std::vector<std::mt19937_64> generators;
    for (int t = 0; t < depth; ++t) generators.emplace_back(static_cast<uint64_t>(t) * 31 + 5);
    const uint64_t total_blocks = chunk_bytes / 4096 * chunks;
    const Measured measured = run_threads(depth, seconds, [&](int t, uint64_t) -> int64_t {
      const uint64_t block = generators[static_cast<size_t>(t)]() % total_blocks;
      auto result = engine->read_into(ChunkId{1, block / (chunk_bytes / 4096)}, (block % (chunk_bytes / 4096)) * 4096,
                                      buffers[static_cast<size_t>(t)]->span().first(4096), ReadMode::kStrict);
      return result.is_ok() ? static_cast<int64_t>(result->bytes_read) : -1;
    });
    print_case(std::string("read_") + label, "rand", 4096, depth, measured, {0, 0});
  }
  engine.reset();
  std::filesystem::remove_all(directory);
  return write_out(out, 0);
}
