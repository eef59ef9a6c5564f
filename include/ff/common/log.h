// Logging through spdlog. One process-wide logger named "ff" writing to stderr; its level comes from
// the FF_LOG_LEVEL environment variable (trace, debug, info, warn, error, off; default info) and can
// be changed with set_log_level. Not for hot paths (STYLE.md rule 8).
//
// Thread-safety: all functions and macros are safe to call from any thread.
#pragma once

#include <spdlog/spdlog.h>

#include <string_view>

#include "ff/common/status.h"

namespace ff {

spdlog::logger& logger();

// Accepts "trace", "debug", "info", "warn", "error", "off".
Status set_log_level(std::string_view level);

}  // namespace ff

#define FF_LOG_DEBUG(...) ::ff::logger().debug(__VA_ARGS__)
#define FF_LOG_INFO(...) ::ff::logger().info(__VA_ARGS__)
#define FF_LOG_WARN(...) ::ff::logger().warn(__VA_ARGS__)
#define FF_LOG_ERROR(...) ::ff::logger().error(__VA_ARGS__)
