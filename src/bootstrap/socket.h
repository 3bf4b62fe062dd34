// Unix domain sockets in the abstract namespace with deadlines on every wait. Results are plain
// status values; the bootstrap turns them into messages that name the ranks involved.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>

namespace tpcomm {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

// kNotice: where a descriptor was expected, the first byte of a notice came instead (kNoticeByte;
// Bootstrap reads the rest).
enum class Io { kOk, kTimeout, kClosed, kError, kNotice };

constexpr char kNoticeByte = 'X';

struct IoStatus {
  Io result = Io::kOk;
  int err = 0;  // errno for kError
  bool ok() const { return result == Io::kOk; }
  std::string describe() const;
};

// Owns a socket descriptor.
class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) : fd_(fd) {}
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  Socket(Socket&& other) noexcept : fd_(other.release()) {}
  Socket& operator=(Socket&& other) noexcept;
  ~Socket() { close(); }

  int fd() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void close();

 private:
  int fd_ = -1;
};

IoStatus listenAbstract(const std::string& name, int backlog, Socket* out);
// Connects to `name`, retrying while nobody listens there yet, until the deadline.
IoStatus connectAbstract(const std::string& name, Deadline deadline, Socket* out);
IoStatus acceptOne(const Socket& listener, Deadline deadline, Socket* out);

IoStatus sendAll(const Socket& s, const void* data, size_t bytes, Deadline deadline);
IoStatus recvAll(const Socket& s, void* data, size_t bytes, Deadline deadline);

// Passes an open file descriptor to the peer (SCM_RIGHTS). The receiver gets a new descriptor
// for the same open file and owns it, or Io::kNotice where kNoticeByte came without one.
IoStatus sendFd(const Socket& s, int fd, Deadline deadline);
IoStatus recvFd(const Socket& s, int* fd, Deadline deadline);

// User id of the process at the other end (SO_PEERCRED).
IoStatus peerUid(const Socket& s, uid_t* uid);

}  // namespace tpcomm
