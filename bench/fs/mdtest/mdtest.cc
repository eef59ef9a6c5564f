// An mdtest-like benchmark of the metadata service: N threads each create F files in a directory of
// their own (or one shared directory), stat them, list the directory, and unlink them; the same four
// phases run on the local file system (a scratch directory on the same disk) as the baseline. The
// service is either the library in this process (--kv rocksdb|memory) or ff-meta servers over gRPC
// (--meta host:port[,host:port]: RemoteMeta, --clients gRPC channels shared by the threads).
// One JSON line per phase; --out writes them all as one JSON document.
//
//   fs_mdtest --threads 8 --files 2000 --kv rocksdb --sync 1 --scratch /tmp --out bench/results/fs_meta_cpu.json
//   fs_mdtest --threads 64 --files 300 --meta 127.0.0.1:9300 --clients 4
//   fs_mdtest --threads 16 --files 300 --paths-only /mnt/ff --stat-again-after-s 1.5   (the path phases alone, on
//   any directory: a FUSE mount, say; the stat phase again once the kernel's 1 s caches have expired)
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "ff/fs/kv_engines.h"
#include "ff/fs/meta.h"
#ifdef FF_MDTEST_RPC
#include "ff/fs/meta_rpc.h"
#endif

namespace {

using ff::fs::meta::Caller;
using ff::fs::meta::InodeId;
using ff::fs::meta::MetaApi;
using ff::fs::meta::MetaService;

const Caller kCaller{0, 0, {}};

struct Options {
  int threads = 4;
  int files = 1000;
  std::string kv = "rocksdb";
  bool sync = true;
  bool shared_dir = false;
  std::string scratch = "/tmp";
  std::string out;
  std::vector<std::string> meta;  // ff-meta addresses: benchmark over gRPC instead of in-process
  int clients = 1;                // RemoteMeta instances (gRPC channels) the threads share
  int batches = 2;                // RemoteMetaOptions::batches_in_flight
  std::string paths_only;         // run only the path phases (create, stat, readdir, unlink) in this directory
  double stat_again_after_s = 0;  // > 0: the stat phase again after this pause (a mount's caches expired)
};

// Runs body(thread) on every thread; returns the seconds from the first start to the last finish.
double timed(int threads, const std::function<void(int)>& body) {
  auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) workers.emplace_back(body, t);
  for (auto& worker : workers) worker.join();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::string file_name(int thread, int index) { return "file." + std::to_string(thread) + "." + std::to_string(index); }

struct PhaseTimes {
  double create = 0, stat = 0, stat_again = 0, readdir = 0, unlink = 0;
  std::atomic<int> errors{0};
};

// apis[t % apis.size()] serves thread t.
void run_meta(const Options& options, const std::vector<MetaApi*>& apis, PhaseTimes* times) {
  MetaApi& meta = *apis.front();
  std::vector<InodeId> dirs(static_cast<size_t>(options.threads));
  auto top = meta.mkdir(kCaller, ff::fs::meta::kRootInode, "mdtest." + std::to_string(::getpid()), 0755);
  if (!top.is_ok()) {
    std::fprintf(stderr, "mkdir: %s\n", top.status().to_string().c_str());
    std::exit(1);
  }
  for (int t = 0; t < options.threads; ++t) {
    if (options.shared_dir) {
      dirs[static_cast<size_t>(t)] = top->id;
    } else {
      auto dir = meta.mkdir(kCaller, top->id, "dir." + std::to_string(t), 0755);
      if (!dir.is_ok()) std::exit(1);
      dirs[static_cast<size_t>(t)] = dir->id;
    }
  }
  auto check = [&](const ff::Status& status) {
    if (!status.is_ok()) {
      if (times->errors.fetch_add(1) < 5) std::fprintf(stderr, "error: %s\n", status.to_string().c_str());
    }
  };
  times->create = timed(options.threads, [&](int t) {
    MetaApi& api = *apis[static_cast<size_t>(t) % apis.size()];
    for (int i = 0; i < options.files; ++i) check(api.create(kCaller, dirs[t], file_name(t, i), 0644).status());
  });
  times->stat = timed(options.threads, [&](int t) {
    MetaApi& api = *apis[static_cast<size_t>(t) % apis.size()];
    for (int i = 0; i < options.files; ++i) check(api.lookup(kCaller, dirs[t], file_name(t, i)).status());
  });
  times->readdir = timed(options.threads, [&](int t) {
    std::string cursor;
    size_t seen = 0;
    while (true) {
      auto page = apis[static_cast<size_t>(t) % apis.size()]->readdir(kCaller, dirs[t], cursor, 1024);
      check(page.status());
      if (!page.is_ok()) break;
      seen += page->entries.size();
      if (!page->more) break;
      cursor = page->entries.back().name;
    }
    size_t expected = static_cast<size_t>(options.files) * (options.shared_dir ? options.threads : 1);
    if (seen != expected) check(ff::internal_error("readdir saw {} entries, expected {}", seen, expected));
  });
  times->unlink = timed(options.threads, [&](int t) {
    MetaApi& api = *apis[static_cast<size_t>(t) % apis.size()];
    for (int i = 0; i < options.files; ++i) check(api.unlink(kCaller, dirs[t], file_name(t, i)));
  });
}

void run_local(const Options& options, const std::string& root, PhaseTimes* times) {
  std::vector<std::string> dirs;
  for (int t = 0; t < options.threads; ++t) {
    dirs.push_back(options.shared_dir ? root : root + "/dir." + std::to_string(t));
    std::filesystem::create_directories(dirs.back());
  }
  auto fail = [&](const char* what) {
    if (times->errors.fetch_add(1) < 5) std::perror(what);
  };
  times->create = timed(options.threads, [&](int t) {
    for (int i = 0; i < options.files; ++i) {
      std::string path = dirs[t] + "/" + file_name(t, i);
      int fd = ::open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644);
      if (fd < 0) {
        fail("open");
        continue;
      }
      ::close(fd);
    }
  });
  auto stat_all = [&](int t) {
    struct stat st;
    for (int i = 0; i < options.files; ++i) {
      std::string path = dirs[t] + "/" + file_name(t, i);
      if (::stat(path.c_str(), &st) != 0) fail("stat");
    }
  };
  times->stat = timed(options.threads, stat_all);
  if (options.stat_again_after_s > 0) {
    std::this_thread::sleep_for(std::chrono::duration<double>(options.stat_again_after_s));
    times->stat_again = timed(options.threads, stat_all);
  }
  times->readdir = timed(options.threads, [&](int t) {
    DIR* dir = ::opendir(dirs[t].c_str());
    if (dir == nullptr) return fail("opendir");
    size_t seen = 0;
    while (struct dirent* entry = ::readdir(dir)) seen += entry->d_name[0] != '.';
    ::closedir(dir);
    (void)seen;
  });
  times->unlink = timed(options.threads, [&](int t) {
    for (int i = 0; i < options.files; ++i) {
      std::string path = dirs[t] + "/" + file_name(t, i);
      if (::unlink(path.c_str()) != 0) fail("unlink");
    }
  });
}

// The path phases alone in <paths_only>/ff-mdtest-<pid>: one JSON line per phase.
int run_paths_only(const Options& options) {
  const std::string root = options.paths_only + "/ff-mdtest-" + std::to_string(::getpid());
  PhaseTimes times;
  run_local(options, root, &times);
  std::error_code ignored;
  std::filesystem::remove_all(root, ignored);
  const double ops = static_cast<double>(options.threads) * options.files;
  auto emit = [&](const char* phase, double seconds) {
    nlohmann::json line = {{"bench", "fs_mdtest_paths"},
                           {"path", options.paths_only},
                           {"phase", phase},
                           {"threads", options.threads},
                           {"files_per_thread", options.files},
                           {"shared_dir", options.shared_dir},
                           {"ops", ops},
                           {"ops_per_s", ops / seconds},
                           {"errors", times.errors.load()}};
    std::printf("%s\n", line.dump().c_str());
  };
  emit("create", times.create);
  emit("stat", times.stat);
  if (options.stat_again_after_s > 0) emit("stat_again", times.stat_again);
  emit("readdir_entries", times.readdir);
  emit("unlink", times.unlink);
  return times.errors.load() == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  CLI::App app{"mdtest-like metadata benchmark: the fs meta library vs the local file system"};
  app.add_option("--threads", options.threads, "client threads")->check(CLI::Range(1, 256));
  app.add_option("--files", options.files, "files per thread")->check(CLI::Range(1, 1'000'000));
  app.add_option("--kv", options.kv, "KV engine: rocksdb or memory")->check(CLI::IsMember({"rocksdb", "memory"}));
  app.add_option("--sync", options.sync, "RocksDB: fsync the WAL on every commit (1) or not (0)");
  app.add_flag("--shared-dir", options.shared_dir, "all threads in one directory (mdtest without -u)");
  app.add_option("--scratch", options.scratch, "directory for the RocksDB store and the local-fs baseline");
  app.add_option("--out", options.out, "also write every line as one JSON document here");
#ifdef FF_MDTEST_RPC
  app.add_option("--meta", options.meta,
                 "ff-meta addresses (host:port: gRPC, tcp://host:port: our TCP transport; comma-separated)")
      ->delimiter(',');
  app.add_option("--batches", options.batches,
                 "RemoteMeta batches in flight before concurrent calls share one (0: one RPC each)")
      ->check(CLI::Range(0, 64));
  app.add_option("--clients", options.clients, "RemoteMeta instances (gRPC channels) shared by the threads")
      ->check(CLI::Range(1, 256));
#endif
  app.add_option("--paths-only", options.paths_only,
                 "run only the path phases (open O_CREAT, stat, readdir, unlink) in a new directory under this one");
  app.add_option("--stat-again-after-s", options.stat_again_after_s,
                 "path phases: stat every file again after this pause (past a mount's cache timeouts)")
      ->check(CLI::Range(0.0, 600.0));
  CLI11_PARSE(app, argc, argv);

  if (!options.paths_only.empty()) return run_paths_only(options);

  std::string scratch = options.scratch + "/ff-mdtest-" + std::to_string(::getpid());
  std::filesystem::create_directories(scratch);
  std::unique_ptr<ff::fs::kv::KvEngine> engine;
  std::unique_ptr<MetaService> service;
  std::vector<std::unique_ptr<MetaApi>> remotes;
  std::vector<MetaApi*> apis;
  PhaseTimes ours, local;
  if (!options.meta.empty()) {
#ifdef FF_MDTEST_RPC
    for (int c = 0; c < options.clients; ++c) {
      auto remote =
          ff::fs::meta::RemoteMeta::connect({.addresses = options.meta, .batches_in_flight = options.batches});
      if (!remote.is_ok()) {
        std::fprintf(stderr, "%s\n", remote.status().to_string().c_str());
        return 1;
      }
      apis.push_back(remote->get());
      remotes.push_back(std::move(*remote));
    }
#endif
  } else {
    if (options.kv == "memory") {
      engine = ff::fs::kv::open_memory_kv();
    } else {
      auto opened = ff::fs::kv::open_rocksdb_kv({.path = scratch + "/kv", .sync = options.sync});
      if (!opened.is_ok()) {
        std::fprintf(stderr, "%s\n", opened.status().to_string().c_str());
        return 1;
      }
      engine = std::move(*opened);
    }
    ff::fs::meta::MetaConfig config;
    config.inode_batch = 4096;
    auto meta = MetaService::open(*engine, config);
    if (!meta.is_ok()) {
      std::fprintf(stderr, "%s\n", meta.status().to_string().c_str());
      return 1;
    }
    service = std::move(*meta);
    apis.push_back(service.get());
  }
  run_meta(options, apis, &ours);
  run_local(options, scratch + "/local", &local);
  apis.clear();
  remotes.clear();
  service.reset();
  engine.reset();
  std::filesystem::remove_all(scratch);

  double ops = static_cast<double>(options.threads) * options.files;
  nlohmann::json lines = nlohmann::json::array();
  auto emit = [&](const char* phase, double ours_s, double local_s, double count) {
    nlohmann::json line = {{"bench", "fs_meta"},
                           {"phase", phase},
                           {"kv", options.meta.empty() ? options.kv : "ff-meta over gRPC"},
                           {"clients", options.meta.empty() ? 0 : options.clients},
                           {"sync", options.meta.empty() && options.kv == "rocksdb" && options.sync},
                           {"threads", options.threads},
                           {"files_per_thread", options.files},
                           {"shared_dir", options.shared_dir},
                           {"ops", count},
                           {"ops_per_s", count / ours_s},
                           {"local_fs_ops_per_s", count / local_s},
                           {"ratio_vs_local_fs", local_s / ours_s},
                           {"errors", ours.errors.load()}};
    std::printf("%s\n", line.dump().c_str());
    lines.push_back(line);
  };
  emit("create", ours.create, local.create, ops);
  emit("stat", ours.stat, local.stat, ops);
  emit("readdir_entries", ours.readdir, local.readdir, ops);
  emit("unlink", ours.unlink, local.unlink, ops);
  double mixed = 2 * ops / (ours.create + ours.stat);
  double mixed_local = 2 * ops / (local.create + local.stat);
  emit("create+stat", ours.create + ours.stat, local.create + local.stat, 2 * ops);
  std::fprintf(stderr, "creates+stats: %.0f ops/s (local fs %.0f ops/s)\n", mixed, mixed_local);
  if (!options.out.empty()) {
    std::ofstream out(options.out, std::ios::app);
    for (const auto& line : lines) out << line.dump() << "\n";
  }
  return ours.errors.load() == 0 && local.errors.load() == 0 ? 0 : 1;
}
