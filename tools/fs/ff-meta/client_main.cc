// ff-meta-client: drives ff-meta servers through RemoteMeta, for the kill/restart test and by hand.
//
//   ff-meta-client --meta 127.0.0.1:9300 workload --threads 4 --seconds 15 --log ops.log
//       each thread creates files in its own directory, renames every second one, opens every fourth
//       for writing and closes it, and unlinks every eighth; every acknowledged operation is appended
//       to the log ("C <thread> <index> <inode>", "R <thread> <index>", "U <thread> <index>")
//   ff-meta-client --meta 127.0.0.1:9300 verify --log ops.log
//       checks that every acknowledged create, rename and unlink is visible; prints a JSON report, exit 1
//       if not
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "ff/common/log.h"
#include "ff/fs/meta_rpc.h"

namespace {

using namespace ff;
using namespace ff::fs::meta;

const Caller kCaller{0, 0, {}};

std::string dir_name(const std::string& prefix, int thread) { return prefix + "-" + std::to_string(thread); }
std::string created_name(int index) { return "f" + std::to_string(index); }
std::string renamed_name(int index) { return "r" + std::to_string(index); }

int workload(RemoteMeta& meta, int threads, double seconds, const std::string& log_path, const std::string& prefix) {
  std::FILE* log = std::fopen(log_path.c_str(), "a");
  if (log == nullptr) {
    FF_LOG_ERROR("cannot open {} for appending", log_path);
    return 2;
  }
  std::mutex log_mutex;  // guards log
  auto record = [&](const std::string& line) {
    std::lock_guard lock(log_mutex);
    std::fputs(line.c_str(), log);
    std::fputc('\n', log);
    std::fflush(log);
  };
  std::atomic<uint64_t> creates{0}, renames{0}, unlinks{0}, sessions{0}, errors{0};
  const uint64_t client_id = (uint64_t{std::random_device{}()} << 32) | std::random_device{}();
  auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      Result<Inode> dir = meta.mkdir(kCaller, kRootInode, dir_name(prefix, t), 0755);
      if (!dir.is_ok() && errno_of(dir.status()) == EEXIST) dir = meta.lookup(kCaller, kRootInode, dir_name(prefix, t));
      if (!dir.is_ok()) {
        FF_LOG_ERROR("thread {}: directory: {}", t, dir.status());
        ++errors;
        return;
      }
      for (int i = 0; std::chrono::steady_clock::now() < end; ++i) {
        auto made = meta.create(kCaller, dir->id, created_name(i), 0644);
        if (!made.is_ok()) {
          if (errors.fetch_add(1) < 20) FF_LOG_WARN("thread {} create {}: {}", t, i, made.status());
          continue;
        }
        ++creates;
        record(fmt::format("C {} {} {}", t, i, made->id));
        if (i % 4 == 0) {
          // A write session: its close asks storage for the exact length (ff-meta's StorageFiles).
          auto opened = meta.open(kCaller, made->id, kOpenWrite, client_id);
          Status closed = opened.is_ok() ? meta.close(made->id, opened->session, 0) : opened.status();
          if (!closed.is_ok()) {
            if (errors.fetch_add(1) < 20) FF_LOG_WARN("thread {} open/close {}: {}", t, i, closed);
            continue;
          }
          ++sessions;
        }
        if (i % 8 == 4) {
          // Removed: its chunks are collected through storage later.
          Status removed = meta.unlink(kCaller, dir->id, created_name(i));
          if (!removed.is_ok()) {
            if (errors.fetch_add(1) < 20) FF_LOG_WARN("thread {} unlink {}: {}", t, i, removed);
            continue;
          }
          ++unlinks;
          record(fmt::format("U {} {}", t, i));
          continue;
        }
        if (i % 2 == 1) {
          Status moved = meta.rename(kCaller, dir->id, created_name(i), dir->id, renamed_name(i));
          if (!moved.is_ok()) {
            if (errors.fetch_add(1) < 20) FF_LOG_WARN("thread {} rename {}: {}", t, i, moved);
            continue;
          }
          ++renames;
          record(fmt::format("R {} {}", t, i));
        }
      }
    });
  }
  for (auto& worker : workers) worker.join();
  std::fclose(log);
  RemoteMeta::Stats stats = meta.stats();
  nlohmann::json out = {{"creates", creates.load()},   {"renames", renames.load()},    {"unlinks", unlinks.load()},
                        {"sessions", sessions.load()}, {"errors", errors.load()},      {"calls", stats.calls},
                        {"attempts", stats.attempts},  {"failovers", stats.failovers}, {"recovered", stats.recovered}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

int verify(RemoteMeta& meta, const std::string& log_path, const std::string& prefix) {
  std::ifstream log(log_path);
  if (!log) {
    FF_LOG_ERROR("cannot read {}", log_path);
    return 2;
  }
  struct File {
    InodeId inode = 0;
    bool renamed = false;
    bool unlinked = false;
  };
  std::map<std::pair<int, int>, File> files;
  std::string line;
  while (std::getline(log, line)) {
    std::istringstream fields(line);
    char kind = 0;
    int thread = 0, index = 0;
    fields >> kind >> thread >> index;
    if (kind == 'C') {
      fields >> files[{thread, index}].inode;
    } else if (kind == 'R') {
      files[{thread, index}].renamed = true;
    } else if (kind == 'U') {
      files[{thread, index}].unlinked = true;
    }
  }
  std::vector<std::string> problems;
  std::map<int, InodeId> dirs;
  for (const auto& [key, file] : files) {
    auto [thread, index] = key;
    if (!dirs.contains(thread)) {
      auto dir = meta.lookup(kCaller, kRootInode, dir_name(prefix, thread));
      if (!dir.is_ok()) {
        problems.push_back(fmt::format("directory of thread {}: {}", thread, dir.status().to_string()));
        dirs[thread] = 0;
        continue;
      }
      dirs[thread] = dir->id;
    }
    InodeId dir = dirs[thread];
    if (dir == 0) continue;
    auto created = meta.lookup(kCaller, dir, created_name(index));
    auto renamed = meta.lookup(kCaller, dir, renamed_name(index));
    if (file.inode == 0) {
      problems.push_back(
          fmt::format("thread {} file {}: renamed/removed but its create was never acknowledged", thread, index));
    } else if (file.unlinked) {
      if (created.is_ok() || renamed.is_ok()) {
        problems.push_back(fmt::format("thread {} file {}: acknowledged unlink, but the name exists", thread, index));
      }
    } else if (file.renamed) {
      // The rename was acknowledged: only the new name may exist, naming the created inode.
      if (!renamed.is_ok() || renamed->id != file.inode) {
        problems.push_back(fmt::format("thread {} file {}: acknowledged rename to {} is not visible ({})", thread,
                                       index, renamed_name(index),
                                       renamed.is_ok() ? "another inode" : renamed.status().to_string()));
      }
      if (created.is_ok()) problems.push_back(fmt::format("thread {} file {}: old name still exists", thread, index));
    } else {
      // Created (a rename may have happened without its acknowledgement).
      bool found = (created.is_ok() && created->id == file.inode) || (renamed.is_ok() && renamed->id == file.inode);
      if (!found) {
        problems.push_back(
            fmt::format("thread {} file {}: acknowledged create (inode {}) is not visible", thread, index, file.inode));
      }
    }
  }
  nlohmann::json out = {{"checked", files.size()}, {"problems", problems.size()}};
  if (!problems.empty()) {
    std::vector<std::string> first(problems.begin(), problems.begin() + std::min<size_t>(problems.size(), 20));
    out["first_problems"] = first;
  }
  std::printf("%s\n", out.dump().c_str());
  return problems.empty() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ff-meta-client: a create/rename workload against ff-meta servers, and its verifier"};
  std::vector<std::string> addresses;
  int64_t rpc_timeout_ms = 2000, op_timeout_ms = 30000;
  std::string prefix = "w";
  app.add_option("--meta", addresses, "ff-meta addresses host:port (repeat or comma-separate)")
      ->required()
      ->delimiter(',');
  app.add_option("--rpc-timeout-ms", rpc_timeout_ms, "one attempt");
  app.add_option("--op-timeout-ms", op_timeout_ms, "one operation, failover included");
  app.add_option("--prefix", prefix, "directory name prefix (one directory per thread under /)");
  app.require_subcommand(1);
  int threads = 4;
  double seconds = 10;
  std::string log_path;
  CLI::App* run = app.add_subcommand("workload", "create and rename files, logging acknowledged operations");
  run->add_option("--threads", threads)->check(CLI::Range(1, 256));
  run->add_option("--seconds", seconds)->check(CLI::PositiveNumber);
  run->add_option("--log", log_path)->required();
  CLI::App* check = app.add_subcommand("verify", "every acknowledged operation of a workload log is visible");
  check->add_option("--log", log_path)->required();
  CLI11_PARSE(app, argc, argv);

  auto meta = RemoteMeta::connect(
      RemoteMetaOptions{.addresses = addresses, .rpc_timeout_ms = rpc_timeout_ms, .op_timeout_ms = op_timeout_ms});
  if (!meta.is_ok()) {
    FF_LOG_ERROR("{}", meta.status());
    return 2;
  }
  if (run->parsed()) return workload(**meta, threads, seconds, log_path, prefix);
  return verify(**meta, log_path, prefix);
}
