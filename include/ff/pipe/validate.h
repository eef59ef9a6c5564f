// Schedule validator: proves a schedule runs to completion under blocking point-to-point
// communication and computes what each rank holds at its peak.
//
// Model of execution (the same one the executor implements): each rank runs its ops in order; an op
// first receives every message it needs (blocking, matched by content, not arrival order), computes,
// then sends its outputs into the bounded channel of each link (blocking while that channel is full).
// A schedule deadlocks when some rank still has ops but no rank can make progress.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <vector>

#include "ff/common/result.h"
#include "ff/pipe/schedule.h"

namespace ff::pipe {

struct ValidateOptions {
  // Messages a directed link (src rank -> dst rank) buffers before a send blocks. 0 means as many
  // as the schedule ever sends over that link, i.e. sends never block.
  int32_t channel_capacity = 0;
};

struct ValidationReport {
  // Per rank: the most micro-batch activations held at once (one unit = one micro-batch at one
  // stage; an activation lives from its F until its B or I).
  std::vector<int32_t> peak_activations;
  // Per rank: parameter copies held, in units of one stage's parameters (DualPipe holds 2).
  std::vector<int32_t> parameters;
  // Per rank: most messages waiting, over all links into that rank, at any time.
  std::vector<int32_t> peak_pending_messages;
  size_t num_ops = 0;
  size_t num_transfers = 0;
};

// OK with the report, or an error naming the first problem:
//  - invalid argument: an op on the wrong rank, a task done twice or never ("rank 2 never runs W of
//    mb=3 s=2 d=0"), a W without its I;
//  - invalid argument "deadlock: ...": each blocked rank, its op and what it waits for, e.g.
//    "rank 1 op #4 B(mb=0 s=1 d=0) waits forever for the gradient of mb=0 s=1 d=0 from rank 2,
//     which is blocked at op #6 ...".
Result<ValidationReport> validate_schedule(const Schedule& schedule, const ValidateOptions& options = {});

}  // namespace ff::pipe
