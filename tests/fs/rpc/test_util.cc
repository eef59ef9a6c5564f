#include "test_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdlib>
#include <thread>

#include "ff/common/assert.h"
#include "ff/fs/rpc/etcd_client.h"

extern char** environ;

namespace ff::fs::rpc::testing {

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base != nullptr ? base : "/tmp") + "/ff_fs_rpc_test_XXXXXX";
  char* made = ::mkdtemp(pattern.data());
  FF_ASSERT(made != nullptr, "mkdtemp {} failed", pattern);
  path_ = made;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  FF_ASSERT(fd >= 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  FF_ASSERT(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0);
  socklen_t length = sizeof(address);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  ::close(fd);
  return ntohs(address.sin_port);
}

bool have_etcd() { return std::system("command -v etcd > /dev/null 2>&1") == 0; }

Result<std::unique_ptr<EtcdServer>> EtcdServer::start(uint16_t client_port) {
  // Ports can be taken between free_port() and etcd's bind: try a few times.
  Status last;
  for (int attempt = 0; attempt < 3; ++attempt) {
    std::unique_ptr<EtcdServer> server(new EtcdServer());
    server->dir_ = std::make_unique<TempDir>();
    server->client_port_ = client_port != 0 ? client_port : free_port();
    uint16_t peer_port = free_port();
    std::string client_url = "http://127.0.0.1:" + std::to_string(server->client_port_);
    std::string peer_url = "http://127.0.0.1:" + std::to_string(peer_port);
    std::vector<std::string> args = {"etcd",
                                     "--name=ff-test",
                                     "--data-dir=" + server->dir_->path() + "/data",
                                     "--listen-client-urls=" + client_url,
                                     "--advertise-client-urls=" + client_url,
                                     "--listen-peer-urls=" + peer_url,
                                     "--initial-advertise-peer-urls=" + peer_url,
                                     "--initial-cluster=ff-test=" + peer_url,
                                     "--log-outputs=" + server->dir_->path() + "/etcd.log",
                                     "--logger=zap"};
    std::vector<char*> argv;
    for (auto& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
    int rc = posix_spawnp(&server->pid_, "etcd", &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) return errno_error(rc, "posix_spawnp etcd");
    // Wait for the port to accept TCP before the first gRPC call: under gVisor a gRPC channel whose
    // first connect was refused was seen to stall for seconds (the transport re-creates such channels).
    for (int i = 0; i < 300; ++i) {
      int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in address{};
      address.sin_family = AF_INET;
      address.sin_port = htons(server->client_port_);
      address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      bool connected = ::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
      ::close(fd);
      if (connected) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    FF_ASSIGN_OR_RETURN(auto client, EtcdClient::connect(server->endpoint(), 1000));
    last = client->wait_ready(15000);
    if (last.is_ok()) return server;
  }
  return last;
}

EtcdServer::~EtcdServer() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
}

}  // namespace ff::fs::rpc::testing
