// The deterministic simulation of the fs storage layer: one process, one thread, one seeded RNG, a
// virtual clock, a simulated network (loss, delay, reordering, partitions) and disks (MemChunkStore
// with injected errors and corruption); mgmtd + N storage services + clients run the same service code
// as real processes. Faults: storage node crash/restart, mgmtd crash/restart, partitions, disk errors,
// silent corruption. After each run the checkers verify: no acknowledged write lost, committed replicas
// identical, no version committed with two different contents, reads never older than a write
// acknowledged before they began and always matching a committed version, chains back to all-serving
// once faults stop. A failed run's report says `reproduce with seed=N`.
//
// Thread-safety: run_simulation is self-contained; different runs may go on different threads.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ff/fs/storage_service.h"

namespace ff::fs {

struct SimOptions {
  uint32_t storage_nodes = 5;
  uint32_t targets_per_node = 3;
  uint32_t replication = 3;
  uint32_t clients = 3;
  uint32_t chunks_per_chain = 2;
  uint64_t chunk_bytes = 16 << 10;
  int64_t workload_ns = 6'000'000'000;    // clients write and read this long (virtual time)
  int64_t faults_ns = 5'000'000'000;      // faults are injected during the first part of it
  int64_t heal_limit_ns = 60'000'000'000;  // then chains must all serve again within this
  int64_t heartbeat_timeout_ns = 1'000'000'000;
  double loss = 0.01;            // message loss probability while faults run
  bool crashes = true;
  bool mgmtd_crashes = true;
  bool partitions = true;
  bool disk_errors = true;
  bool corruption = true;
  // The storage services' background scrub (StorageConfig::scrub_bytes_per_s) runs under the faults: it reads every
  // replica back, repairs the corrupt ones it finds and saves its place in the stores.
  bool scrub = true;
  // The share of requests (drawn per request) delivered as the gRPC transport delivers them
  // (ServerContext::reply_from_any_thread): the storage services may then answer reads from the read fast lane, on
  // the offload worker (the simulation's offloads run at once), instead of through their executor. 0: never.
  double fast_lane = 0.5;
  // Offloaded work (chunk I/O on the services' worker threads) starts up to this long after it was handed over
  // instead of at once, so routing changes, syncs and other messages can land between a service's decision and the
  // I/O it offloaded (as on a busy worker pool). 0 (the default the seeded suites were tuned with): at once.
  int64_t late_work_ns = 0;
  // The share of the clients' writes (drawn per write) made as a burst of 2-8 writes of one chunk at once, mostly each
  // right after the last or over it, which the client's write coalescing joins
  // (ClientConfig::coalesce_write_max_bytes). 0 (the default the seeded suites were tuned with): one write at a time.
  double write_bursts = 0;
  // Besides the checked chunks, each chain has scratch chunks that clients write and remove by range
  // concurrently; only replica identity is checked for them (a removal restarts their versions).
  bool removals = true;
  // Node/network faults (crash, mgmtd crash, partition) active at once; 0 = unlimited. Disk errors and
  // corruption do not count.
  uint32_t max_concurrent_faults = 0;
  StorageBugs bugs;              // injected protocol bugs (the checkers must catch them)
  bool verbose = false;          // log every fault
};

struct SimResult {
  uint64_t seed = 0;
  bool ok = true;
  std::vector<std::string> violations;  // empty when ok
  uint64_t writes_acked = 0, writes_failed = 0, reads_ok = 0, reads_failed = 0;
  uint64_t reads_batched = 0;                        // read attempts the clients sent in a BatchReadReq (coalesced)
  uint64_t removals_acked = 0, removals_failed = 0;  // removals by range of scratch chunks
  uint64_t burst_writes = 0;  // writes made in bursts (SimOptions::write_bursts), counted in writes_acked / failed too
  uint64_t coalesced_writes = 0;  // writes the clients sent joined with others (StorageClient::Stats::coalesced_writes)
  uint64_t truncates_acked = 0, truncates_failed = 0;  // chunks cut or zero-extended (StorageClient::truncate)
  uint64_t crashes = 0, mgmtd_crashes = 0, partitions = 0, corruptions = 0, repairs = 0, syncs = 0;
  uint64_t chunks_scrubbed = 0, scrub_corruptions = 0;  // the services' background scrub (SimOptions::scrub)
  uint64_t fast_lane_reads = 0;  // reads the storage services answered in their read fast lane (SimOptions::fast_lane)
  uint64_t tail_commits_in_worker = 0;  // tails' commits in the worker call that stored the version (commit_in_worker)
  uint64_t tail_commits_left_to_executor = 0;  // stored at a tail whose routing had changed: the executor decided
  uint64_t lazy_commits_lost = 0;  // lazy commits undone by storage crashes (versions pending again)
  uint64_t events = 0;
  int64_t virtual_ns = 0;
  // One line: "seed=N ok writes=... " or the first violation and "reproduce with seed=N".
  std::string summary() const;
};

SimResult run_simulation(uint64_t seed, const SimOptions& options = {});

}  // namespace ff::fs
