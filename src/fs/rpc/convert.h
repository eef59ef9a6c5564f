// Conversions between the C++ messages (ff/fs/messages.h) and their protobuf twins (proto/ff/fs/fs.proto).
// Decoding validates: an envelope without a body, an enum value out of range or a missing required
// sub-message is [malformed], never a crash.
#pragma once

#include "ff/common/result.h"
#include "ff/fs/messages.h"
#include "ff/fs/fs.pb.h"

namespace ff::fs::rpc {

// The request moves its payload bytes into the envelope (no copy of `request` is kept).
void request_to_proto(Request&& request, pb::Envelope* out);
void response_to_proto(Response&& response, pb::Envelope* out);
Result<Request> request_from_proto(pb::Envelope&& envelope);
Result<Response> response_from_proto(pb::Envelope&& envelope);

}  // namespace ff::fs::rpc
