// The JSON schedule file (format "fireflyer.pipe.schedule/1"; see schedule.h).
#include <nlohmann/json.hpp>

#include "ff/pipe/schedule.h"

namespace ff::pipe {

namespace {

constexpr std::string_view kFormat = "fireflyer.pipe.schedule/1";

void append_task(std::string& out, const Task& task, std::string_view prefix) {
  out += fmt::format("\"{}mb\": {}, \"{}stage\": {}, \"{}dir\": {}", prefix, task.micro_batch, prefix, task.stage,
                     prefix, task.direction);
}

Result<int32_t> get_int(const nlohmann::json& object, const char* key, std::string_view where) {
  auto it = object.find(key);
  if (it == object.end()) return invalid_argument("{}: missing \"{}\"", where, key);
  if (!it->is_number_integer()) return invalid_argument("{}: \"{}\" must be an integer", where, key);
  const int64_t value = it->get<int64_t>();
  if (value < INT32_MIN || value > INT32_MAX) return invalid_argument("{}: \"{}\"={} out of range", where, key, value);
  return static_cast<int32_t>(value);
}

Result<Task> get_task(const nlohmann::json& object, std::string_view prefix, std::string_view where) {
  Task task;
  const std::string p(prefix);
  FF_ASSIGN_OR_RETURN(task.micro_batch, get_int(object, (p + "mb").c_str(), where));
  FF_ASSIGN_OR_RETURN(task.stage, get_int(object, (p + "stage").c_str(), where));
  FF_ASSIGN_OR_RETURN(task.direction, get_int(object, (p + "dir").c_str(), where));
  return task;
}

Result<Schedule> parse_document(const nlohmann::json& doc) {
  if (!doc.is_object()) return invalid_argument("schedule file must hold a JSON object");
  auto format = doc.find("format");
  if (format == doc.end() || !format->is_string() || format->get<std::string>() != kFormat) {
    return invalid_argument("schedule file needs \"format\": \"{}\"", kFormat);
  }
  Schedule schedule;
  auto kind = doc.find("schedule");
  if (kind == doc.end() || !kind->is_string()) return invalid_argument("schedule file needs a \"schedule\" name");
  FF_ASSIGN_OR_RETURN(schedule.kind, parse_schedule_kind(kind->get<std::string>()));
  FF_ASSIGN_OR_RETURN(schedule.num_stages, get_int(doc, "num_stages", "schedule"));
  FF_ASSIGN_OR_RETURN(schedule.num_ranks, get_int(doc, "num_ranks", "schedule"));
  FF_ASSIGN_OR_RETURN(schedule.num_micro_batches, get_int(doc, "num_micro_batches", "schedule"));
  FF_ASSIGN_OR_RETURN(schedule.num_directions, get_int(doc, "num_directions", "schedule"));
  constexpr int32_t kMaxRanks = 4096;
  if (schedule.num_ranks < 1 || schedule.num_ranks > kMaxRanks) {
    return invalid_argument("num_ranks={} must be in [1, {}]", schedule.num_ranks, kMaxRanks);
  }
  auto stage_rank = doc.find("stage_rank");
  if (stage_rank == doc.end() || !stage_rank->is_array()) return invalid_argument("schedule needs \"stage_rank\"");
  for (const nlohmann::json& row : *stage_rank) {
    if (!row.is_array()) return invalid_argument("stage_rank rows must be arrays of ranks");
    std::vector<int32_t> ranks;
    for (const nlohmann::json& value : row) {
      if (!value.is_number_integer()) return invalid_argument("stage_rank entries must be integers");
      ranks.push_back(value.get<int32_t>());
    }
    schedule.stage_rank.push_back(std::move(ranks));
  }
  auto ranks = doc.find("ranks");
  if (ranks == doc.end() || !ranks->is_array()) return invalid_argument("schedule needs \"ranks\": [[op, ...], ...]");
  for (size_t rank = 0; rank < ranks->size(); ++rank) {
    const nlohmann::json& ops = (*ranks)[rank];
    if (!ops.is_array()) return invalid_argument("ranks[{}] must be an array of ops", rank);
    std::vector<Op> parsed;
    parsed.reserve(ops.size());
    for (size_t i = 0; i < ops.size(); ++i) {
      const std::string where = fmt::format("rank {} op #{}", rank, i);
      const nlohmann::json& object = ops[i];
      if (!object.is_object()) return invalid_argument("{}: must be an object", where);
      auto name = object.find("op");
      if (name == object.end() || !name->is_string()) return invalid_argument("{}: missing \"op\"", where);
      Op op;
      Result<OpKind> kind_result = parse_op_kind(name->get<std::string>());
      if (!kind_result.is_ok()) return kind_result.status().with_context(where);
      op.kind = *kind_result;
      FF_ASSIGN_OR_RETURN(op.task, get_task(object, "", where));
      if (op.kind == OpKind::kForwardBackward) {
        FF_ASSIGN_OR_RETURN(op.backward, get_task(object, "b_", where));
      }
      parsed.push_back(std::move(op));
    }
    schedule.ranks.push_back(std::move(parsed));
  }
  FF_RETURN_IF_ERROR(finalize_schedule(schedule));
  return schedule;
}

}  // namespace

std::string schedule_to_json(const Schedule& schedule) {
  std::string out;
  out += fmt::format(
      "{{\n  \"format\": \"{}\",\n  \"schedule\": \"{}\",\n  \"num_stages\": {},\n  \"num_ranks\": {},\n"
      "  \"num_micro_batches\": {},\n  \"num_directions\": {},\n  \"stage_rank\": [",
      kFormat, schedule_kind_name(schedule.kind), schedule.num_stages, schedule.num_ranks,
      schedule.num_micro_batches, schedule.num_directions);
  for (size_t d = 0; d < schedule.stage_rank.size(); ++d) {
    out += d == 0 ? "[" : ", [";
    for (size_t s = 0; s < schedule.stage_rank[d].size(); ++s) {
      out += fmt::format("{}{}", s == 0 ? "" : ", ", schedule.stage_rank[d][s]);
    }
    out += "]";
  }
  out += "],\n  \"ranks\": [\n";
  for (size_t rank = 0; rank < schedule.ranks.size(); ++rank) {
    out += "    [\n";
    const std::vector<Op>& ops = schedule.ranks[rank];
    for (size_t i = 0; i < ops.size(); ++i) {
      const Op& op = ops[i];
      out += fmt::format("      {{\"op\": \"{}\", ", op_kind_name(op.kind));
      append_task(out, op.task, "");
      if (op.kind == OpKind::kForwardBackward) {
        out += ", ";
        append_task(out, op.backward, "b_");
      }
      out += i + 1 < ops.size() ? "},\n" : "}\n";
    }
    out += rank + 1 < schedule.ranks.size() ? "    ],\n" : "    ]\n";
  }
  out += "  ]\n}\n";
  return out;
}

Result<Schedule> schedule_from_json(std::string_view text) {
  nlohmann::json doc = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return invalid_argument("schedule file is not valid JSON");
  return parse_document(doc);
}

}  // namespace ff::pipe
