#include "ff/common/log.h"

#include "ff/common/result.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdlib>
#include <string>

namespace ff {
namespace {

Result<spdlog::level::level_enum> parse_level(std::string_view level) {
  if (level == "trace") return spdlog::level::trace;
  if (level == "debug") return spdlog::level::debug;
  if (level == "info") return spdlog::level::info;
  if (level == "warn") return spdlog::level::warn;
  if (level == "error") return spdlog::level::err;
  if (level == "off") return spdlog::level::off;
  return invalid_argument("log level '{}' is not one of trace, debug, info, warn, error, off", level);
}

std::shared_ptr<spdlog::logger> make_logger() {
  auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  auto created = std::make_shared<spdlog::logger>("ff", sink);
  created->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%L%$ [%t] %v");
  created->set_level(spdlog::level::info);
  if (const char* env = std::getenv("FF_LOG_LEVEL"); env != nullptr) {
    auto level = parse_level(env);
    if (level.is_ok()) created->set_level(*level);
  }
  return created;
}

}  // namespace

spdlog::logger& logger() {
  static std::shared_ptr<spdlog::logger> instance = make_logger();
  return *instance;
}

Status set_log_level(std::string_view level) {
  FF_ASSIGN_OR_RETURN(spdlog::level::level_enum parsed, parse_level(level));
  logger().set_level(parsed);
  return Status::ok();
}

}  // namespace ff
