#include "ff/fs/map_store.h"

#include <cstring>

namespace ff::fs {

Result<std::optional<ClusterMap>> MemMapStore::load() {
  std::lock_guard lock(mutex_);
  return map_;
}

Status MemMapStore::save(const ClusterMap& map) {
  std::lock_guard lock(mutex_);
  if (fail_saves_ > 0) {
    --fail_saves_;
    return io_error("injected cluster map save failure (routing version {})", map.routing_version);
  }
  map_ = map;
  ++saves_;
  return Status::ok();
}

void MemMapStore::fail_next_saves(int count) {
  std::lock_guard lock(mutex_);
  fail_saves_ = count;
}

uint64_t MemMapStore::saves() const {
  std::lock_guard lock(mutex_);
  return saves_;
}

namespace {

constexpr uint32_t kMagic = 0x46464d31;  // "FFM1"

class Writer {
 public:
  void u64(uint64_t value) { bytes_.append(reinterpret_cast<const char*>(&value), sizeof value); }
  void str(const std::string& value) {
    u64(value.size());
    bytes_.append(value);
  }
  std::string take() { return std::move(bytes_); }

 private:
  std::string bytes_;
};

class Reader {
 public:
  explicit Reader(std::string_view bytes) : bytes_(bytes) {}
  bool u64(uint64_t& value) {
    if (bytes_.size() - offset_ < sizeof value) return false;
    std::memcpy(&value, bytes_.data() + offset_, sizeof value);
    offset_ += sizeof value;
    return true;
  }
  bool str(std::string& value) {
    uint64_t size = 0;
    if (!u64(size) || bytes_.size() - offset_ < size) return false;
    value.assign(bytes_.data() + offset_, size);
    offset_ += size;
    return true;
  }
  bool done() const { return offset_ == bytes_.size(); }

 private:
  std::string_view bytes_;
  size_t offset_ = 0;
};

}  // namespace

std::string encode_cluster_map(const ClusterMap& map) {
  Writer w;
  w.u64(kMagic);
  w.u64(map.routing_version);
  w.u64(map.nodes.size());
  for (const auto& [id, node] : map.nodes) {
    w.u64(node.id);
    w.str(node.address);
    w.u64(static_cast<uint64_t>(node.status));
  }
  w.u64(map.targets.size());
  for (const auto& [id, target] : map.targets) {
    w.u64(target.id);
    w.u64(target.node);
    w.u64(target.chain);
    w.u64(static_cast<uint64_t>(target.public_state));
    w.u64(static_cast<uint64_t>(target.local_state));
  }
  w.u64(map.chains.size());
  for (const auto& [id, chain] : map.chains) {
    w.u64(chain.id);
    w.u64(chain.version);
    w.u64(chain.targets.size());
    for (const ChainTarget& entry : chain.targets) {
      w.u64(entry.target);
      w.u64(static_cast<uint64_t>(entry.state));
    }
  }
  w.u64(map.chain_tables.size());
  for (const auto& [id, table] : map.chain_tables) {
    w.u64(table.id);
    w.u64(table.replication);
    w.u64(table.chains.size());
    for (ChainId chain : table.chains) w.u64(chain);
  }
  return w.take();
}

Result<ClusterMap> decode_cluster_map(std::string_view bytes) {
  Reader r(bytes);
  auto bad = [&](std::string_view what) {
    return fs_error(FsError::kMalformed, fmt::format("cluster map of {} bytes is truncated or corrupt at {}", bytes.size(), what));
  };
  uint64_t magic = 0, count = 0, a = 0, b = 0, c = 0, d = 0, e = 0;
  if (!r.u64(magic) || magic != kMagic) return bad("magic");
  ClusterMap map;
  if (!r.u64(map.routing_version) || !r.u64(count) || count > bytes.size()) return bad("header");
  for (uint64_t i = 0; i < count; ++i) {
    NodeInfo node;
    if (!r.u64(a) || !r.str(node.address) || !r.u64(b) || b > 1) return bad("node");
    node.id = static_cast<NodeId>(a);
    node.status = static_cast<NodeStatus>(b);
    map.nodes[node.id] = node;
  }
  if (!r.u64(count) || count > bytes.size()) return bad("targets");
  for (uint64_t i = 0; i < count; ++i) {
    if (!r.u64(a) || !r.u64(b) || !r.u64(c) || !r.u64(d) || !r.u64(e) || d > 4 || e > 2) return bad("target");
    map.targets[a] = TargetInfo{.id = a, .node = static_cast<NodeId>(b), .chain = static_cast<ChainId>(c),
                                .public_state = static_cast<PublicTargetState>(d),
                                .local_state = static_cast<LocalTargetState>(e)};
  }
  if (!r.u64(count) || count > bytes.size()) return bad("chains");
  for (uint64_t i = 0; i < count; ++i) {
    ChainInfo chain;
    uint64_t size = 0;
    if (!r.u64(a) || !r.u64(b) || !r.u64(size) || size > bytes.size()) return bad("chain");
    chain.id = static_cast<ChainId>(a);
    chain.version = static_cast<ChainVersion>(b);
    for (uint64_t j = 0; j < size; ++j) {
      if (!r.u64(c) || !r.u64(d) || d > 4) return bad("chain target");
      chain.targets.push_back(ChainTarget{c, static_cast<PublicTargetState>(d)});
    }
    map.chains[chain.id] = std::move(chain);
  }
  if (!r.u64(count) || count > bytes.size()) return bad("chain tables");
  for (uint64_t i = 0; i < count; ++i) {
    ChainTable table;
    uint64_t size = 0;
    if (!r.u64(a) || !r.u64(b) || !r.u64(size) || size > bytes.size()) return bad("chain table");
    table.id = static_cast<ChainTableId>(a);
    table.replication = static_cast<uint32_t>(b);
    for (uint64_t j = 0; j < size; ++j) {
      if (!r.u64(c)) return bad("chain table entry");
      table.chains.push_back(static_cast<ChainId>(c));
    }
    map.chain_tables[table.id] = std::move(table);
  }
  if (!r.done()) return bad("end (trailing bytes)");
  return map;
}

}  // namespace ff::fs
