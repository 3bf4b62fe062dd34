#include "bootstrap/socket.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <thread>

namespace tpcomm {
namespace {

IoStatus error(int err) { return IoStatus{Io::kError, err}; }
IoStatus timeout() { return IoStatus{Io::kTimeout, 0}; }
IoStatus closed() { return IoStatus{Io::kClosed, 0}; }

socklen_t abstractAddress(const std::string& name, sockaddr_un* addr) {
  std::memset(addr, 0, sizeof(*addr));
  addr->sun_family = AF_UNIX;
  // A leading NUL puts the name in the abstract namespace: nothing to clean up on disk.
  const size_t len = std::min(name.size(), sizeof(addr->sun_path) - 1);
  std::memcpy(addr->sun_path + 1, name.data(), len);
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + len);
}

// Waits until `fd` is ready for `events` or the deadline passes.
IoStatus waitFor(int fd, short events, Deadline deadline) {
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return timeout();
    pollfd p{fd, events, 0};
    const int n = poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
    if (n > 0) return IoStatus{};
    if (n < 0 && errno != EINTR) return error(errno);
  }
}

int newSocket() { return socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0); }

}  // namespace

std::string IoStatus::describe() const {
  switch (result) {
    case Io::kOk:
      return "ok";
    case Io::kTimeout:
      return "timed out";
    case Io::kClosed:
      return "connection closed by the peer";
    case Io::kNotice:
      return "a notice instead of a descriptor";
    default:
      return std::string("system error: ") + std::strerror(err) +
             (err == EMFILE ? " (the process's limit on open descriptors, ulimit -n)" : "");
  }
}

Socket& Socket::operator=(Socket&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = other.release();
  }
  return *this;
}

void Socket::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

IoStatus listenAbstract(const std::string& name, int backlog, Socket* out) {
  Socket s(newSocket());
  if (!s.valid()) return error(errno);
  sockaddr_un addr;
  const socklen_t len = abstractAddress(name, &addr);
  if (bind(s.fd(), reinterpret_cast<sockaddr*>(&addr), len) != 0) return error(errno);
  if (listen(s.fd(), backlog) != 0) return error(errno);
  *out = std::move(s);
  return IoStatus{};
}

IoStatus connectAbstract(const std::string& name, Deadline deadline, Socket* out) {
  sockaddr_un addr;
  const socklen_t len = abstractAddress(name, &addr);
  for (;;) {
    Socket s(newSocket());
    if (!s.valid()) return error(errno);
    if (connect(s.fd(), reinterpret_cast<sockaddr*>(&addr), len) == 0) {
      *out = std::move(s);
      return IoStatus{};
    }
    const int err = errno;
    // ENOENT/ECONNREFUSED: nobody listens yet; EAGAIN: the listener's backlog is full.
    if (err != ECONNREFUSED && err != ENOENT && err != EAGAIN) return error(err);
    // Rank 0 may not have started yet: retry until the deadline.
    if (Clock::now() >= deadline) return timeout();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

IoStatus acceptOne(const Socket& listener, Deadline deadline, Socket* out) {
  for (;;) {
    const int fd = accept4(listener.fd(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd >= 0) {
      *out = Socket(fd);
      return IoStatus{};
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return error(errno);
    IoStatus st = waitFor(listener.fd(), POLLIN, deadline);
    if (!st.ok()) return st;
  }
}

IoStatus sendAll(const Socket& s, const void* data, size_t bytes, Deadline deadline) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = send(s.fd(), p, bytes, MSG_NOSIGNAL);
    if (n > 0) {
      p += n;
      bytes -= static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EPIPE) return closed();
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return error(errno);
    IoStatus st = waitFor(s.fd(), POLLOUT, deadline);
    if (!st.ok()) return st;
  }
  return IoStatus{};
}

IoStatus recvAll(const Socket& s, void* data, size_t bytes, Deadline deadline) {
  char* p = static_cast<char*>(data);
  while (bytes > 0) {
    const ssize_t n = recv(s.fd(), p, bytes, 0);
    if (n > 0) {
      p += n;
      bytes -= static_cast<size_t>(n);
      continue;
    }
    if (n == 0) return closed();
    if (errno == ECONNRESET) return closed();
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return error(errno);
    IoStatus st = waitFor(s.fd(), POLLIN, deadline);
    if (!st.ok()) return st;
  }
  return IoStatus{};
}

IoStatus sendFd(const Socket& s, int fd, Deadline deadline) {
  char byte = 'F';
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  std::memset(control, 0, sizeof(control));
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
  for (;;) {
    const ssize_t n = sendmsg(s.fd(), &msg, MSG_NOSIGNAL);
    if (n == 1) return IoStatus{};
    if (n < 0 && errno == EPIPE) return closed();
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return error(errno);
    IoStatus st = waitFor(s.fd(), POLLOUT, deadline);
    if (!st.ok()) return st;
  }
}

IoStatus recvFd(const Socket& s, int* fd, Deadline deadline) {
  char byte = 0;
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  for (;;) {
    const ssize_t n = recvmsg(s.fd(), &msg, MSG_CMSG_CLOEXEC);
    if (n == 1) break;
    if (n == 0 || (n < 0 && errno == ECONNRESET)) return closed();
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return error(errno);
    IoStatus st = waitFor(s.fd(), POLLIN, deadline);
    if (!st.ok()) return st;
  }
  // The kernel drops a descriptor this process has no room for, and says so only here.
  if ((msg.msg_flags & MSG_CTRUNC) != 0) return error(EMFILE);
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  if (cmsg == nullptr && byte == kNoticeByte) return IoStatus{Io::kNotice, 0};
  if (cmsg == nullptr || cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) {
    return error(EBADMSG);
  }
  std::memcpy(fd, CMSG_DATA(cmsg), sizeof(int));
  return IoStatus{};
}

IoStatus peerUid(const Socket& s, uid_t* uid) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (getsockopt(s.fd(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return error(errno);
  *uid = cred.uid;
  return IoStatus{};
}

}  // namespace tpcomm
