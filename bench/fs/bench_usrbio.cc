// fs_usrbio_bench: many reads per doorbell through a usrbio ring, beside the same reads through
// FileClient directly (one read() per block, and one read_batch per batch), through pread(2) on an
// ff-fuse mount, and through a ring served by that ff-fuse daemon (when it serves .ff/usrbio).
// One JSON line per case. Driven by bench/fs/bench_usrbio.py (which starts the cluster and the mount).
//
//   fs_usrbio_bench --mgmtd 127.0.0.1:9000 --meta 127.0.0.1:9100 --path /bench/usrbio.dat
//       --mount /tmp/x/mnt --block 1048576 --per-doorbell 64 --seconds 3
//
// Every case reads the same pseudo-random block-aligned offsets of one file (seeded); the data of the
// first batch of every case is checked against the file's expected content (byte i = f(i)).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "ff/common/log.h"
#include "ff/fs/file_client.h"
#include "ff/fs/meta_rpc.h"
#include "ff/fs/usrbio.h"

namespace {

using namespace ff;
using namespace ff::fs;
using Clock = std::chrono::steady_clock;

// The file's expected byte at position i (the driver writes the same function).
inline uint8_t expected_byte(uint64_t i) { return static_cast<uint8_t>((i * 2654435761ull) >> 13); }

struct Args {
  std::string mgmtd;
  std::string meta;
  std::string path;
  std::string mount;
  uint64_t block = 1 << 20;
  uint32_t per_doorbell = 64;
  double seconds = 3;
  uint32_t pread_threads = 8;
  std::string cases =
      "fileclient_read,fileclient_read_batch,usrbio_inprocess,usrbio_depth4_serial,usrbio_depth4_parallel,fuse_pread,"
      "fuse_pread_threads,usrbio_fuse";
  uint64_t seed = 1;
  uint32_t read_rpcs_per_node = FileClientConfig{}.read_rpcs_per_node;
  uint32_t read_queue_depth = FileClientConfig{}.read_queue_depth;
};

struct Measure {
  uint64_t ios = 0;
  uint64_t bytes = 0;
  double seconds = 0;
  uint64_t bad = 0;  // blocks whose content did not match (first batch only)
  std::string note;
};

bool check_block(const std::byte* data, uint64_t file_offset, uint64_t length) {
  for (uint64_t i = 0; i < length; i += 4093) {  // a sample of every block: cheap, catches misplacement
    if (static_cast<uint8_t>(data[i]) != expected_byte(file_offset + i)) return false;
  }
  return static_cast<uint8_t>(data[length - 1]) == expected_byte(file_offset + length - 1);
}

class Offsets {
 public:
  Offsets(uint64_t file_size, uint64_t block, uint64_t seed) : blocks_(file_size / block), block_(block), rng_(seed) {}
  uint64_t next() { return (rng_() % blocks_) * block_; }

 private:
  uint64_t blocks_, block_;
  std::mt19937_64 rng_;
};

// Runs `batch(first)` until `seconds` passed; each call does one batch of per_doorbell reads.
template <typename Batch>
Measure run_for(double seconds, uint32_t per_doorbell, uint64_t block, Batch batch) {
  Measure m;
  const auto start = Clock::now();
  bool first = true;
  while (std::chrono::duration<double>(Clock::now() - start).count() < seconds) {
    const uint64_t bad = batch(first);
    if (bad == UINT64_MAX) {
      m.note = "failed";
      break;
    }
    m.bad += bad;
    first = false;
    m.ios += per_doorbell;
    m.bytes += per_doorbell * block;
  }
  m.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return m;
}

void emit(const Args& args, const std::string& name, const Measure& m, const std::string& via) {
  nlohmann::json line;
  line["bench"] = "fs_usrbio";
  line["case"] = name;
  line["via"] = via;
  line["block_bytes"] = args.block;
  line["per_doorbell"] = args.per_doorbell;
  line["ios"] = m.ios;
  line["seconds"] = std::round(m.seconds * 1000) / 1000;
  line["MB_per_s"] = m.seconds > 0 ? std::round(m.bytes / m.seconds / 1e6 * 10) / 10 : 0.0;
  line["iops"] = m.seconds > 0 ? std::round(m.ios / m.seconds) : 0.0;
  line["bad_blocks"] = m.bad;
  if (!m.note.empty()) line["note"] = m.note;
  std::printf("%s\n", line.dump().c_str());
  std::fflush(stdout);
}

// A BatchIo that moves no data: what is left is the ring's own cost (doorbell, wake-up, copies of
// entries and completions, validation).
class NullBatchIo final : public usrbio::BatchIo {
 public:
  Result<FileHandle> open(const meta::Caller&, meta::InodeId inode, uint32_t) override { return inode; }
  Status close(FileHandle) override { return Status::ok(); }
  std::vector<Result<size_t>> read_batch(std::span<const ReadOp> ops) override {
    std::vector<Result<size_t>> results;
    results.reserve(ops.size());
    for (const ReadOp& op : ops) results.emplace_back(op.out.size());
    return results;
  }
  std::vector<Result<size_t>> write_batch(std::span<const WriteOp> ops) override {
    std::vector<Result<size_t>> results;
    results.reserve(ops.size());
    for (const WriteOp& op : ops) results.emplace_back(op.data.size());
    return results;
  }
};

// The ring alone: doorbells per second and round-trip latency (submit -> all completions reaped) for a
// few batch sizes, over NullBatchIo in this process (the futex wake-ups are the same across processes).
int run_ring_overhead(const Args& args) {
  NullBatchIo io;
  for (uint32_t per_doorbell : {1u, 16u, 256u}) {
    const std::string name = fmt::format("bench{}-null{}", ::getpid(), per_doorbell);
    auto iov = usrbio::Iov::create(name, 1 << 20);
    auto ior = iov.is_ok() ? usrbio::Ior::create(name, *iov, {.entries = 256}) : Result<usrbio::Ior>(iov.status());
    if (!ior.is_ok()) {
      FF_LOG_ERROR("{}", ior.status().to_string());
      return 2;
    }
    auto server = usrbio::RingServer::start(name, io, {});
    if (!server.is_ok()) {
      FF_LOG_ERROR("{}", server.status().to_string());
      return 2;
    }
    std::vector<usrbio::Completion> done(256);
    std::vector<double> round_trip_us;
    uint64_t entries = 0;
    const auto start = Clock::now();
    while (std::chrono::duration<double>(Clock::now() - start).count() < args.seconds) {
      const auto t0 = Clock::now();
      for (uint32_t i = 0; i < per_doorbell; ++i) (void)ior->prep_read(1, 0, 4096, (i % 256) * 4096, i);
      (void)ior->submit();
      uint32_t reaped = 0;
      while (reaped < per_doorbell) {
        auto got = ior->wait_for_ios(std::span(done).first(per_doorbell - reaped), 1, 10'000);
        if (!got.is_ok()) {
          FF_LOG_ERROR("{}", got.status().to_string());
          return 2;
        }
        reaped += static_cast<uint32_t>(*got);
      }
      round_trip_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
      entries += per_doorbell;
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    std::sort(round_trip_us.begin(), round_trip_us.end());
    nlohmann::json line;
    line["bench"] = "fs_usrbio";
    line["case"] = "ring_overhead";
    line["via"] = "in-process RingServer over a BatchIo that moves no data";
    line["per_doorbell"] = per_doorbell;
    line["doorbells"] = round_trip_us.size();
    line["entries_per_s"] = std::round(entries / seconds);
    line["round_trip_p50_us"] = std::round(round_trip_us[round_trip_us.size() / 2] * 10) / 10;
    line["round_trip_p99_us"] = std::round(round_trip_us[round_trip_us.size() * 99 / 100] * 10) / 10;
    std::printf("%s\n", line.dump().c_str());
    std::fflush(stdout);
  }
  return 0;
}

int run(const Args& args) {
  meta::RemoteMetaOptions meta_options;
  meta_options.addresses = {args.meta};
  auto remote = meta::RemoteMeta::connect(meta_options);
  if (!remote.is_ok()) {
    FF_LOG_ERROR("{}", remote.status().to_string());
    return 2;
  }
  FileClientConfig config;
  config.mgmtd_address = args.mgmtd;
  config.max_parallel_chunks = std::max<uint32_t>(16, args.per_doorbell);
  config.read_rpcs_per_node = args.read_rpcs_per_node;
  config.read_queue_depth = args.read_queue_depth;
  auto client = FileClient::connect(config, **remote);
  if (!client.is_ok()) {
    FF_LOG_ERROR("{}", client.status().to_string());
    return 2;
  }
  const meta::Caller root{};
  auto inode = (*remote)->resolve(root, args.path);
  if (!inode.is_ok()) {
    FF_LOG_ERROR("{}", inode.status().to_string());
    return 2;
  }
  const uint64_t file_size = inode->length;
  if (file_size < args.block * 4) {
    FF_LOG_ERROR("{} has {} bytes; need at least 4 blocks of {}", args.path, file_size, args.block);
    return 2;
  }
  auto handle = (*client)->open(root, inode->id, meta::kOpenRead);
  if (!handle.is_ok()) {
    FF_LOG_ERROR("{}", handle.status().to_string());
    return 2;
  }
  const uint32_t n = args.per_doorbell;
  const uint64_t block = args.block;
  std::vector<std::byte> buffer(n * block);
  auto want = [&](std::string_view name) { return args.cases.find(name) != std::string::npos; };

  if (want("fileclient_read,") || args.cases.ends_with("fileclient_read")) {
    Offsets offsets(file_size, block, args.seed);
    auto m = run_for(args.seconds, n, block, [&](bool first) -> uint64_t {
      uint64_t bad = 0;
      for (uint32_t i = 0; i < n; ++i) {
        const uint64_t offset = offsets.next();
        auto got = (*client)->read(*handle, offset, std::span(buffer).subspan(i * block, block));
        if (!got.is_ok() || *got != block) return UINT64_MAX;
        if (first && !check_block(buffer.data() + i * block, offset, block)) ++bad;
      }
      return bad;
    });
    emit(args, "fileclient_read", m, "FileClient::read, one block per call (queue depth 1)");
  }
  if (want("fileclient_read_batch")) {
    Offsets offsets(file_size, block, args.seed);
    std::vector<FileClient::ReadOp> ops(n);
    std::vector<uint64_t> at(n);
    auto m = run_for(args.seconds, n, block, [&](bool first) -> uint64_t {
      for (uint32_t i = 0; i < n; ++i) {
        at[i] = offsets.next();
        ops[i] = {.handle = *handle, .offset = at[i], .out = std::span(buffer).subspan(i * block, block)};
      }
      auto results = (*client)->read_batch(ops);
      uint64_t bad = 0;
      for (uint32_t i = 0; i < n; ++i) {
        if (!results[i].is_ok() || *results[i] != block) return UINT64_MAX;
        if (first && !check_block(buffer.data() + i * block, at[i], block)) ++bad;
      }
      return bad;
    });
    emit(args, "fileclient_read_batch", m, "FileClient::read_batch, per_doorbell reads per call");
  }

  // A ring served either in this process (over this FileClient) or by the ff-fuse daemon; in-process, with
  // the ring's io_depth and the server's max_batches_in_flight given.
  auto ring_case = [&](const std::string& name, bool through_fuse, int32_t io_depth = 0, uint32_t batches = 4) {
    const std::string ring_name = fmt::format("bench{}-{}", ::getpid(), name);
    (void)usrbio::Iov::remove_stale(ring_name);
    auto iov = usrbio::Iov::create(ring_name, n * block);
    if (!iov.is_ok()) {
      FF_LOG_ERROR("{}", iov.status().to_string());
      return;
    }
    uint32_t entries = 2;
    while (entries < n) entries *= 2;
    auto ior = usrbio::Ior::create(ring_name, *iov, {.entries = entries, .io_depth = io_depth});
    if (!ior.is_ok()) {
      FF_LOG_ERROR("{}", ior.status().to_string());
      return;
    }
    usrbio::FileClientBatchIo io(**client);
    std::unique_ptr<usrbio::RingServer> server;
    usrbio::FileId file = inode->id;
    int fd = -1;
    if (through_fuse) {
      const std::string dir = args.mount + "/" + std::string(usrbio::kVirtualDir);
      struct stat info {};
      if (args.mount.empty() || ::stat(dir.c_str(), &info) != 0) {
        Measure skipped;
        skipped.note = "skipped: the mount does not serve " + std::string(usrbio::kVirtualDir) +
                       " (ff-fuse without the usrbio registry)";
        emit(args, name, skipped, "ring served by ff-fuse");
        return;
      }
      Status registered = ior->register_with_mount(args.mount);
      if (!registered.is_ok()) {
        FF_LOG_ERROR("{}", registered.to_string());
        return;
      }
      fd = ::open((args.mount + args.path).c_str(), O_RDONLY);
      auto id = usrbio::register_fd(fd, args.mount);
      if (!id.is_ok()) {
        FF_LOG_ERROR("{}", id.status().to_string());
        return;
      }
      file = *id;
    } else {
      auto started = usrbio::RingServer::start(ring_name, io, {.max_batches_in_flight = batches});
      if (!started.is_ok()) {
        FF_LOG_ERROR("{}", started.status().to_string());
        return;
      }
      server = std::move(*started);
    }
    Offsets offsets(file_size, block, args.seed);
    std::vector<uint64_t> at(n);
    std::vector<usrbio::Completion> done(entries);
    auto m = run_for(args.seconds, n, block, [&](bool first) -> uint64_t {
      for (uint32_t i = 0; i < n; ++i) {
        at[i] = offsets.next();
        if (!ior->prep_read(file, at[i], block, i * block, i).is_ok()) return UINT64_MAX;
      }
      if (!ior->submit().is_ok()) return UINT64_MAX;
      uint32_t reaped = 0;
      uint64_t bad = 0;
      while (reaped < n) {
        auto got = ior->wait_for_ios(std::span(done).first(n - reaped), 1, 30'000);
        if (!got.is_ok()) {
          FF_LOG_ERROR("{}", got.status().to_string());
          return UINT64_MAX;
        }
        for (size_t k = 0; k < *got; ++k) {
          if (done[k].result != static_cast<int64_t>(block)) return UINT64_MAX;
          const uint64_t i = done[k].user_data;
          if (first && !check_block(iov->data() + i * block, at[i], block)) ++bad;
        }
        reaped += static_cast<uint32_t>(*got);
      }
      return bad;
    });
    if (server) {
      const auto stats = server->stats();
      m.note = fmt::format("server wake-ups {}, largest batch {}", stats.wakeups, stats.max_batch_entries);
    }
    emit(args, name, m,
         through_fuse ? "ring served by ff-fuse"
                      : fmt::format("ring served in-process over FileClient, io_depth {}, {} batch(es) at once",
                                    io_depth, batches));
    if (fd >= 0) ::close(fd);
  };
  if (want("usrbio_inprocess")) ring_case("usrbio_inprocess", false);
  // The same doorbells cut into batches of 4 (io_depth 4): one batch at a time, then four at once.
  if (want("usrbio_depth4_serial") && n % 4 == 0) ring_case("usrbio_depth4_serial", false, 4, 1);
  if (want("usrbio_depth4_parallel") && n % 4 == 0) ring_case("usrbio_depth4_parallel", false, 4, 4);

  auto pread_case = [&](const std::string& name, uint32_t threads) {
    if (args.mount.empty()) return;
    const std::string file = args.mount + args.path;
    Offsets offsets(file_size, block, args.seed);
    std::vector<uint64_t> at(n);
    auto m = run_for(args.seconds, n, block, [&](bool first) -> uint64_t {
      for (uint32_t i = 0; i < n; ++i) at[i] = offsets.next();
      std::atomic<uint64_t> bad{0};
      std::atomic<bool> failed{false};
      std::atomic<uint32_t> next{0};
      auto worker = [&] {
        const int fd = ::open(file.c_str(), O_RDONLY);
        if (fd < 0) {
          failed = true;
          return;
        }
        for (uint32_t i = next++; i < n; i = next++) {
          std::byte* out = buffer.data() + i * block;
          uint64_t done = 0;
          while (done < block) {
            const ssize_t got = ::pread(fd, out + done, block - done, static_cast<off_t>(at[i] + done));
            if (got <= 0) {
              failed = true;
              break;
            }
            done += static_cast<uint64_t>(got);
          }
          if (first && !check_block(out, at[i], block)) ++bad;
        }
        ::close(fd);
      };
      std::vector<std::thread> pool;
      for (uint32_t t = 1; t < threads; ++t) pool.emplace_back(worker);
      worker();
      for (auto& thread : pool) thread.join();
      return failed ? UINT64_MAX : bad.load();
    });
    emit(args, name, m, fmt::format("pread(2) on the ff-fuse mount, {} thread(s)", threads));
  };
  if (want("fuse_pread,") || args.cases.ends_with("fuse_pread")) pread_case("fuse_pread", 1);
  if (want("fuse_pread_threads")) pread_case("fuse_pread_threads", args.pread_threads);
  if (want("usrbio_fuse")) ring_case("usrbio_fuse", true);
  (void)(*client)->close(*handle);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("fs_usrbio_bench: reads per doorbell through usrbio rings vs FileClient and FUSE read(2)");
  Args args;
  app.add_option("--mgmtd", args.mgmtd, "mgmtd address");
  app.add_option("--meta", args.meta, "ff-meta address");
  app.add_option("--path", args.path, "file path in the file system (and under --mount)");
  app.add_option("--mount", args.mount, "ff-fuse mount point (FUSE cases are skipped without it)");
  app.add_option("--block", args.block, "bytes per read");
  app.add_option("--per-doorbell", args.per_doorbell, "reads per doorbell / batch");
  app.add_option("--seconds", args.seconds, "seconds per case");
  app.add_option("--pread-threads", args.pread_threads, "threads of the fuse_pread_threads case");
  app.add_option("--cases", args.cases, "comma-separated cases");
  app.add_option("--seed", args.seed, "offsets seed");
  app.add_option("--read-queue-depth", args.read_queue_depth,
                 "FileClientConfig::read_queue_depth of the in-process client (0: a batch's reads of kept chunks one "
                 "after the other)");
  app.add_option("--read-rpcs-per-node", args.read_rpcs_per_node,
                 "FileClientConfig::read_rpcs_per_node of the in-process client (0: no read coalescing)");
  bool ring_overhead = false;
  app.add_flag("--ring-overhead", ring_overhead, "measure the ring alone (no cluster; other options unused)");
  CLI11_PARSE(app, argc, argv);
  if (ring_overhead) return run_ring_overhead(args);
  if (args.mgmtd.empty() || args.meta.empty() || args.path.empty()) {
    std::fprintf(stderr, "--mgmtd, --meta and --path are required (or --ring-overhead)\n");
    return 2;
  }
  return run(args);
}
