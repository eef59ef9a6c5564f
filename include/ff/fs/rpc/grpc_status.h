// Conversions between ff::Status and grpc::Status. Our status codes travel in the gRPC status code where
// gRPC has the same meaning; the rest (data_loss is gRPC's too; io_error has no gRPC twin) travel as
// our numeric code in the error details string "ff:<code>", so a client gets back exactly the code the
// server returned.
#pragma once

#include <string_view>

#include <grpcpp/support/status.h>

#include "ff/common/status.h"

namespace ff::fs::rpc {

grpc::Status to_grpc_status(const Status& status);

// `context` prefixes the message (e.g. "etcd 127.0.0.1:2379 Put /k"). A gRPC deadline becomes
// deadline_exceeded, an unreachable peer unavailable.
Status from_grpc_status(const grpc::Status& status, std::string_view context);

}  // namespace ff::fs::rpc
