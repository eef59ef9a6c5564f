// The sm_90a kernels against the CPU implementation (calc_diff < 1e-3, DeepGEMM's bound; in practice ~1e-7, since
// both accumulate each 128-wide K block in fp32). Every tile configuration is forced in turn
// (FF_GEMM_TILE_CONFIG) besides the heuristic's choice; outputs are prefilled with a sentinel so unwritten
// elements and rows the masked GEMM must not touch show. Skips without a GPU.
#include <cuda_runtime.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "ff/gemm/gemm.h"
#include "test_util.h"

namespace ff::gemm {
namespace {

using testing::calc_diff;

constexpr uint16_t kSentinel = 0x7fc1;  // a NaN bit pattern no kernel produces

bool have_gpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

#define SKIP_WITHOUT_GPU() \
  if (!have_gpu()) GTEST_SKIP() << "no CUDA GPU"

// A device copy of a host vector, freed on destruction.
template <typename T>
struct DeviceBuffer {
  T* data = nullptr;
  size_t count = 0;
  explicit DeviceBuffer(const std::vector<T>& host) : count(host.size()) {
    if (cudaMalloc(&data, sizeof(T) * std::max<size_t>(count, 1)) != cudaSuccess) std::abort();
    if (count > 0 && cudaMemcpy(data, host.data(), sizeof(T) * count, cudaMemcpyHostToDevice) != cudaSuccess) {
      std::abort();
    }
  }
  ~DeviceBuffer() { cudaFree(data); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  std::vector<T> to_host() const {
    std::vector<T> host(count);
    if (count > 0 && cudaMemcpy(host.data(), data, sizeof(T) * count, cudaMemcpyDeviceToHost) != cudaSuccess) {
      std::abort();
    }
    return host;
  }
};

TensorView device_view(void* data, DType dtype, std::initializer_list<int64_t> shape) {
  return TensorView::contiguous(data, dtype, shape, Device::kCuda, 0);
}

// A strided view (strides in elements).
TensorView with_strides(TensorView view, std::initializer_list<int64_t> strides) {
  int d = 0;
  for (int64_t stride : strides) view.strides[static_cast<size_t>(d++)] = stride;
  return view;
}

std::vector<double> as_doubles(const std::vector<uint16_t>& bf16) {
  std::vector<double> values;
  values.reserve(bf16.size());
  for (uint16_t bits : bf16) values.push_back(testing::bf16_value(bits));
  return values;
}

// Sets FF_GEMM_TILE_CONFIG for one scope ("" = the heuristic).
class ForcedConfig {
 public:
  explicit ForcedConfig(const std::string& name) {
    if (name.empty()) {
      unsetenv("FF_GEMM_TILE_CONFIG");
    } else {
      setenv("FF_GEMM_TILE_CONFIG", name.c_str(), 1);
    }
  }
  ~ForcedConfig() { unsetenv("FF_GEMM_TILE_CONFIG"); }
};

// Sets one environment variable for one scope (unset after).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (value != nullptr) {
      setenv(name, value, 1);
    } else {
      unsetenv(name);
    }
  }
  ~ScopedEnv() { unsetenv(name_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
};

// The dense tiles built at a finer B-scale granularity than 128 read B's 128x128 scale blocks directly;
// FF_GEMM_EXPAND_B_SCALES=1 takes their former path (an expansion kernel first, the GEMM as its programmatic
// dependent). Both are tested.
bool has_expanded_path(const std::string& config) {
  return (config.rfind("pingpong_64x", 0) == 0 && config.rfind("pingpong_64x128", 0) != 0) ||
         config == "cooperative_128x192" || config == "cooperative_128x112";
}

// The configurations serving both the dense and the masked GEMM.
const std::vector<std::string> kSharedConfigs = {"",
                                                 "pingpong_64x128",
                                                 "cooperative_128x128",
                                                 "cooperative_128x128_cluster2x1",
                                                 "cooperative_128x192",
                                                 "cooperative_128x112",
                                                 "cooperative_128x128_overlap",
                                                 "cooperative_128x128_stagger"};
// Masked: the shared ones and the masked-only kernel on the dense mainloop.
const std::vector<std::string> kMaskedConfigs = [] {
  std::vector<std::string> configs = kSharedConfigs;
  configs.insert(configs.end(), {"masked_128x128_overlap", "masked_pingpong_64x128"});
  return configs;
}();
// Dense: the shared ones and the dense-only narrow 64-row and 256-row tiles.
const std::vector<std::string> kDenseConfigs = [] {
  std::vector<std::string> configs = kSharedConfigs;
  configs.insert(configs.end(), {"pingpong_64x64", "pingpong_64x32", "pingpong_64x16", "pingpong_64x192",
                                 "pingpong_64x16_overlap", "pingpong_64x32_overlap", "pingpong_64x64_overlap",
                                 "pingpong_64x128_overlap", "cooperative_256x128", "cooperative_256x128_cluster1x2"});
  return configs;
}();
const std::vector<std::string> kContiguousConfigs = {"",
                                                     "pingpong_64x128",
                                                     "cooperative_128x128",
                                                     "cooperative_128x128_cluster2x1",
                                                     "cooperative_128x192",
                                                     "cooperative_128x112",
                                                     "indexed_128x128",
                                                     "indexed_128x128_cluster1x2",
                                                     "indexed_128x192",
                                                     "cooperative_128x128_overlap",
                                                     "cooperative_128x128_stagger",
                                                     "indexed_128x128_overlap",
                                                     "indexed_128x128_stagger",
                                                     "indexed_256x128_cluster1x2"};

// FF_GEMM_TEST_CONFIGS=<word>[,<word>...] keeps only the configurations whose name contains one of the words (the
// heuristic's choice "" is kept too): compute-sanitizer runs on the GPU machine check new kernels without the
// minutes the whole list takes under memcheck. Unset: every configuration.
std::vector<std::string> selected(const std::vector<std::string>& configs) {
  const char* filter = std::getenv("FF_GEMM_TEST_CONFIGS");
  if (filter == nullptr || *filter == '\0') return configs;
  std::vector<std::string> words;
  std::string word;
  for (const char* c = filter;; ++c) {
    if (*c == ',' || *c == '\0') {
      if (!word.empty()) words.push_back(word);
      word.clear();
      if (*c == '\0') break;
    } else {
      word += *c;
    }
  }
  std::vector<std::string> kept;
  for (const std::string& config : configs) {
    bool keep = config.empty();
    for (const std::string& w : words) keep = keep || config.find(w) != std::string::npos;
    if (keep) kept.push_back(config);
  }
  return kept;
}

struct Operands {
  std::vector<uint8_t> a, b;
  std::vector<float> sa, sb;
};

Operands random_operands(int64_t a_rows, int64_t b_rows, int64_t k, int64_t groups, uint32_t seed) {
  std::mt19937 rng(seed);
  Operands o;
  o.a.resize(static_cast<size_t>(a_rows * k));
  o.b.resize(static_cast<size_t>(groups * b_rows * k));
  o.sa.resize(static_cast<size_t>(a_rows * ceil_div(k, 128)));
  o.sb.resize(static_cast<size_t>(groups * ceil_div(b_rows, 128) * ceil_div(k, 128)));
  testing::fill_fp8(o.a, rng);
  testing::fill_fp8(o.b, rng);
  testing::fill_scales(o.sa, rng);
  testing::fill_scales(o.sb, rng);
  return o;
}

// sa (rows, kb) row-major -> DeepGEMM's TMA-aligned column-major buffer (ld = rows rounded up to 4).
std::vector<float> to_column_major(const std::vector<float>& sa, int64_t rows, int64_t k_blocks, int64_t* ld) {
  *ld = (rows + 3) / 4 * 4;
  std::vector<float> column_major(static_cast<size_t>(*ld * k_blocks), 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t kb = 0; kb < k_blocks; ++kb) column_major[kb * *ld + r] = sa[r * k_blocks + kb];
  }
  return column_major;
}

class DenseCuda : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t>> {};

TEST_P(DenseCuda, MatchesCpuForEveryConfigAndScaleLayout) {
  SKIP_WITHOUT_GPU();
  const auto [m, n, k] = GetParam();
  const int64_t kb = k / 128;
  Operands o = random_operands(m, n, k, 1, static_cast<uint32_t>(m * 7 + n * 3 + k));
  std::vector<uint16_t> expected(static_cast<size_t>(m * n), kSentinel);
  ASSERT_TRUE(gemm_fp8_fp8_bf16_nt({TensorView::contiguous(o.a.data(), DType::kFloat8E4M3, {m, k}),
                                    TensorView::contiguous(o.sa.data(), DType::kFloat32, {m, kb})},
                                   {TensorView::contiguous(o.b.data(), DType::kFloat8E4M3, {n, k}),
                                    TensorView::contiguous(o.sb.data(), DType::kFloat32, {ceil_div(n, 128), kb})},
                                   TensorView::contiguous(expected.data(), DType::kBFloat16, {m, n}))
                  .is_ok());
  DeviceBuffer<uint8_t> a(o.a), b(o.b);
  DeviceBuffer<float> sa_rows(o.sa), sb(o.sb);
  int64_t ld = 0;
  DeviceBuffer<float> sa_cols(to_column_major(o.sa, m, kb, &ld));
  for (const std::string& config : selected(kDenseConfigs)) {
    for (int variant = 0; variant < (has_expanded_path(config) ? 4 : 2); ++variant) {
      const bool column_major = variant % 2 == 0, expand = variant >= 2;
      ForcedConfig forced(config);
      ScopedEnv expanded("FF_GEMM_EXPAND_B_SCALES", expand ? "1" : nullptr);
      DeviceBuffer<uint16_t> out(std::vector<uint16_t>(static_cast<size_t>(m * n), kSentinel));
      const TensorView sa_view = column_major
                                     ? with_strides(device_view(sa_cols.data, DType::kFloat32, {m, kb}), {1, ld})
                                     : device_view(sa_rows.data, DType::kFloat32, {m, kb});
      const Status status = gemm_fp8_fp8_bf16_nt({device_view(a.data, DType::kFloat8E4M3, {m, k}), sa_view},
                                                 {device_view(b.data, DType::kFloat8E4M3, {n, k}),
                                                  device_view(sb.data, DType::kFloat32, {ceil_div(n, 128), kb})},
                                                 device_view(out.data, DType::kBFloat16, {m, n}));
      ASSERT_TRUE(status.is_ok()) << status.to_string();
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      const std::vector<uint16_t> actual = out.to_host();
      for (size_t i = 0; i < actual.size(); ++i) ASSERT_NE(actual[i], kSentinel) << "element " << i << " unwritten";
      EXPECT_LT(calc_diff(as_doubles(actual), as_doubles(expected)), 1e-3)
          << "config '" << config << "' column_major=" << column_major << " expanded B scales=" << expand;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, DenseCuda,
                         ::testing::Values(std::make_tuple(1, 128, 128), std::make_tuple(65, 200, 256),
                                           std::make_tuple(129, 256, 384), std::make_tuple(64, 1024, 1024),
                                           std::make_tuple(1000, 512, 512), std::make_tuple(300, 2112, 768),
                                           // 192-wide tiles: n = 320 = 5 B-scale blocks of 64 over 3 of 128.
                                           std::make_tuple(257, 320, 640)));

// FF_GEMM_SCHEDULE (tile scheduler raster order and swizzle) changes only the order tiles are computed in; and
// the 128x128 consumers give the same result when each CTA computes many tiles (set_num_sms(3)).
TEST(GemmCuda, ScheduleOverridesKeepTheResult) {
  SKIP_WITHOUT_GPU();
  const int64_t m = 1000, n = 2112, k = 512, kb = 4;
  Operands o = random_operands(m, n, k, 1, 5);
  std::vector<uint16_t> expected(static_cast<size_t>(m * n), kSentinel);
  ASSERT_TRUE(gemm_fp8_fp8_bf16_nt({TensorView::contiguous(o.a.data(), DType::kFloat8E4M3, {m, k}),
                                    TensorView::contiguous(o.sa.data(), DType::kFloat32, {m, kb})},
                                   {TensorView::contiguous(o.b.data(), DType::kFloat8E4M3, {n, k}),
                                    TensorView::contiguous(o.sb.data(), DType::kFloat32, {ceil_div(n, 128), kb})},
                                   TensorView::contiguous(expected.data(), DType::kBFloat16, {m, n}))
                  .is_ok());
  DeviceBuffer<uint8_t> a(o.a), b(o.b);
  DeviceBuffer<float> sa(o.sa), sb(o.sb);
  auto call = [&](DeviceBuffer<uint16_t>& out) {
    return gemm_fp8_fp8_bf16_nt(
        {device_view(a.data, DType::kFloat8E4M3, {m, k}), device_view(sa.data, DType::kFloat32, {m, kb})},
        {device_view(b.data, DType::kFloat8E4M3, {n, k}),
         device_view(sb.data, DType::kFloat32, {ceil_div(n, 128), kb})},
        device_view(out.data, DType::kBFloat16, {m, n}));
  };
  for (const std::string config : {"cooperative_128x128", "cooperative_128x128_cluster2x1", "cooperative_128x192",
                                   "cooperative_128x112", "cooperative_128x128_overlap",
                                   "cooperative_128x128_stagger"}) {
    for (const char* schedule : {"m", "n:2", "m:8", "default:4"}) {
      ForcedConfig forced(config);
      setenv("FF_GEMM_SCHEDULE", schedule, 1);
      DeviceBuffer<uint16_t> out(std::vector<uint16_t>(static_cast<size_t>(m * n), kSentinel));
      const Status status = call(out);
      unsetenv("FF_GEMM_SCHEDULE");
      ASSERT_TRUE(status.is_ok()) << status.to_string();
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      const std::vector<uint16_t> actual = out.to_host();
      for (size_t i = 0; i < actual.size(); ++i) ASSERT_NE(actual[i], kSentinel) << "element " << i << " unwritten";
      EXPECT_LT(calc_diff(as_doubles(actual), as_doubles(expected)), 1e-3) << config << " " << schedule;
    }
  }
  setenv("FF_GEMM_SCHEDULE", "n:3", 1);
  DeviceBuffer<uint16_t> out(std::vector<uint16_t>(static_cast<size_t>(m * n), kSentinel));
  const Status status = call(out);
  unsetenv("FF_GEMM_SCHEDULE");
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), ::testing::HasSubstr("swizzle '3' is not one of 1, 2, 4, 8"));

  // Many tiles per CTA (3 SMs: 45-46 tiles each), K blocks odd (5): the consumers' per-tile state (the staggered
  // warpgroups' named barriers, the two in-flight K blocks) must carry over from tile to tile.
  struct RestoreSms {
    int saved = get_num_sms();
    ~RestoreSms() { (void)set_num_sms(saved); }
  } restore_sms;
  ASSERT_TRUE(set_num_sms(3).is_ok());
  const int64_t k5 = 640, kb5 = 5;
  Operands o5 = random_operands(m, n, k5, 1, 6);
  std::vector<uint16_t> expected5(static_cast<size_t>(m * n), kSentinel);
  ASSERT_TRUE(gemm_fp8_fp8_bf16_nt({TensorView::contiguous(o5.a.data(), DType::kFloat8E4M3, {m, k5}),
                                    TensorView::contiguous(o5.sa.data(), DType::kFloat32, {m, kb5})},
                                   {TensorView::contiguous(o5.b.data(), DType::kFloat8E4M3, {n, k5}),
                                    TensorView::contiguous(o5.sb.data(), DType::kFloat32, {ceil_div(n, 128), kb5})},
                                   TensorView::contiguous(expected5.data(), DType::kBFloat16, {m, n}))
                  .is_ok());
  DeviceBuffer<uint8_t> a5(o5.a), b5(o5.b);
  DeviceBuffer<float> sa5(o5.sa), sb5(o5.sb);
  for (const std::string config :
       {"cooperative_128x128", "cooperative_128x128_overlap", "cooperative_128x128_stagger", "cooperative_256x128"}) {
    ForcedConfig forced(config);
    DeviceBuffer<uint16_t> out5(std::vector<uint16_t>(static_cast<size_t>(m * n), kSentinel));
    const Status run = gemm_fp8_fp8_bf16_nt(
        {device_view(a5.data, DType::kFloat8E4M3, {m, k5}), device_view(sa5.data, DType::kFloat32, {m, kb5})},
        {device_view(b5.data, DType::kFloat8E4M3, {n, k5}),
         device_view(sb5.data, DType::kFloat32, {ceil_div(n, 128), kb5})},
        device_view(out5.data, DType::kBFloat16, {m, n}));
    ASSERT_TRUE(run.is_ok()) << run.to_string();
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << config;
    const std::vector<uint16_t> actual = out5.to_host();
    for (size_t i = 0; i < actual.size(); ++i) ASSERT_NE(actual[i], kSentinel) << "element " << i << " unwritten";
    EXPECT_LT(calc_diff(as_doubles(actual), as_doubles(expected5)), 1e-3) << config << " on 3 SMs";
  }
}

// With FF_GEMM_EXPAND_B_SCALES=1 the narrow and wide dense tiles read B's scales expanded by a small kernel, and
// the GEMM is launched as that kernel's programmatic dependent (PDL; FF_GEMM_PDL=0 launches it normally); by
// default they read the caller's scale blocks directly. Captured once in a CUDA graph and
// replayed with B's scales rewritten between replays (two random sets, alternating): each replay must match the
// CPU result for the scales it was given; a GEMM that read the expanded scales before the expansion had finished
// would see the previous replay's, one that read them at capture time the first set.
TEST(GemmCuda, ScaleUpdatesReachTheGemmInsideACudaGraph) {
  SKIP_WITHOUT_GPU();
  const int64_t m = 64, n = 640, k = 1024, kb = 8;
  Operands o = random_operands(m, n, k, 1, 123);
  std::vector<std::vector<float>> scale_sets = {o.sb, o.sb};
  std::mt19937 rng(7);
  testing::fill_scales(scale_sets[1], rng);
  std::vector<std::vector<uint16_t>> expected;
  for (std::vector<float>& sb : scale_sets) {
    expected.emplace_back(static_cast<size_t>(m * n), kSentinel);
    ASSERT_TRUE(gemm_fp8_fp8_bf16_nt({TensorView::contiguous(o.a.data(), DType::kFloat8E4M3, {m, k}),
                                      TensorView::contiguous(o.sa.data(), DType::kFloat32, {m, kb})},
                                     {TensorView::contiguous(o.b.data(), DType::kFloat8E4M3, {n, k}),
                                      TensorView::contiguous(sb.data(), DType::kFloat32, {ceil_div(n, 128), kb})},
                                     TensorView::contiguous(expected.back().data(), DType::kBFloat16, {m, n}))
                    .is_ok());
  }
  ASSERT_GT(calc_diff(as_doubles(expected[0]), as_doubles(expected[1])), 1e-2) << "the two scale sets must differ";
  DeviceBuffer<uint8_t> a(o.a), b(o.b);
  DeviceBuffer<float> sa(o.sa), sb(o.sb);
  for (const std::string config : {"pingpong_64x64", "pingpong_64x16", "cooperative_128x192", "pingpong_64x32+expand",
                                   "pingpong_64x16+expand", "cooperative_128x192+expand"}) {
    const std::string::size_type plus = config.find('+');
    ForcedConfig forced(config.substr(0, plus));
    ScopedEnv expanded("FF_GEMM_EXPAND_B_SCALES", plus != std::string::npos ? "1" : nullptr);
    DeviceBuffer<uint16_t> out(std::vector<uint16_t>(static_cast<size_t>(m * n), kSentinel));
    cudaStream_t stream = nullptr;
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    const Status status = gemm_fp8_fp8_bf16_nt(
        {device_view(a.data, DType::kFloat8E4M3, {m, k}), device_view(sa.data, DType::kFloat32, {m, kb})},
        {device_view(b.data, DType::kFloat8E4M3, {n, k}),
         device_view(sb.data, DType::kFloat32, {ceil_div(n, 128), kb})},
        device_view(out.data, DType::kBFloat16, {m, n}), LaunchOptions{stream});
    ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
    ASSERT_TRUE(status.is_ok()) << status.to_string();
    ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
    for (int replay = 0; replay < 6; ++replay) {
      const std::vector<float>& scales = scale_sets[static_cast<size_t>(replay % 2)];
      ASSERT_EQ(cudaMemcpyAsync(sb.data, scales.data(), sizeof(float) * scales.size(), cudaMemcpyHostToDevice, stream),
                cudaSuccess);
      ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      EXPECT_LT(calc_diff(as_doubles(out.to_host()), as_doubles(expected[static_cast<size_t>(replay % 2)])), 1e-3)
          << "config '" << config << "', replay " << replay;
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(stream);
  }
}

// Contiguous: segments of 65, 129 and 1 rows (groups 2, 0, 1), each padded with -1 to a multiple of 128, plus one
// block of pure padding between them; n = 384 is an odd number of 128-wide tiles (the 1x2 cluster's second CTA
// of the last pair lies outside). Graph case: captured while m_indices is all -1, replayed after the real
// indices are written into the same buffer, so the kernels must read them on the device at run time.
// `split_tiles`: segments of 65, 129, 1, 128 and 1 rows (groups 2, 0, 1, 2, 0) with a padding block after the
// second, so 256-row tiles hold two groups (blocks 0-1: groups 2 and 0; 4-5: groups 1 and 2), a group and
// padding (2-3) and a last block alone (6).
void run_contiguous_case(bool capture_in_graph, bool split_tiles) {
  const int64_t groups = 3, n = 384, k = 384, kb = 3;
  std::vector<int32_t> indices;
  const std::vector<std::pair<int, int>> segments =
      split_tiles ? std::vector<std::pair<int, int>>{{2, 65}, {0, 129}, {-1, 0}, {1, 1}, {2, 128}, {0, 1}}
                  : std::vector<std::pair<int, int>>{{2, 65}, {-1, 0}, {0, 129}, {1, 1}};
  for (auto [group, rows] : segments) {
    const int64_t padded = rows == 0 ? 128 : ceil_div(rows, 128) * 128;
    for (int64_t r = 0; r < padded; ++r) indices.push_back(r < rows ? group : -1);
  }
  const auto m = static_cast<int64_t>(indices.size());
  Operands o = random_operands(m, n, k, groups, 11);
  std::vector<uint16_t> expected(static_cast<size_t>(m * n), kSentinel);
  ASSERT_TRUE(m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(
                  {TensorView::contiguous(o.a.data(), DType::kFloat8E4M3, {m, k}),
                   TensorView::contiguous(o.sa.data(), DType::kFloat32, {m, kb})},
                  {TensorView::contiguous(o.b.data(), DType::kFloat8E4M3, {groups, n, k}),
                   TensorView::contiguous(o.sb.data(), DType::kFloat32, {groups, n / 128, kb})},
                  TensorView::contiguous(expected.data(), DType::kBFloat16, {m, n}),
                  TensorView::contiguous(indices.data(), DType::kInt32, {m}))
                  .is_ok());
  DeviceBuffer<uint8_t> a(o.a), b(o.b);
  DeviceBuffer<float> sa_rows(o.sa), sb(o.sb);
  int64_t ld = 0;
  DeviceBuffer<float> sa_cols(to_column_major(o.sa, m, kb, &ld));
  DeviceBuffer<int32_t> m_indices(capture_in_graph ? std::vector<int32_t>(indices.size(), -1) : indices);
  for (const std::string& config : selected(kContiguousConfigs)) {
    for (bool column_major : {false, true}) {
      ForcedConfig forced(config);
      DeviceBuffer<uint16_t> out(std::vector<uint16_t>(static_cast<size_t>(m * n), kSentinel));
      const TensorView sa_view = column_major
                                     ? with_strides(device_view(sa_cols.data, DType::kFloat32, {m, kb}), {1, ld})
                                     : device_view(sa_rows.data, DType::kFloat32, {m, kb});
      cudaStream_t stream = nullptr;
      ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
      auto call = [&] {
        return m_grouped_gemm_fp8_fp8_bf16_nt_contiguous({device_view(a.data, DType::kFloat8E4M3, {m, k}), sa_view},
                                                         {device_view(b.data, DType::kFloat8E4M3, {groups, n, k}),
                                                          device_view(sb.data, DType::kFloat32, {groups, n / 128, kb})},
                                                         device_view(out.data, DType::kBFloat16, {m, n}),
                                                         device_view(m_indices.data, DType::kInt32, {m}),
                                                         LaunchOptions{stream});
      };
      if (capture_in_graph) {
        ASSERT_EQ(cudaMemcpy(m_indices.data, std::vector<int32_t>(indices.size(), -1).data(),
                             sizeof(int32_t) * indices.size(), cudaMemcpyHostToDevice),
                  cudaSuccess);
        cudaGraph_t graph = nullptr;
        cudaGraphExec_t exec = nullptr;
        ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
        const Status status = call();
        ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
        ASSERT_TRUE(status.is_ok()) << status.to_string();
        ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
        ASSERT_EQ(cudaMemcpy(m_indices.data, indices.data(), sizeof(int32_t) * indices.size(), cudaMemcpyHostToDevice),
                  cudaSuccess);
        ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
        ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(graph);
      } else {
        const Status status = call();
        ASSERT_TRUE(status.is_ok()) << status.to_string();
        ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      }
      cudaStreamDestroy(stream);
      const std::vector<uint16_t> actual = out.to_host();
      for (int64_t row = 0; row < m; ++row) {
        for (int64_t col = 0; col < n; ++col) {
          const uint16_t value = actual[static_cast<size_t>(row * n + col)];
          if (indices[static_cast<size_t>(row)] < 0) {
            ASSERT_EQ(value, 0) << "padding row " << row << " not zero-filled, config '" << config << "'";
          } else {
            ASSERT_NE(value, kSentinel) << "row " << row << " unwritten, config '" << config << "'";
          }
        }
      }
      EXPECT_LT(calc_diff(as_doubles(actual), as_doubles(expected)), 1e-3)
          << "config '" << config << "', column-major scales " << column_major << ", split tiles " << split_tiles;
    }
  }
}

TEST(GroupedCuda, ContiguousMatchesCpuAndZeroFillsPadding) {
  SKIP_WITHOUT_GPU();
  run_contiguous_case(/*capture_in_graph=*/false, /*split_tiles=*/false);
  run_contiguous_case(/*capture_in_graph=*/false, /*split_tiles=*/true);
}

// Few SMs: each CTA walks several tiles; with 256-row tiles, tiles of two groups (twice the K blocks) alternate with
// tiles of one, so the pipeline's stage accounting must carry from one to the next.
TEST(GroupedCuda, ContiguousOnFewSmsWalksTilesOfOneAndTwoGroups) {
  SKIP_WITHOUT_GPU();
  const int previous = get_num_sms();
  ASSERT_TRUE(set_num_sms(2).is_ok());  // even: the 1x2-cluster kernels launch whole CTA pairs
  run_contiguous_case(/*capture_in_graph=*/false, /*split_tiles=*/true);
  ASSERT_TRUE(set_num_sms(previous).is_ok());
}

TEST(GroupedCuda, ContiguousRunsInsideACudaGraphReadingIndicesAtReplay) {
  SKIP_WITHOUT_GPU();
  run_contiguous_case(/*capture_in_graph=*/true, /*split_tiles=*/false);
  run_contiguous_case(/*capture_in_graph=*/true, /*split_tiles=*/true);
}

struct MaskedCase {
  int64_t groups, m_max, n, k;
  std::vector<int32_t> masked_m;
  int64_t expected_m;
};

// How a masked case hands A's scales to the GPU: row-major (G, m_max, kb), or DeepGEMM's TMA-aligned column-major
// layout (M-major per group: strides (ld * kb, 1, ld), ld = m_max rounded up to 4), which the masked-only kernel
// reads without a repack.
enum class ScaleLayout { kRowMajor, kTmaColumnMajor };

void run_masked_case(const MaskedCase& c, bool capture_in_graph, ScaleLayout layout = ScaleLayout::kRowMajor) {
  const int64_t kb = c.k / 128, rows = c.groups * c.m_max;
  const int64_t ld = (c.m_max + 3) / 4 * 4;
  Operands o = random_operands(rows, c.n, c.k, c.groups, static_cast<uint32_t>(c.m_max + c.n));
  std::vector<uint16_t> expected(static_cast<size_t>(rows * c.n), kSentinel);
  ASSERT_TRUE(m_grouped_gemm_fp8_fp8_bf16_nt_masked(
                  {TensorView::contiguous(o.a.data(), DType::kFloat8E4M3, {c.groups, c.m_max, c.k}),
                   TensorView::contiguous(o.sa.data(), DType::kFloat32, {c.groups, c.m_max, kb})},
                  {TensorView::contiguous(o.b.data(), DType::kFloat8E4M3, {c.groups, c.n, c.k}),
                   TensorView::contiguous(o.sb.data(), DType::kFloat32, {c.groups, ceil_div(c.n, 128), kb})},
                  TensorView::contiguous(expected.data(), DType::kBFloat16, {c.groups, c.m_max, c.n}),
                  TensorView::contiguous(const_cast<int32_t*>(c.masked_m.data()), DType::kInt32, {c.groups}),
                  c.expected_m)
                  .is_ok());
  DeviceBuffer<uint8_t> a(o.a), b(o.b);
  DeviceBuffer<float> sb(o.sb);
  std::vector<float> sa_host = o.sa;
  if (layout == ScaleLayout::kTmaColumnMajor) {
    sa_host.assign(static_cast<size_t>(c.groups * ld * kb), std::nanf(""));  // padding rows never read as values
    for (int64_t g = 0; g < c.groups; ++g) {
      for (int64_t r = 0; r < c.m_max; ++r) {
        for (int64_t b_ = 0; b_ < kb; ++b_) {
          sa_host[static_cast<size_t>(g * ld * kb + b_ * ld + r)] =
              o.sa[static_cast<size_t>((g * c.m_max + r) * kb + b_)];
        }
      }
    }
  }
  DeviceBuffer<float> sa(sa_host);
  const TensorView sa_view =
      layout == ScaleLayout::kTmaColumnMajor
          ? with_strides(device_view(sa.data, DType::kFloat32, {c.groups, c.m_max, kb}), {ld * kb, 1, ld})
          : device_view(sa.data, DType::kFloat32, {c.groups, c.m_max, kb});
  // Graph case: capture with all-zero counts, then write the real counts into the same device buffer before
  // replaying: the kernel must read masked_m on the device at run time.
  DeviceBuffer<int32_t> masked_m(capture_in_graph ? std::vector<int32_t>(c.masked_m.size(), 0) : c.masked_m);
  for (const std::string& config : selected(kMaskedConfigs)) {
    ForcedConfig forced(config);
    DeviceBuffer<uint16_t> out(std::vector<uint16_t>(static_cast<size_t>(rows * c.n), kSentinel));
    cudaStream_t stream = nullptr;
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
    auto call = [&] {
      return m_grouped_gemm_fp8_fp8_bf16_nt_masked(
          {device_view(a.data, DType::kFloat8E4M3, {c.groups, c.m_max, c.k}), sa_view},
          {device_view(b.data, DType::kFloat8E4M3, {c.groups, c.n, c.k}),
           device_view(sb.data, DType::kFloat32, {c.groups, ceil_div(c.n, 128), kb})},
          device_view(out.data, DType::kBFloat16, {c.groups, c.m_max, c.n}),
          device_view(masked_m.data, DType::kInt32, {c.groups}), c.expected_m, LaunchOptions{stream});
    };
    if (capture_in_graph) {
      cudaGraph_t graph = nullptr;
      cudaGraphExec_t exec = nullptr;
      ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
      const Status status = call();
      ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
      ASSERT_TRUE(status.is_ok()) << status.to_string();
      ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
      ASSERT_EQ(
          cudaMemcpy(masked_m.data, c.masked_m.data(), sizeof(int32_t) * c.masked_m.size(), cudaMemcpyHostToDevice),
          cudaSuccess);
      ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      cudaGraphExecDestroy(exec);
      cudaGraphDestroy(graph);
    } else {
      const Status status = call();
      ASSERT_TRUE(status.is_ok()) << status.to_string();
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    }
    cudaStreamDestroy(stream);
    const std::vector<uint16_t> actual = out.to_host();
    std::vector<double> actual_valid, expected_valid;
    for (int64_t g = 0; g < c.groups; ++g) {
      for (int64_t r = 0; r < c.m_max; ++r) {
        for (int64_t col = 0; col < c.n; ++col) {
          const size_t i = static_cast<size_t>((g * c.m_max + r) * c.n + col);
          if (r >= c.masked_m[static_cast<size_t>(g)]) {
            ASSERT_EQ(actual[i], kSentinel)
                << "masked row " << r << " of group " << g << " written, config '" << config << "'";
          } else {
            ASSERT_NE(actual[i], kSentinel) << "row " << r << " of group " << g << " unwritten";
            actual_valid.push_back(testing::bf16_value(actual[i]));
            expected_valid.push_back(testing::bf16_value(expected[i]));
          }
        }
      }
    }
    EXPECT_LT(calc_diff(actual_valid, expected_valid), 1e-3) << "config '" << config << "'";
  }
}

TEST(GroupedCuda, MaskedMatchesCpuAndLeavesMaskedRowsUntouched) {
  SKIP_WITHOUT_GPU();
  run_masked_case({4, 129, 256, 512, {0, 1, 65, 129}, 64}, /*capture_in_graph=*/false);
  run_masked_case({2, 256, 384, 256, {200, 17}, 128}, /*capture_in_graph=*/false);
}

TEST(GroupedCuda, MaskedReadsTmaColumnMajorScales) {
  SKIP_WITHOUT_GPU();
  run_masked_case({3, 130, 256, 384, {130, 0, 67}, 64}, /*capture_in_graph=*/false, ScaleLayout::kTmaColumnMajor);
}

// Few SMs: each CTA of the persistent grid walks several tiles across groups (the masked-only kernel's scheduler
// skips the empty groups and the tiles past masked_m).
TEST(GroupedCuda, MaskedOnFewSmsWalksTilesAcrossGroups) {
  SKIP_WITHOUT_GPU();
  const int previous = get_num_sms();
  ASSERT_TRUE(set_num_sms(4).is_ok());  // even: the 2x1-cluster kernel among the configurations needs it
  run_masked_case({5, 384, 512, 256, {384, 0, 300, 129, 1}, 200}, /*capture_in_graph=*/false);
  run_masked_case({2, 200, 256, 256, {1, 200}, 100}, /*capture_in_graph=*/false, ScaleLayout::kTmaColumnMajor);
  ASSERT_TRUE(set_num_sms(previous).is_ok());
}

// The dense-only (narrow 64-row, 256-row) and contiguous-only (indexed) kernels are refused on a masked GEMM, naming
// the forced configuration, and nothing is written.
TEST(GroupedCuda, MaskedRefusesDenseOrContiguousOnlyKernels) {
  SKIP_WITHOUT_GPU();
  const int64_t groups = 1, m = 128, n = 128, k = 256, kb = 2;
  Operands o = random_operands(groups * m, n, k, groups, 12);
  DeviceBuffer<uint8_t> a(o.a), b(o.b);
  DeviceBuffer<float> sa(o.sa), sb(o.sb);
  DeviceBuffer<int32_t> masked_m(std::vector<int32_t>{static_cast<int32_t>(m)});
  DeviceBuffer<uint16_t> out(std::vector<uint16_t>(static_cast<size_t>(groups * m * n), kSentinel));
  for (const auto& [config, expected] :
       {std::pair<std::string, std::string>{"pingpong_64x32", "serves only the dense GEMM"},
        std::pair<std::string, std::string>{"cooperative_256x128", "serves only the dense GEMM"},
        std::pair<std::string, std::string>{"indexed_128x128", "serve only the contiguous grouped GEMM"}}) {
    ForcedConfig forced(config);
    const Status status =
        m_grouped_gemm_fp8_fp8_bf16_nt_masked({device_view(a.data, DType::kFloat8E4M3, {groups, m, k}),
                                               device_view(sa.data, DType::kFloat32, {groups, m, kb})},
                                              {device_view(b.data, DType::kFloat8E4M3, {groups, n, k}),
                                               device_view(sb.data, DType::kFloat32, {groups, ceil_div(n, 128), kb})},
                                              device_view(out.data, DType::kBFloat16, {groups, m, n}),
                                              device_view(masked_m.data, DType::kInt32, {groups}), m);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << config;
    EXPECT_THAT(status.message(), ::testing::HasSubstr(config)) << config;
    EXPECT_THAT(status.message(), ::testing::HasSubstr(expected)) << config;
  }
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  for (uint16_t value : out.to_host()) ASSERT_EQ(value, kSentinel) << "a refused call wrote output";
}

TEST(GroupedCuda, MaskedRunsInsideACudaGraphReadingCountsAtReplay) {
  SKIP_WITHOUT_GPU();
  run_masked_case({3, 96, 128, 256, {96, 5, 40}, 48}, /*capture_in_graph=*/true);
}

TEST(GemmCuda, BadLayoutIsRejectedBeforeLaunch) {
  SKIP_WITHOUT_GPU();
  DeviceBuffer<uint8_t> a(std::vector<uint8_t>(64 * 200)), b(std::vector<uint8_t>(64 * 200));
  DeviceBuffer<float> sa(std::vector<float>(64 * 2)), sb(std::vector<float>(2));
  DeviceBuffer<uint16_t> out(std::vector<uint16_t>(64 * 64));
  const Status status = gemm_fp8_fp8_bf16_nt(
      {device_view(a.data, DType::kFloat8E4M3, {64, 200}), device_view(sa.data, DType::kFloat32, {64, 2})},
      {device_view(b.data, DType::kFloat8E4M3, {64, 200}), device_view(sb.data, DType::kFloat32, {1, 2})},
      device_view(out.data, DType::kBFloat16, {64, 64}));
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), ::testing::HasSubstr("k=200 is not a multiple of 128"));
}

TEST(GemmCuda, MaskedOnlyConfigOutsideMaskedIsRejected) {
  SKIP_WITHOUT_GPU();
  DeviceBuffer<uint8_t> a(std::vector<uint8_t>(128 * 128)), b(std::vector<uint8_t>(128 * 128));
  DeviceBuffer<float> sa(std::vector<float>(128, 1.0f)), sb(std::vector<float>(1, 1.0f));
  DeviceBuffer<uint16_t> out(std::vector<uint16_t>(128 * 128, kSentinel));
  DeviceBuffer<int32_t> m_indices(std::vector<int32_t>(128, 0));
  ForcedConfig forced("masked_128x128_overlap");
  Status status = gemm_fp8_fp8_bf16_nt(
      {device_view(a.data, DType::kFloat8E4M3, {128, 128}), device_view(sa.data, DType::kFloat32, {128, 1})},
      {device_view(b.data, DType::kFloat8E4M3, {128, 128}), device_view(sb.data, DType::kFloat32, {1, 1})},
      device_view(out.data, DType::kBFloat16, {128, 128}));
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), ::testing::HasSubstr("masked_128x128_overlap"));
  EXPECT_THAT(status.message(), ::testing::HasSubstr("only the masked grouped GEMM"));
  status = m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(
      {device_view(a.data, DType::kFloat8E4M3, {128, 128}), device_view(sa.data, DType::kFloat32, {128, 1})},
      {device_view(b.data, DType::kFloat8E4M3, {1, 128, 128}), device_view(sb.data, DType::kFloat32, {1, 1, 1})},
      device_view(out.data, DType::kBFloat16, {128, 128}), device_view(m_indices.data, DType::kInt32, {128}));
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), ::testing::HasSubstr("only the masked grouped GEMM"));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  for (uint16_t value : out.to_host()) ASSERT_EQ(value, kSentinel) << "a refused call wrote output";
}

TEST(GemmCuda, IndexedConfigOutsideContiguousIsRejected) {
  SKIP_WITHOUT_GPU();
  DeviceBuffer<uint8_t> a(std::vector<uint8_t>(64 * 128)), b(std::vector<uint8_t>(128 * 128));
  DeviceBuffer<float> sa(std::vector<float>(64, 1.0f)), sb(std::vector<float>(1, 1.0f));
  DeviceBuffer<uint16_t> out(std::vector<uint16_t>(64 * 128));
  DeviceBuffer<int32_t> masked_m(std::vector<int32_t>{64});
  for (const char* config : {"indexed_128x128", "indexed_128x192", "indexed_128x128_overlap", "indexed_128x128_stagger",
                             "indexed_256x128_cluster1x2"}) {
    ForcedConfig forced(config);
    Status status = gemm_fp8_fp8_bf16_nt(
        {device_view(a.data, DType::kFloat8E4M3, {64, 128}), device_view(sa.data, DType::kFloat32, {64, 1})},
        {device_view(b.data, DType::kFloat8E4M3, {128, 128}), device_view(sb.data, DType::kFloat32, {1, 1})},
        device_view(out.data, DType::kBFloat16, {64, 128}));
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), ::testing::HasSubstr("only the contiguous grouped GEMM"));
    status = m_grouped_gemm_fp8_fp8_bf16_nt_masked(
        {device_view(a.data, DType::kFloat8E4M3, {1, 64, 128}), device_view(sa.data, DType::kFloat32, {1, 64, 1})},
        {device_view(b.data, DType::kFloat8E4M3, {1, 128, 128}), device_view(sb.data, DType::kFloat32, {1, 1, 1})},
        device_view(out.data, DType::kBFloat16, {1, 64, 128}), device_view(masked_m.data, DType::kInt32, {1}), 64);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), ::testing::HasSubstr("only the contiguous grouped GEMM"));
  }
}

}  // namespace
}  // namespace ff::gemm
