// Conversions between the meta structs of include/ff/fs/meta.h and their protobuf twins (meta.proto).
#pragma once

#include <string_view>

#include "ff/common/status.h"
#include "ff/fs/meta.h"
#include "ff/fs/meta.pb.h"

namespace ff::fs::meta::wire {

void to_proto(const Caller& caller, pb::Caller* out);
Caller from_proto(const pb::Caller& caller);
void to_proto(const Inode& inode, pb::Inode* out);
Inode from_proto(const pb::Inode& inode);
void to_proto(const SetAttr& attr, pb::SetattrReq* out);
SetAttr from_proto(const pb::SetattrReq& attr);

// An operation's Status into / out of a response (code + message, tags intact).
void set_status(const Status& status, pb::MetaResponse* out);
Status status_of(const pb::MetaResponse& response);
// A status sent as (code, message): status_of's rule for one entry of a StatusesRsp.
Status status_from(int32_t code, const std::string& message);

// "lookup", "create", ...: the oneof case's name, for logs and metrics.
const char* op_name(pb::MetaRequest::OpCase op);

// Operations that are not idempotent: RemoteMeta gives them a request id, and the server remembers
// their outcome by it for a while (a retry after a lost reply gets the first outcome).
bool deduplicated(pb::MetaRequest::OpCase op);

// Starts the message of a batched request's response when the server could not queue it (code unavailable): the
// client sends that request again alone, as it does after a busy Call.
inline constexpr std::string_view kBusyTag = "[busy]";

// Operations that only read (lookup, getattr, readdir, ...): they batch apart from changes (RemoteMeta)
// and may run on the server's gRPC threads (MetaServerOptions::inline_reads).
bool is_read(pb::MetaRequest::OpCase op);

}  // namespace ff::fs::meta::wire
