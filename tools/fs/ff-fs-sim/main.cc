// ff-fs-sim: runs the deterministic fs simulation over many seeds (make soak) or replays one.
//   ff-fs-sim --first-seed 1 --seeds 10000 --progress
//   ff-fs-sim --seed 1234 --verbose
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>

#include "ff/common/log.h"
#include "ff/fs/sim.h"

int main(int argc, char** argv) {
  CLI::App app{"ff-fs-sim: deterministic simulation of fs (mgmtd + CRAQ storage + clients)"};
  uint64_t first_seed = 1, seeds = 100;
  std::optional<uint64_t> seed;
  bool progress = false, verbose = false, tail_bug = false, sync_bug = false;
  ff::fs::SimOptions options;
  app.add_option("--first-seed", first_seed, "first seed of the range");
  app.add_option("--seeds", seeds, "number of seeds to run");
  app.add_option("--seed", seed, "run exactly this seed");
  app.add_flag("--progress", progress, "print a progress line every few seconds");
  app.add_flag("--verbose", verbose, "log every fault and the services' logs (debug level)");
  app.add_option("--nodes", options.storage_nodes, "storage nodes");
  app.add_option("--targets-per-node", options.targets_per_node, "targets per storage node");
  app.add_option("--replication", options.replication, "replicas per chain");
  app.add_option("--max-concurrent-faults", options.max_concurrent_faults, "node/network faults at once (0: unlimited)");
  bool no_corruption = false;
  app.add_flag("--no-corruption", no_corruption, "inject no silent corruption");
  bool no_scrub = false;
  app.add_flag("--no-scrub", no_scrub, "run the storage services without their background scrub");
  app.add_option("--fast-lane", options.fast_lane,
                 "share of requests the storage services may answer in the read fast lane (0..1; 0: never)")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--write-bursts", options.write_bursts,
                 "share of writes made as a burst of 2-8 writes of one chunk at once (0..1; 0: never), which the "
                 "clients' write coalescing joins")
      ->check(CLI::Range(0.0, 1.0));
  double late_work_us = 0;
  app.add_option("--late-work-us", late_work_us,
                 "offloaded chunk I/O starts up to this long after it was handed over (0: at once)")
      ->check(CLI::Range(0.0, 1e6));
  app.add_flag("--bug-tail-acks-without-storing", tail_bug, "inject a protocol bug (the checkers must fail)");
  app.add_flag("--bug-skip-sync", sync_bug, "inject a protocol bug (the checkers must fail)");
  CLI11_PARSE(app, argc, argv);
  options.bugs.tail_acks_without_storing = tail_bug;
  options.bugs.skip_sync = sync_bug;
  options.late_work_ns = static_cast<int64_t>(late_work_us * 1000);
  options.verbose = verbose;
  options.corruption = !no_corruption;
  options.scrub = !no_scrub;
  (void)ff::set_log_level(verbose ? "debug" : "warn");
  if (seed) {
    first_seed = *seed;
    seeds = 1;
  }
  auto start = std::chrono::steady_clock::now();
  auto last_print = start;
  uint64_t failed = 0;
  for (uint64_t i = 0; i < seeds; ++i) {
    ff::fs::SimResult result = ff::fs::run_simulation(first_seed + i, options);
    if (!result.ok) {
      ++failed;
      std::printf("%s\n", result.summary().c_str());
      for (const std::string& violation : result.violations) std::printf("  %s\n", violation.c_str());
    } else if (seeds == 1) {
      std::printf("%s\n", result.summary().c_str());
    }
    auto now = std::chrono::steady_clock::now();
    if (progress && (now - last_print > std::chrono::seconds(5) || i + 1 == seeds)) {
      double elapsed = std::chrono::duration<double>(now - start).count();
      double rate = (i + 1) / elapsed;
      std::printf("[%llu/%llu] %llu failed, %.1f seeds/s, ETA %.0f s\n", static_cast<unsigned long long>(i + 1),
                  static_cast<unsigned long long>(seeds), static_cast<unsigned long long>(failed), rate, (seeds - i - 1) / rate);
      std::fflush(stdout);
      last_print = now;
    }
  }
  std::printf("%llu of %llu seeds failed\n", static_cast<unsigned long long>(failed), static_cast<unsigned long long>(seeds));
  return failed == 0 ? 0 : 1;
}
