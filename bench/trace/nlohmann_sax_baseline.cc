// Baseline for the trace analyzer benchmark: how fast nlohmann::json::sax_parse walks a trace when the
// handler does nothing (an upper bound for a SAX-based analyzer). Built into build/bench-tools and run
// by bench/trace/bench_trace_analyzer.py on the same file in the same run; prints one JSON line.
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

namespace {

// Counts events; every callback returns true (continue) and stores nothing.
struct CountingHandler : nlohmann::json_sax<nlohmann::json> {
  size_t objects = 0;
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override {
    ++objects;
    return true;
  }
  bool key(string_t&) override { return true; }
  bool end_object() override { return true; }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s TRACE.json\n", argv[0]);
    return 2;
  }
  std::FILE* file = std::fopen(argv[1], "rb");
  if (file == nullptr) {
    std::perror(argv[1]);
    return 1;
  }
  std::setvbuf(file, nullptr, _IOFBF, 1 << 20);
  const auto start = std::chrono::steady_clock::now();
  CountingHandler handler;
  const bool ok = nlohmann::json::sax_parse(file, &handler);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const long bytes = std::ftell(file);
  std::printf("{\"bench\":\"nlohmann_sax_baseline\",\"ok\":%s,\"objects\":%zu,\"bytes\":%ld,\"seconds\":%.3f,"
              "\"mb_per_s\":%.1f}\n",
              ok ? "true" : "false", handler.objects, bytes, seconds, static_cast<double>(bytes) / 1e6 / seconds);
  std::fclose(file);
  return ok ? 0 : 1;
}
