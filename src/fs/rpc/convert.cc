#include "convert.h"

#include <cstring>
#include <utility>

namespace ff::fs::rpc {

namespace {

// ---------------------------------------------------------------- bytes
// NOTE: protobuf 3.21 keeps `bytes` in std::string; one copy each way between Bytes and the string is
// the cost of the generated API (docs/fs-operations.md measures it).
// Both copy without zero-filling the destination first (resize() + memcpy touched every byte twice).
void bytes_to(std::span<const std::byte> bytes, std::string* out) {
  out->assign(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}
Bytes bytes_from(const std::string& text) {
  const auto* begin = reinterpret_cast<const std::byte*>(text.data());
  return Bytes(begin, begin + text.size());
}

Status malformed(std::string_view what) { return fs_error(FsError::kMalformed, std::string(what)); }

template <typename E>
Result<E> enum_from(uint32_t value, uint32_t max, std::string_view what) {
  if (value > max) return malformed(fmt::format("{} {} is out of range [0, {}]", what, value, max));
  return static_cast<E>(value);
}

// ---------------------------------------------------------------- shared types
void to(const ChunkId& v, pb::ChunkId* p) { p->set_inode(v.inode); p->set_index(v.index); }
ChunkId from(const pb::ChunkId& p) { return ChunkId{p.inode(), p.index()}; }
void to(const ChunkMeta& v, pb::ChunkMeta* p) {
  to(v.id, p->mutable_id());
  p->set_committed_version(v.committed_version);
  p->set_pending_version(v.pending_version);
  p->set_chain_version(v.chain_version);
  p->set_committed_length(v.committed_length);
  p->set_pending_length(v.pending_length);
  p->set_committed_crc32c(v.committed_crc32c);
  p->set_pending_crc32c(v.pending_crc32c);
}
ChunkMeta from(const pb::ChunkMeta& p) {
  return ChunkMeta{from(p.id()), p.committed_version(), p.pending_version(), p.chain_version(),
                   p.committed_length(), p.pending_length(), p.committed_crc32c(), p.pending_crc32c()};
}
void to(const ClientRequestId& v, pb::ClientRequestId* p) {
  p->set_client(v.client); p->set_channel(v.channel); p->set_seq(v.seq);
}
ClientRequestId from(const pb::ClientRequestId& p) { return ClientRequestId{p.client(), p.channel(), p.seq()}; }
void to(const Status& v, pb::StatusProto* p) { p->set_code(static_cast<int>(v.code())); p->set_message(v.message()); }
// Returns the decoding error; the carried status goes to *out.
Status from(const pb::StatusProto& p, Status* out) {
  if (p.code() < 0 || p.code() > static_cast<int>(StatusCode::kInternal)) {
    return malformed(fmt::format("status code {} is out of range", p.code()));
  }
  *out = p.code() == 0 ? Status::ok() : Status(static_cast<StatusCode>(p.code()), p.message());
  return Status::ok();
}

void to(const RoutingInfo& v, pb::RoutingInfo* p) {
  p->set_version(v.version);
  for (const auto& [id, node] : v.nodes) {
    auto* n = p->add_nodes();
    n->set_id(node.id); n->set_address(node.address); n->set_status(static_cast<uint32_t>(node.status));
  }
  for (const auto& [id, target] : v.targets) {
    auto* t = p->add_targets();
    t->set_id(target.id); t->set_node(target.node); t->set_chain(target.chain);
    t->set_public_state(static_cast<uint32_t>(target.public_state));
    t->set_local_state(static_cast<uint32_t>(target.local_state));
  }
  for (const auto& [id, chain] : v.chains) {
    auto* c = p->add_chains();
    c->set_id(chain.id); c->set_version(chain.version);
    for (const ChainTarget& ct : chain.targets) {
      auto* t = c->add_targets();
      t->set_target(ct.target); t->set_state(static_cast<uint32_t>(ct.state));
    }
  }
  for (const auto& [id, table] : v.chain_tables) {
    auto* t = p->add_chain_tables();
    t->set_id(table.id); t->set_replication(table.replication);
    for (ChainId chain : table.chains) t->add_chains(chain);
  }
}
Result<RoutingInfo> from(const pb::RoutingInfo& p) {
  RoutingInfo v;
  v.version = p.version();
  for (const auto& n : p.nodes()) {
    FF_ASSIGN_OR_RETURN(NodeStatus status, enum_from<NodeStatus>(n.status(), 1, "node status"));
    v.nodes[n.id()] = NodeInfo{n.id(), n.address(), status};
  }
  for (const auto& t : p.targets()) {
    FF_ASSIGN_OR_RETURN(auto ps, enum_from<PublicTargetState>(t.public_state(), 4, "public target state"));
    FF_ASSIGN_OR_RETURN(auto ls, enum_from<LocalTargetState>(t.local_state(), 2, "local target state"));
    v.targets[t.id()] = TargetInfo{t.id(), t.node(), t.chain(), ps, ls};
  }
  for (const auto& c : p.chains()) {
    ChainInfo chain;
    chain.id = c.id();
    chain.version = c.version();
    for (const auto& t : c.targets()) {
      FF_ASSIGN_OR_RETURN(auto state, enum_from<PublicTargetState>(t.state(), 4, "chain target state"));
      chain.targets.push_back(ChainTarget{t.target(), state});
    }
    v.chains[chain.id] = std::move(chain);
  }
  for (const auto& t : p.chain_tables()) {
    ChainTable table{t.id(), t.replication(), {t.chains().begin(), t.chains().end()}};
    v.chain_tables[table.id] = std::move(table);
  }
  return v;
}

// ---------------------------------------------------------------- storage items
void to(WriteReq&& v, pb::WriteReq* p) {
  to(v.request_id, p->mutable_request_id());
  p->set_chain(v.chain); p->set_chain_version(v.chain_version);
  to(v.chunk, p->mutable_chunk());
  p->set_offset(v.offset);
  bytes_to(v.payload(), p->mutable_data());
  p->set_chunk_size(v.chunk_size);
  p->set_truncate(v.truncate);
}
WriteReq from(pb::WriteReq&& p) {
  WriteReq write{from(p.request_id()), p.chain(), p.chain_version(), from(p.chunk()), p.offset(), bytes_from(p.data())};
  write.chunk_size = p.chunk_size();
  write.truncate = p.truncate();
  return write;
}
void to(const WriteRsp& v, pb::WriteRsp* p) { p->set_version(v.version); p->set_crc32c(v.crc32c); p->set_length(v.length); }
WriteRsp from(const pb::WriteRsp& p) { return WriteRsp{p.version(), p.crc32c(), p.length()}; }
void to(const ReadReq& v, pb::ReadReq* p) {
  p->set_chain(v.chain); p->set_chain_version(v.chain_version); p->set_target(v.target);
  to(v.chunk, p->mutable_chunk());
  p->set_offset(v.offset); p->set_length(v.length); p->set_mode(static_cast<uint32_t>(v.mode));
  p->set_any_state(v.any_state);
  p->set_local_host(v.local_host);
  p->set_whole_chunk(v.whole_chunk);
}
Result<ReadReq> from(const pb::ReadReq& p) {
  FF_ASSIGN_OR_RETURN(ReadMode mode, enum_from<ReadMode>(p.mode(), 1, "read mode"));
  ReadReq read{p.chain(), p.chain_version(), p.target(), from(p.chunk()), p.offset(), p.length(), mode};
  read.any_state = p.any_state();
  read.local_host = p.local_host();
  read.whole_chunk = p.whole_chunk();
  return read;
}
void to(const LocalExtent& v, pb::LocalExtent* p) {
  p->set_path(v.path);
  p->set_device(v.device);
  p->set_inode(v.inode);
  p->set_file_offset(v.file_offset);
  p->set_position(v.position);
  p->set_verify_bytes(v.verify_bytes);
  p->set_skip(v.skip);
  p->set_count(v.count);
  p->set_segment_bytes(v.segment_bytes);
  p->mutable_segment_crcs()->Add(v.segment_crcs.begin(), v.segment_crcs.end());
  p->set_stamps(v.stamps);
}
LocalExtent from(const pb::LocalExtent& p) {
  return LocalExtent{.path = p.path(),
                     .device = p.device(),
                     .inode = p.inode(),
                     .file_offset = p.file_offset(),
                     .position = p.position(),
                     .verify_bytes = p.verify_bytes(),
                     .skip = p.skip(),
                     .count = p.count(),
                     .segment_bytes = p.segment_bytes(),
                     .segment_crcs = std::vector<uint32_t>(p.segment_crcs().begin(), p.segment_crcs().end()),
                     .stamps = p.stamps()};
}
void to(ReadRsp&& v, pb::ReadRsp* p) {
  to(v.meta, p->mutable_meta());
  bytes_to(v.payload(), p->mutable_data());
  p->set_dirty(v.dirty);
  if (v.local) to(*v.local, p->mutable_local());
}
ReadRsp from(pb::ReadRsp&& p) {
  ReadRsp rsp{from(p.meta()), bytes_from(p.data()), p.dirty()};
  if (p.has_local()) rsp.local = from(p.local());
  return rsp;
}

}  // namespace

void request_to_proto(Request&& request, pb::Envelope* out) {
  std::visit(
      [&](auto&& r) {
        using T = std::decay_t<decltype(r)>;
        if constexpr (std::is_same_v<T, RegisterNodeReq>) {
          auto* p = out->mutable_register_node_req();
          p->set_node(r.node); p->set_type(static_cast<uint32_t>(r.type)); p->set_address(r.address);
          p->set_incarnation(r.incarnation);
        } else if constexpr (std::is_same_v<T, HeartbeatReq>) {
          auto* p = out->mutable_heartbeat_req();
          p->set_node(r.node); p->set_address(r.address); p->set_known_routing_version(r.known_routing_version);
          p->set_incarnation(r.incarnation);
          for (const auto& t : r.targets) {
            auto* h = p->add_targets();
            h->set_target(t.target); h->set_local_state(static_cast<uint32_t>(t.local_state));
            h->set_capacity_bytes(t.capacity_bytes); h->set_free_bytes(t.free_bytes); h->set_filesystem(t.filesystem);
          }
        } else if constexpr (std::is_same_v<T, GetRoutingReq>) {
          out->mutable_get_routing_req()->set_known_routing_version(r.known_routing_version);
        } else if constexpr (std::is_same_v<T, CreateChainTableReq>) {
          auto* p = out->mutable_create_chain_table_req();
          p->set_table(r.table); p->set_replication(r.replication); p->set_targets_per_node(r.targets_per_node);
          for (NodeId node : r.nodes) p->add_nodes(node);
        } else if constexpr (std::is_same_v<T, SetTargetOfflineReq>) {
          auto* p = out->mutable_set_target_offline_req();
          p->set_target(r.target); p->set_offline(r.offline);
        } else if constexpr (std::is_same_v<T, WriteReq>) {
          to(std::move(r), out->mutable_write_req());
        } else if constexpr (std::is_same_v<T, ReadReq>) {
          to(r, out->mutable_read_req());
        } else if constexpr (std::is_same_v<T, BatchReadReq>) {
          auto* p = out->mutable_batch_read_req();
          for (const auto& item : r.reads) to(item, p->add_reads());
        } else if constexpr (std::is_same_v<T, BatchWriteReq>) {
          auto* p = out->mutable_batch_write_req();
          for (auto& item : r.writes) to(std::move(item), p->add_writes());
        } else if constexpr (std::is_same_v<T, QueryLastChunkReq>) {
          auto* p = out->mutable_query_last_chunk_req();
          p->set_chain(r.chain); p->set_chain_version(r.chain_version); p->set_target(r.target);
          p->set_inode(r.inode); p->set_begin_index(r.begin_index); p->set_end_index(r.end_index);
        } else if constexpr (std::is_same_v<T, RemoveChunksReq>) {
          auto* p = out->mutable_remove_chunks_req();
          to(r.request_id, p->mutable_request_id());
          p->set_chain(r.chain); p->set_chain_version(r.chain_version);
          to(r.begin, p->mutable_begin()); to(r.end, p->mutable_end());
        } else if constexpr (std::is_same_v<T, ForwardReq>) {
          auto* p = out->mutable_forward_req();
          to(r.request_id, p->mutable_request_id());
          p->set_chain(r.chain); p->set_chain_version(r.chain_version); p->set_target(r.target);
          to(r.chunk, p->mutable_chunk());
          p->set_version(r.version); p->set_offset(r.offset);
          bytes_to(r.payload(), p->mutable_data());
          p->set_chunk_size(r.chunk_size);
          p->set_full_replacement(r.full_replacement); p->set_expected_crc32c(r.expected_crc32c);
          p->set_expected_length(r.expected_length); p->set_remove(r.remove);
          to(r.remove_end, p->mutable_remove_end());
          p->set_resolve_pending(r.resolve_pending);
        } else if constexpr (std::is_same_v<T, SyncDumpMetaReq>) {
          auto* p = out->mutable_sync_dump_meta_req();
          p->set_chain(r.chain); p->set_chain_version(r.chain_version); p->set_target(r.target);
          to(r.from, p->mutable_from());
          p->set_limit(r.limit);
        } else if constexpr (std::is_same_v<T, SyncReplaceReq>) {
          auto* p = out->mutable_sync_replace_req();
          p->set_chain(r.chain); p->set_chain_version(r.chain_version); p->set_target(r.target);
          to(r.chunk, p->mutable_chunk());
          p->set_version(r.version); p->set_chunk_chain_version(r.chunk_chain_version);
          bytes_to(r.data, p->mutable_data());
          p->set_remove(r.remove);
        } else if constexpr (std::is_same_v<T, SyncDoneReq>) {
          auto* p = out->mutable_sync_done_req();
          p->set_chain(r.chain); p->set_chain_version(r.chain_version); p->set_target(r.target);
        } else if constexpr (std::is_same_v<T, MetaCallReq>) {
          auto* p = out->mutable_meta_call_req();
          p->set_batch(r.batch);
          p->set_body(std::move(r.body));
        } else {
          static_assert(sizeof(T) == 0, "request type without a conversion");
        }
      },
      std::move(request));
}

Result<Request> request_from_proto(pb::Envelope&& e) {
  using B = pb::Envelope;
  switch (e.body_case()) {
    case B::kRegisterNodeReq: {
      const auto& p = e.register_node_req();
      FF_ASSIGN_OR_RETURN(NodeType type, enum_from<NodeType>(p.type(), 3, "node type"));
      return Request(RegisterNodeReq{p.node(), type, p.address(), p.incarnation()});
    }
    case B::kHeartbeatReq: {
      const auto& p = e.heartbeat_req();
      HeartbeatReq r{p.node(), p.address(), p.known_routing_version(), {}, p.incarnation()};
      for (const auto& t : p.targets()) {
        FF_ASSIGN_OR_RETURN(auto state, enum_from<LocalTargetState>(t.local_state(), 2, "local target state"));
        r.targets.push_back(TargetHeartbeat{t.target(), state, t.capacity_bytes(), t.free_bytes(), t.filesystem()});
      }
      return Request(std::move(r));
    }
    case B::kGetRoutingReq: return Request(GetRoutingReq{e.get_routing_req().known_routing_version()});
    case B::kCreateChainTableReq: {
      const auto& p = e.create_chain_table_req();
      return Request(CreateChainTableReq{p.table(), p.replication(), p.targets_per_node(),
                                         {p.nodes().begin(), p.nodes().end()}});
    }
    case B::kSetTargetOfflineReq:
      return Request(SetTargetOfflineReq{e.set_target_offline_req().target(), e.set_target_offline_req().offline()});
    case B::kWriteReq: return Request(from(std::move(*e.mutable_write_req())));
    case B::kReadReq: {
      FF_ASSIGN_OR_RETURN(ReadReq r, from(e.read_req()));
      return Request(std::move(r));
    }
    case B::kBatchReadReq: {
      BatchReadReq r;
      for (const auto& item : e.batch_read_req().reads()) {
        FF_ASSIGN_OR_RETURN(ReadReq read, from(item));
        r.reads.push_back(std::move(read));
      }
      return Request(std::move(r));
    }
    case B::kBatchWriteReq: {
      BatchWriteReq r;
      for (auto& item : *e.mutable_batch_write_req()->mutable_writes()) r.writes.push_back(from(std::move(item)));
      return Request(std::move(r));
    }
    case B::kQueryLastChunkReq: {
      const auto& p = e.query_last_chunk_req();
      return Request(QueryLastChunkReq{p.chain(), p.chain_version(), p.target(), p.inode(), p.begin_index(),
                                       p.end_index()});
    }
    case B::kRemoveChunksReq: {
      const auto& p = e.remove_chunks_req();
      return Request(RemoveChunksReq{from(p.request_id()), p.chain(), p.chain_version(), from(p.begin()), from(p.end())});
    }
    case B::kForwardReq: {
      const auto& p = e.forward_req();
      ForwardReq forward{from(p.request_id()), p.chain(), p.chain_version(), p.target(), from(p.chunk()),
                         p.version(), p.offset(), bytes_from(p.data()), p.full_replacement(),
                         p.expected_crc32c(), p.expected_length(), p.remove(), from(p.remove_end())};
      forward.resolve_pending = p.resolve_pending();
      forward.chunk_size = p.chunk_size();
      return Request(std::move(forward));
    }
    case B::kSyncDumpMetaReq: {
      const auto& p = e.sync_dump_meta_req();
      return Request(SyncDumpMetaReq{p.chain(), p.chain_version(), p.target(), from(p.from()), p.limit()});
    }
    case B::kSyncReplaceReq: {
      const auto& p = e.sync_replace_req();
      return Request(SyncReplaceReq{p.chain(), p.chain_version(), p.target(), from(p.chunk()), p.version(),
                                    p.chunk_chain_version(), bytes_from(p.data()), p.remove()});
    }
    case B::kSyncDoneReq: {
      const auto& p = e.sync_done_req();
      return Request(SyncDoneReq{p.chain(), p.chain_version(), p.target()});
    }
    case B::kMetaCallReq: {
      auto* p = e.mutable_meta_call_req();
      return Request(MetaCallReq{p->batch(), std::move(*p->mutable_body())});
    }
    case B::BODY_NOT_SET: return malformed("request envelope has no body");
    default: return malformed(fmt::format("envelope field {} is not a request", static_cast<int>(e.body_case())));
  }
}

void response_to_proto(Response&& response, pb::Envelope* out) {
  std::visit(
      [&](auto&& r) {
        using T = std::decay_t<decltype(r)>;
        if constexpr (std::is_same_v<T, RegisterNodeRsp>) {
          out->mutable_register_node_rsp()->set_routing_version(r.routing_version);
        } else if constexpr (std::is_same_v<T, HeartbeatRsp>) {
          auto* p = out->mutable_heartbeat_rsp();
          p->set_routing_version(r.routing_version);
          if (r.routing) to(*r.routing, p->mutable_routing());
        } else if constexpr (std::is_same_v<T, GetRoutingRsp>) {
          auto* p = out->mutable_get_routing_rsp();
          p->set_routing_version(r.routing_version);
          if (r.routing) to(*r.routing, p->mutable_routing());
          for (const TargetSpace& t : r.space) {
            auto* s = p->add_space();
            s->set_target(t.target); s->set_node(t.node); s->set_host(t.host);
            s->set_capacity_bytes(t.capacity_bytes); s->set_free_bytes(t.free_bytes); s->set_filesystem(t.filesystem);
          }
        } else if constexpr (std::is_same_v<T, CreateChainTableRsp>) {
          for (ChainId chain : r.chains) out->mutable_create_chain_table_rsp()->add_chains(chain);
        } else if constexpr (std::is_same_v<T, SetTargetOfflineRsp>) {
          out->mutable_set_target_offline_rsp()->set_routing_version(r.routing_version);
        } else if constexpr (std::is_same_v<T, WriteRsp>) {
          to(r, out->mutable_write_rsp());
        } else if constexpr (std::is_same_v<T, ReadRsp>) {
          to(std::move(r), out->mutable_read_rsp());
        } else if constexpr (std::is_same_v<T, BatchReadRsp>) {
          auto* p = out->mutable_batch_read_rsp();
          for (auto& item : r.results) {
            auto* result = p->add_results();
            to(item.status, result->mutable_status());
            to(std::move(item.rsp), result->mutable_rsp());
          }
        } else if constexpr (std::is_same_v<T, BatchWriteRsp>) {
          auto* p = out->mutable_batch_write_rsp();
          for (const auto& item : r.results) {
            auto* result = p->add_results();
            to(item.status, result->mutable_status());
            to(item.rsp, result->mutable_rsp());
          }
        } else if constexpr (std::is_same_v<T, QueryLastChunkRsp>) {
          auto* p = out->mutable_query_last_chunk_rsp();
          p->set_found(r.found); to(r.last, p->mutable_last());
          p->set_last_length(r.last_length); p->set_chunk_count(r.chunk_count);
        } else if constexpr (std::is_same_v<T, RemoveChunksRsp>) {
          out->mutable_remove_chunks_rsp()->set_removed(r.removed);
        } else if constexpr (std::is_same_v<T, ForwardRsp>) {
          auto* p = out->mutable_forward_rsp();
          p->set_committed_version(r.committed_version); p->set_committed_crc32c(r.committed_crc32c);
          p->set_removed(r.removed);
        } else if constexpr (std::is_same_v<T, SyncDumpMetaRsp>) {
          auto* p = out->mutable_sync_dump_meta_rsp();
          for (const auto& meta : r.chunks) to(meta, p->add_chunks());
          p->set_more(r.more);
        } else if constexpr (std::is_same_v<T, SyncReplaceRsp>) {
          out->mutable_sync_replace_rsp();
        } else if constexpr (std::is_same_v<T, SyncDoneRsp>) {
          out->mutable_sync_done_rsp();
        } else if constexpr (std::is_same_v<T, MetaCallRsp>) {
          out->mutable_meta_call_rsp()->set_body(std::move(r.body));
        } else {
          static_assert(sizeof(T) == 0, "response type without a conversion");
        }
      },
      std::move(response));
}

Result<Response> response_from_proto(pb::Envelope&& e) {
  using B = pb::Envelope;
  switch (e.body_case()) {
    case B::kRegisterNodeRsp: return Response(RegisterNodeRsp{e.register_node_rsp().routing_version()});
    case B::kHeartbeatRsp: {
      HeartbeatRsp r{e.heartbeat_rsp().routing_version(), std::nullopt};
      if (e.heartbeat_rsp().has_routing()) {
        FF_ASSIGN_OR_RETURN(RoutingInfo routing, from(e.heartbeat_rsp().routing()));
        r.routing = std::move(routing);
      }
      return Response(std::move(r));
    }
    case B::kGetRoutingRsp: {
      GetRoutingRsp r{e.get_routing_rsp().routing_version(), std::nullopt, {}};
      if (e.get_routing_rsp().has_routing()) {
        FF_ASSIGN_OR_RETURN(RoutingInfo routing, from(e.get_routing_rsp().routing()));
        r.routing = std::move(routing);
      }
      for (const auto& t : e.get_routing_rsp().space()) {
        r.space.push_back(TargetSpace{t.target(), t.node(), t.host(), t.capacity_bytes(), t.free_bytes(), t.filesystem()});
      }
      return Response(std::move(r));
    }
    case B::kCreateChainTableRsp: {
      const auto& chains = e.create_chain_table_rsp().chains();
      return Response(CreateChainTableRsp{{chains.begin(), chains.end()}});
    }
    case B::kSetTargetOfflineRsp: return Response(SetTargetOfflineRsp{e.set_target_offline_rsp().routing_version()});
    case B::kWriteRsp: return Response(from(e.write_rsp()));
    case B::kReadRsp: return Response(from(std::move(*e.mutable_read_rsp())));
    case B::kBatchReadRsp: {
      BatchReadRsp r;
      for (auto& item : *e.mutable_batch_read_rsp()->mutable_results()) {
        Status status;
        FF_RETURN_IF_ERROR(from(item.status(), &status));
        r.results.push_back(ReadResult{std::move(status), from(std::move(*item.mutable_rsp()))});
      }
      return Response(std::move(r));
    }
    case B::kBatchWriteRsp: {
      BatchWriteRsp r;
      for (const auto& item : e.batch_write_rsp().results()) {
        Status status;
        FF_RETURN_IF_ERROR(from(item.status(), &status));
        r.results.push_back(WriteResult{std::move(status), from(item.rsp())});
      }
      return Response(std::move(r));
    }
    case B::kQueryLastChunkRsp: {
      const auto& p = e.query_last_chunk_rsp();
      return Response(QueryLastChunkRsp{p.found(), from(p.last()), p.last_length(), p.chunk_count()});
    }
    case B::kRemoveChunksRsp: return Response(RemoveChunksRsp{e.remove_chunks_rsp().removed()});
    case B::kForwardRsp: {
      const auto& p = e.forward_rsp();
      return Response(ForwardRsp{p.committed_version(), p.committed_crc32c(), p.removed()});
    }
    case B::kSyncDumpMetaRsp: {
      SyncDumpMetaRsp r;
      for (const auto& meta : e.sync_dump_meta_rsp().chunks()) r.chunks.push_back(from(meta));
      r.more = e.sync_dump_meta_rsp().more();
      return Response(std::move(r));
    }
    case B::kSyncReplaceRsp: return Response(SyncReplaceRsp{});
    case B::kSyncDoneRsp: return Response(SyncDoneRsp{});
    case B::kMetaCallRsp: return Response(MetaCallRsp{std::move(*e.mutable_meta_call_rsp()->mutable_body())});
    case B::BODY_NOT_SET: return malformed("response envelope has no body");
    default: return malformed(fmt::format("envelope field {} is not a response", static_cast<int>(e.body_case())));
  }
}

}  // namespace ff::fs::rpc

namespace ff::fs::rpc {

namespace {

template <typename M>
SharedBytes take_payload_of(M& message) {
  if (message.shared_data.is_set()) return std::exchange(message.shared_data, SharedBytes{});
  if (message.data.empty()) return SharedBytes{};
  return SharedBytes::adopt(std::move(message.data));
}

}  // namespace

SharedBytes take_request_payload(Request& request) {
  if (auto* write = std::get_if<WriteReq>(&request)) return take_payload_of(*write);
  if (auto* forward = std::get_if<ForwardReq>(&request)) return take_payload_of(*forward);
  if (auto* replace = std::get_if<SyncReplaceReq>(&request)) {
    if (replace->data.empty()) return SharedBytes{};
    return SharedBytes::adopt(std::move(replace->data));
  }
  return SharedBytes{};
}

SharedBytes take_response_payload(Response& response) {
  if (auto* read = std::get_if<ReadRsp>(&response)) return take_payload_of(*read);
  return SharedBytes{};
}

Status put_request_payload(Request& request, Bytes&& payload) {
  if (payload.empty()) return Status::ok();
  if (auto* write = std::get_if<WriteReq>(&request)) {
    write->data = std::move(payload);
  } else if (auto* forward = std::get_if<ForwardReq>(&request)) {
    forward->data = std::move(payload);
  } else if (auto* replace = std::get_if<SyncReplaceReq>(&request)) {
    replace->data = std::move(payload);
  } else {
    return malformed(fmt::format("frame carries {} payload bytes for {}, which has no payload", payload.size(),
                                 request_name(request)));
  }
  return Status::ok();
}

Status put_request_shared_payload(Request& request, SharedBytes payload) {
  if (auto* write = std::get_if<WriteReq>(&request)) {
    write->shared_data = std::move(payload);
  } else if (auto* forward = std::get_if<ForwardReq>(&request)) {
    forward->shared_data = std::move(payload);
  } else {
    return malformed(fmt::format("frame carries {} payload bytes for {}, which has no shared payload", payload.size(),
                                 request_name(request)));
  }
  return Status::ok();
}

Status put_response_payload(Response& response, Bytes&& payload) {
  if (payload.empty()) return Status::ok();
  if (auto* read = std::get_if<ReadRsp>(&response)) {
    read->data = std::move(payload);
    return Status::ok();
  }
  return malformed(fmt::format("frame carries {} payload bytes for response alternative {}, which has no payload",
                               payload.size(), response.index()));
}

}  // namespace ff::fs::rpc
