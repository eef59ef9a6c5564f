#include "convert.h"

namespace ff::fs::meta::wire {

void to_proto(const Caller& caller, pb::Caller* out) {
  out->set_uid(caller.uid);
  out->set_gid(caller.gid);
  for (uint32_t group : caller.groups) out->add_groups(group);
}

Caller from_proto(const pb::Caller& caller) {
  Caller out;
  out.uid = caller.uid();
  out.gid = caller.gid();
  out.groups.assign(caller.groups().begin(), caller.groups().end());
  return out;
}

void to_proto(const Inode& inode, pb::Inode* out) {
  out->set_id(inode.id);
  out->set_type(static_cast<uint32_t>(inode.type));
  out->set_mode(inode.mode);
  out->set_uid(inode.uid);
  out->set_gid(inode.gid);
  out->set_nlink(inode.nlink);
  out->set_length(inode.length);
  out->set_atime_ns(inode.atime_ns);
  out->set_mtime_ns(inode.mtime_ns);
  out->set_ctime_ns(inode.ctime_ns);
  out->set_rdev(inode.rdev);
  out->set_parent(inode.parent);
  out->set_symlink_target(inode.symlink_target);
  if (inode.type == FileType::kRegular || inode.layout.chunk_size != 0) {
    pb::Layout* layout = out->mutable_layout();
    layout->set_chain_table(inode.layout.chain_table);
    layout->set_chunk_size(inode.layout.chunk_size);
    layout->set_seed(inode.layout.seed);
    for (ChainId chain : inode.layout.chains) layout->add_chains(chain);
  }
}

Inode from_proto(const pb::Inode& inode) {
  Inode out;
  out.id = inode.id();
  out.type = static_cast<FileType>(inode.type());
  out.mode = inode.mode();
  out.uid = inode.uid();
  out.gid = inode.gid();
  out.nlink = inode.nlink();
  out.length = inode.length();
  out.atime_ns = inode.atime_ns();
  out.mtime_ns = inode.mtime_ns();
  out.ctime_ns = inode.ctime_ns();
  out.rdev = inode.rdev();
  out.parent = inode.parent();
  out.symlink_target = inode.symlink_target();
  if (inode.has_layout()) {
    out.layout.chain_table = inode.layout().chain_table();
    out.layout.chunk_size = inode.layout().chunk_size();
    out.layout.seed = inode.layout().seed();
    out.layout.chains.assign(inode.layout().chains().begin(), inode.layout().chains().end());
  }
  return out;
}

void to_proto(const SetAttr& attr, pb::SetattrReq* out) {
  if (attr.mode) out->set_mode(*attr.mode);
  if (attr.uid) out->set_uid(*attr.uid);
  if (attr.gid) out->set_gid(*attr.gid);
  if (attr.length) out->set_length(*attr.length);
  if (attr.atime_ns) out->set_atime_ns(*attr.atime_ns);
  if (attr.mtime_ns) out->set_mtime_ns(*attr.mtime_ns);
  out->set_atime_now(attr.atime_now);
  out->set_mtime_now(attr.mtime_now);
}

SetAttr from_proto(const pb::SetattrReq& attr) {
  SetAttr out;
  if (attr.has_mode()) out.mode = attr.mode();
  if (attr.has_uid()) out.uid = attr.uid();
  if (attr.has_gid()) out.gid = attr.gid();
  if (attr.has_length()) out.length = attr.length();
  if (attr.has_atime_ns()) out.atime_ns = attr.atime_ns();
  if (attr.has_mtime_ns()) out.mtime_ns = attr.mtime_ns();
  out.atime_now = attr.atime_now();
  out.mtime_now = attr.mtime_now();
  return out;
}

void set_status(const Status& status, pb::MetaResponse* out) {
  out->set_code(static_cast<int32_t>(status.code()));
  if (!status.is_ok()) out->set_message(status.message());
}

Status status_from(int32_t code, const std::string& message) {
  if (code == 0) return Status::ok();
  if (code < 0 || code > static_cast<int>(StatusCode::kInternal)) {
    return internal_error("meta response with unknown status code {}: {}", code, message);
  }
  return Status(static_cast<StatusCode>(code), message);
}

Status status_of(const pb::MetaResponse& response) { return status_from(response.code(), response.message()); }

bool deduplicated(pb::MetaRequest::OpCase op) {
  switch (op) {
    case pb::MetaRequest::kCreate:
    case pb::MetaRequest::kMknod:
    case pb::MetaRequest::kMkdir:
    case pb::MetaRequest::kSymlink:
    case pb::MetaRequest::kLink:
    case pb::MetaRequest::kUnlink:
    case pb::MetaRequest::kRmdir:
    case pb::MetaRequest::kRename:
    case pb::MetaRequest::kExchange:
    case pb::MetaRequest::kOpen:
    case pb::MetaRequest::kCreateOpen:
    case pb::MetaRequest::kClose:
    case pb::MetaRequest::kCloseBatch:
    case pb::MetaRequest::kSetxattr:
    case pb::MetaRequest::kRemovexattr: return true;
    default: return false;
  }
}

bool is_read(pb::MetaRequest::OpCase op) {
  switch (op) {
    case pb::MetaRequest::kLookup:
    case pb::MetaRequest::kGetattr:
    case pb::MetaRequest::kResolve:
    case pb::MetaRequest::kReadlink:
    case pb::MetaRequest::kReaddir:
    case pb::MetaRequest::kGetxattr:
    case pb::MetaRequest::kListxattr:
    case pb::MetaRequest::kStatfs: return true;
    default: return false;
  }
}

const char* op_name(pb::MetaRequest::OpCase op) {
  switch (op) {
    case pb::MetaRequest::kLookup: return "lookup";
    case pb::MetaRequest::kGetattr: return "getattr";
    case pb::MetaRequest::kSetattr: return "setattr";
    case pb::MetaRequest::kResolve: return "resolve";
    case pb::MetaRequest::kCreate: return "create";
    case pb::MetaRequest::kMknod: return "mknod";
    case pb::MetaRequest::kMkdir: return "mkdir";
    case pb::MetaRequest::kSymlink: return "symlink";
    case pb::MetaRequest::kLink: return "link";
    case pb::MetaRequest::kReadlink: return "readlink";
    case pb::MetaRequest::kUnlink: return "unlink";
    case pb::MetaRequest::kRmdir: return "rmdir";
    case pb::MetaRequest::kRename: return "rename";
    case pb::MetaRequest::kReaddir: return "readdir";
    case pb::MetaRequest::kStatfs: return "statfs";
    case pb::MetaRequest::kOpen: return "open";
    case pb::MetaRequest::kClose: return "close";
    case pb::MetaRequest::kSync: return "sync";
    case pb::MetaRequest::kReportLength: return "report_length";
    case pb::MetaRequest::kRenewClient: return "renew_client";
    case pb::MetaRequest::kCreateOpen: return "create_open";
    case pb::MetaRequest::kExchange: return "exchange";
    case pb::MetaRequest::kSetxattr: return "setxattr";
    case pb::MetaRequest::kGetxattr: return "getxattr";
    case pb::MetaRequest::kListxattr: return "listxattr";
    case pb::MetaRequest::kRemovexattr: return "removexattr";
    case pb::MetaRequest::kCloseBatch: return "close_batch";
    case pb::MetaRequest::OP_NOT_SET: return "none";
  }
  return "unknown";
}

}  // namespace ff::fs::meta::wire
