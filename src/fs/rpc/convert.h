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

// The Fs.Frame method carries a message's payload beside its envelope (fs.proto). take_* moves the
// payload (WriteReq, ForwardReq, SyncReplaceReq, ReadRsp; shared_data or data) out of the message,
// leaving the payload fields empty, and returns it unset when there is none; put_* installs a received
// payload as the message's `data` ([malformed] when the message has no payload field).
SharedBytes take_request_payload(Request& request);
SharedBytes take_response_payload(Response& response);
Status put_request_payload(Request& request, Bytes&& payload);
// As put_request_payload, for a WriteReq or ForwardReq: the payload becomes its shared_data (no copy).
Status put_request_shared_payload(Request& request, SharedBytes payload);
Status put_response_payload(Response& response, Bytes&& payload);

}  // namespace ff::fs::rpc
