// Every public fs core header compiles on its own and together; basic vocabulary behaviour.
#include <gtest/gtest.h>

#include "ff/fs/chain_table.h"
#include "ff/fs/client.h"
#include "ff/fs/local_read.h"
#include "ff/fs/map_store.h"
#include "ff/fs/mem_chunk_store.h"
#include "ff/fs/messages.h"
#include "ff/fs/mgmtd.h"
#include "ff/fs/storage_service.h"
#include "ff/fs/transport.h"
#include "ff/fs/types.h"

namespace ff::fs {
namespace {

TEST(FsTypes, ErrorTagsRoundTrip) {
  Status status = fs_error(FsError::kStaleChainVersion, "chain 7: request has 3, target has 4");
  EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(fs_error_of(status), FsError::kStaleChainVersion);
  EXPECT_EQ(fs_error_of(status.with_context("forward to 3001")), FsError::kStaleChainVersion);
  EXPECT_EQ(fs_error_of(invalid_argument("plain")), FsError::kNone);
  EXPECT_EQ(fs_error_of(fs_error(FsError::kChunkDirty, "x")), FsError::kChunkDirty);
}

TEST(FsTypes, TransitionTable) {
  using L = LocalTargetState;
  using P = PublicTargetState;
  EXPECT_EQ(next_public_state(L::kOffline, P::kServing, false, false), P::kLastSrv);
  EXPECT_EQ(next_public_state(L::kOffline, P::kServing, true, true), P::kOffline);
  EXPECT_EQ(next_public_state(L::kOnline, P::kOffline, true, true), P::kWaiting);
  EXPECT_EQ(next_public_state(L::kOnline, P::kWaiting, true, true), P::kSyncing);
  EXPECT_EQ(next_public_state(L::kOnline, P::kWaiting, true, false), P::kWaiting);
  EXPECT_EQ(next_public_state(L::kUpToDate, P::kSyncing, true, true), P::kServing);
  EXPECT_EQ(next_public_state(L::kOnline, P::kLastSrv, false, false), P::kServing);
}

TEST(FsTypes, ChainViews) {
  ChainInfo chain{.id = 1, .version = 3,
                  .targets = {{1001, PublicTargetState::kServing}, {2001, PublicTargetState::kServing},
                              {3001, PublicTargetState::kSyncing}, {4001, PublicTargetState::kOffline}}};
  EXPECT_EQ(chain.write_chain(), (std::vector<TargetId>{1001, 2001, 3001}));
  EXPECT_EQ(chain.serving(), (std::vector<TargetId>{1001, 2001}));
  EXPECT_EQ(chain.index_of(3001), 2);
  EXPECT_EQ(chain.index_of(5), -1);
  EXPECT_EQ(make_target_id(3, 1), 3002u);
  EXPECT_EQ(request_name(Request{WriteReq{}}), "WriteReq");
}

}  // namespace
}  // namespace ff::fs
