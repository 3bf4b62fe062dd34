#include "bootstrap/bootstrap.h"

#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/error.h"

namespace tpcomm {
namespace {

constexpr uint32_t kIdMagic = 0x54504944;     // "TPID"
constexpr uint32_t kFrameMagic = 0x54504346;  // "TPCF"
// A notice from rank 0 that it gave up on the exchanges, with its error: a frame of its own
// magic, whose first byte (kNoticeByte) recvFd tells from a descriptor's.
constexpr uint32_t kNoticeMagic = 0x54504358;  // "TPCX"
static_assert(static_cast<char>(kNoticeMagic & 0xff) == kNoticeByte, "little-endian first byte");
constexpr uint64_t kMaxNoticeBytes = 4096;
constexpr std::chrono::milliseconds kNoticeTimeout{1000};
// What the other ranks wait for rank 0 beyond the timeout: the time its notice may take, and as
// much again for rank 0 entering an exchange after them.
constexpr std::chrono::milliseconds kRootGrace = 2 * kNoticeTimeout;
// A greeting comes from a process that has not proven anything yet: keep it small and quick.
constexpr size_t kMaxGreetingBytes = 4096;
constexpr std::chrono::milliseconds kGreetingTimeout{5000};
constexpr uint64_t kMaxFrameBytes = 1ull << 30;

struct FrameHeader {
  uint32_t magic;
  uint32_t reserved;
  uint64_t bytes;
};

struct Greeting {
  uint32_t magic;
  uint32_t version;
  int32_t rank;
  int32_t nranks;
  uint8_t secret[16];
  // followed by the configuration digest
};

struct Verdict {
  int32_t result;
  // followed by the reason when result != tpcSuccess
};

bool sameSecret(const uint8_t* a, const uint8_t* b) {
  uint8_t diff = 0;  // constant time: no early exit that would leak how much matched
  for (int i = 0; i < 16; ++i) diff |= static_cast<uint8_t>(a[i] ^ b[i]);
  return diff == 0;
}

long long millis(std::chrono::milliseconds d) { return static_cast<long long>(d.count()); }

IoStatus sendFrame(const Socket& s, const std::string& payload, Deadline deadline) {
  const FrameHeader header{kFrameMagic, 0, payload.size()};
  IoStatus st = sendAll(s, &header, sizeof(header), deadline);
  if (!st.ok()) return st;
  return sendAll(s, payload.data(), payload.size(), deadline);
}

// The rest of a frame whose header is in `header`: Io::kNotice, with the notice in *payload, where
// it is a notice.
IoStatus recvPayload(const Socket& s, const FrameHeader& header, std::string* payload,
                     uint64_t maxBytes, Deadline deadline) {
  const bool notice = header.magic == kNoticeMagic;
  if ((header.magic != kFrameMagic && !notice) ||
      header.bytes > (notice ? kMaxNoticeBytes : maxBytes)) {
    return IoStatus{Io::kError, EBADMSG};
  }
  payload->resize(header.bytes);
  const IoStatus st = recvAll(s, payload->data(), header.bytes, deadline);
  return st.ok() && notice ? IoStatus{Io::kNotice, 0} : st;
}

IoStatus recvFrame(const Socket& s, std::string* payload, uint64_t maxBytes, Deadline deadline) {
  FrameHeader header;
  IoStatus st = recvAll(s, &header, sizeof(header), deadline);
  if (!st.ok()) return st;
  return recvPayload(s, header, payload, maxBytes, deadline);
}

std::string verdict(tpcResult_t result, const std::string& reason) {
  const Verdict v{static_cast<int32_t>(result)};
  std::string out(reinterpret_cast<const char*>(&v), sizeof(v));
  return out + reason;
}

std::string listRanks(const std::vector<Socket>& peers) {
  std::string out;
  for (size_t r = 1; r < peers.size(); ++r) {
    if (peers[r].valid()) continue;
    if (!out.empty()) out += ", ";
    out += std::to_string(r);
  }
  return out;
}

}  // namespace

tpcResult_t newRendezvousId(tpcUniqueId* id) {
  RendezvousId rid{};
  rid.magic = kIdMagic;
  rid.version = TPCOMM_VERSION_CODE;
  uint64_t nameBits = 0;
  if (getrandom(rid.secret, sizeof(rid.secret), 0) != sizeof(rid.secret) ||
      getrandom(&nameBits, sizeof(nameBits), 0) != sizeof(nameBits)) {
    return fail(tpcSystemError, "getrandom failed: %s", std::strerror(errno));
  }
  std::snprintf(rid.name, sizeof(rid.name), "tpcomm-%016llx",
                static_cast<unsigned long long>(nameBits));
  std::memset(id, 0, sizeof(*id));
  std::memcpy(id->internal, &rid, sizeof(rid));
  return tpcSuccess;
}

bool decodeRendezvousId(const tpcUniqueId& id, RendezvousId* out) {
  std::memcpy(out, id.internal, sizeof(*out));
  return out->magic == kIdMagic && std::memchr(out->name, '\0', sizeof(out->name)) != nullptr &&
         out->name[0] != '\0';
}

tpcResult_t Bootstrap::connect(const tpcUniqueId& id, const Options& options,
                               std::unique_ptr<Bootstrap>* out) {
  RendezvousId rid;
  if (!decodeRendezvousId(id, &rid)) {
    return fail(tpcInvalidArgument, "rank %d: the unique id was not made by tpcGetUniqueId",
                options.rank);
  }
  if (options.rank == 0) return acceptRanks(rid, options, out);
  return joinRoot(rid, options, out);
}

tpcResult_t Bootstrap::acceptRanks(const RendezvousId& id, const Options& options,
                                   std::unique_ptr<Bootstrap>* out) {
  Socket listener;
  IoStatus st = listenAbstract(id.name, 128, &listener);
  if (!st.ok()) {
    if (st.err == EADDRINUSE) {
      return fail(tpcInvalidUsage,
                  "rank 0: rendezvous @%s is already in use; every communicator needs its own "
                  "tpcGetUniqueId",
                  id.name);
    }
    return fail(tpcSystemError, "rank 0: cannot listen on rendezvous @%s: %s", id.name,
                st.describe().c_str());
  }

  std::unique_ptr<Bootstrap> boot(new Bootstrap(0, options.nranks, options.timeout));
  boot->peers_.resize(options.nranks);
  const Deadline deadline = Clock::now() + options.timeout;
  std::string problem;  // the first disagreement found; fails every rank once all have joined
  int joined = 1;
  while (joined < options.nranks) {
    Socket conn;
    st = acceptOne(listener, deadline, &conn);
    if (st.result == Io::kTimeout) break;
    if (!st.ok()) {
      return fail(tpcSystemError, "rank 0: accept on rendezvous @%s failed: %s", id.name,
                  st.describe().c_str());
    }
    uid_t uid = 0;
    if (!peerUid(conn, &uid).ok() || uid != geteuid()) {
      TPC_WARN("rank 0: refused a rendezvous connection from user id %u (this process runs as %u)",
               static_cast<unsigned>(uid), static_cast<unsigned>(geteuid()));
      continue;
    }
    std::string payload;
    st = recvFrame(conn, &payload, kMaxGreetingBytes,
                   std::min(deadline, Clock::now() + kGreetingTimeout));
    Greeting g{};
    if (!st.ok() || payload.size() < sizeof(g)) {
      TPC_WARN("rank 0: dropped a rendezvous connection without a valid greeting (%s)",
               st.describe().c_str());
      continue;
    }
    std::memcpy(&g, payload.data(), sizeof(g));
    const std::string digest = payload.substr(sizeof(g));
    if (g.magic != kIdMagic || !sameSecret(g.secret, id.secret)) {
      TPC_WARN("rank 0: refused a rendezvous connection claiming rank %d: wrong secret", g.rank);
      sendFrame(conn, verdict(tpcInvalidUsage, "rank 0 refused the connection: wrong secret"),
                deadline);
      continue;
    }
    char why[512] = "";
    if (g.rank <= 0 || g.rank >= options.nranks || boot->peers_[g.rank].valid()) {
      std::snprintf(why, sizeof(why), "a second rank claims rank %d (nranks %d)", g.rank,
                    options.nranks);
      if (g.rank <= 0 || g.rank >= options.nranks) {
        std::snprintf(why, sizeof(why), "a rank claims rank %d, outside [0, %d)", g.rank,
                      options.nranks);
      }
      sendFrame(conn, verdict(tpcInvalidUsage, why), deadline);
      if (problem.empty()) problem = why;
      continue;
    }
    if (g.version != TPCOMM_VERSION_CODE) {
      std::snprintf(why, sizeof(why), "rank %d runs tpcomm %u but rank 0 runs %u", g.rank,
                    g.version, TPCOMM_VERSION_CODE);
    } else if (g.nranks != options.nranks) {
      std::snprintf(why, sizeof(why), "rank %d was given nranks=%d but rank 0 nranks=%d", g.rank,
                    g.nranks, options.nranks);
    } else if (digest != options.configDigest) {
      std::snprintf(why, sizeof(why), "rank %d was configured with {%s} but rank 0 with {%s}",
                    g.rank, digest.c_str(), options.configDigest.c_str());
    }
    if (problem.empty()) problem = why;
    boot->peers_[g.rank] = std::move(conn);
    ++joined;
  }
  listener.close();

  if (joined < options.nranks && problem.empty()) {
    problem = "ranks " + listRanks(boot->peers_) + " did not join within " +
              std::to_string(millis(options.timeout)) + " ms";
  }
  const tpcResult_t result =
      problem.empty() ? tpcSuccess : (joined < options.nranks ? tpcTimeout : tpcInvalidUsage);
  for (int r = 1; r < options.nranks; ++r) {
    if (boot->peers_[r].valid()) sendFrame(boot->peers_[r], verdict(result, problem), deadline);
  }
  if (result != tpcSuccess) {
    return fail(result, "rank 0: rendezvous @%s failed: %s", id.name, problem.c_str());
  }
  TPC_INFO("rank 0: all %d ranks joined rendezvous @%s", options.nranks, id.name);
  *out = std::move(boot);
  return tpcSuccess;
}

tpcResult_t Bootstrap::joinRoot(const RendezvousId& id, const Options& options,
                                std::unique_ptr<Bootstrap>* out) {
  const int rank = options.rank;
  const Deadline deadline = Clock::now() + options.timeout;
  std::unique_ptr<Bootstrap> boot(new Bootstrap(rank, options.nranks, options.timeout));
  IoStatus st = connectAbstract(id.name, deadline, &boot->root_);
  if (st.result == Io::kTimeout) {
    return fail(tpcTimeout,
                "rank %d: could not reach rank 0 at rendezvous @%s within %lld ms (has rank 0 "
                "called tpcCommInitRank with this unique id?)",
                rank, id.name, millis(options.timeout));
  }
  if (!st.ok()) {
    return fail(tpcSystemError, "rank %d: cannot connect to rendezvous @%s: %s", rank, id.name,
                st.describe().c_str());
  }
  Greeting g{kIdMagic, TPCOMM_VERSION_CODE, rank, options.nranks, {}};
  std::memcpy(g.secret, id.secret, sizeof(g.secret));
  std::string greeting(reinterpret_cast<const char*>(&g), sizeof(g));
  greeting += options.configDigest;
  st = sendFrame(boot->root_, greeting, deadline);
  // Rank 0's verdict names the ranks that did not come: wait for it as for any exchange.
  std::string reply;
  if (st.ok()) st = recvFrame(boot->root_, &reply, kMaxFrameBytes, deadline + kRootGrace);
  if (st.result == Io::kTimeout) {
    return fail(tpcTimeout,
                "rank %d: rank 0 did not complete rendezvous @%s within %lld ms (are all %d ranks "
                "starting?)",
                rank, id.name, millis(options.timeout + kRootGrace), options.nranks);
  }
  if (!st.ok() || reply.size() < sizeof(Verdict)) {
    return fail(tpcRemoteError, "rank %d: rendezvous @%s with rank 0 broke off: %s", rank, id.name,
                st.describe().c_str());
  }
  Verdict v;
  std::memcpy(&v, reply.data(), sizeof(v));
  if (v.result != tpcSuccess) {
    return fail(static_cast<tpcResult_t>(v.result), "rank %d: rendezvous @%s failed: %s", rank,
                id.name, reply.substr(sizeof(v)).c_str());
  }
  *out = std::move(boot);
  return tpcSuccess;
}

tpcResult_t Bootstrap::ioFailure(const IoStatus& st, int peer, const char* what,
                                 const std::string& notice) {
  tpcResult_t res;
  switch (st.result) {
    case Io::kNotice:
      res = fail(tpcRemoteError, "rank %d: rank 0 gave up on the exchanges: %s", rank_,
                 notice.c_str());
      break;
    case Io::kTimeout:
      res = fail(tpcTimeout, "rank %d: timed out after %lld ms %s rank %d", rank_,
                 millis(waitLimit()), what, peer);
      break;
    case Io::kClosed:
      // Rank 0 relays every exchange and closes every connection when one of them fails: the
      // rank that failed first may be another, which rank 0's own error names.
      res = fail(tpcRemoteError, "rank %d: rank %d closed its connection while %s it (%s)", rank_,
                 peer, what,
                 peer == 0 ? "rank 0 failed, or a rank it waited for did; rank 0's error says which"
                           : "did it fail?");
      break;
    default:
      res =
          fail(tpcSystemError, "rank %d: %s rank %d: %s", rank_, what, peer, st.describe().c_str());
  }
  if (broken_ == tpcSuccess) {
    broken_ = res;
    brokenBy_ = threadLastError();
  }
  if (rank_ == 0) {
    const std::string message = threadLastError().substr(0, kMaxNoticeBytes);
    const FrameHeader header{kNoticeMagic, 0, message.size()};
    const Deadline dl = Clock::now() + std::min(timeout_, kNoticeTimeout);
    for (size_t r = 1; r < peers_.size(); ++r) {
      if (!peers_[r].valid()) continue;
      // At a frame's boundary: a send that stopped halfway failed, and that peer's connection
      // is the one that broke.
      if (sendAll(peers_[r], &header, sizeof(header), dl).ok()) {
        sendAll(peers_[r], message.data(), message.size(), dl);
      }
    }
  }
  root_.close();
  for (Socket& s : peers_) s.close();
  return res;
}

std::chrono::milliseconds Bootstrap::waitLimit() const {
  return rank_ == 0 ? timeout_ : timeout_ + kRootGrace;
}

tpcResult_t Bootstrap::inStep() const {
  if (broken_ == tpcSuccess) return tpcSuccess;
  return fail(broken_,
              "rank %d: an earlier exchange among the ranks failed (%s), so their host exchanges "
              "are out of step and this communicator can make no more collective host calls",
              rank_, brokenBy_.c_str());
}

tpcResult_t Bootstrap::send(const Socket& s, int peer, const std::string& blob, Deadline deadline) {
  const IoStatus st = sendFrame(s, blob, deadline);
  return st.ok() ? tpcSuccess : ioFailure(st, peer, "sending to");
}

tpcResult_t Bootstrap::recv(const Socket& s, int peer, std::string* blob, Deadline deadline) {
  const IoStatus st = recvFrame(s, blob, kMaxFrameBytes, deadline);
  return st.ok() ? tpcSuccess : ioFailure(st, peer, "waiting for", *blob);
}

IoStatus Bootstrap::receiveFd(const Socket& s, int* fd, Deadline deadline, std::string* notice) {
  const IoStatus st = recvFd(s, fd, deadline);
  if (st.result != Io::kNotice) return st;
  FrameHeader header;
  header.magic = kNoticeMagic;
  // recvFd took the header's first byte.
  char* rest = reinterpret_cast<char*>(&header) + 1;
  const IoStatus more = recvAll(s, rest, sizeof(header) - 1, deadline);
  if (!more.ok()) return more;
  return recvPayload(s, header, notice, 0, deadline);
}

tpcResult_t Bootstrap::allGather(const std::string& mine, std::vector<std::string>* all) {
  TPC_CHECK(inStep());
  const Deadline dl = deadline();
  all->assign(nranks_, std::string());
  (*all)[rank_] = mine;
  if (rank_ != 0) {
    TPC_CHECK(send(root_, 0, mine, dl));
    for (int r = 0; r < nranks_; ++r) TPC_CHECK(recv(root_, 0, &(*all)[r], dl));
    return tpcSuccess;
  }
  for (int r = 1; r < nranks_; ++r) TPC_CHECK(recv(peers_[r], r, &(*all)[r], dl));
  for (int r = 1; r < nranks_; ++r) {
    for (int q = 0; q < nranks_; ++q) TPC_CHECK(send(peers_[r], r, (*all)[q], dl));
  }
  return tpcSuccess;
}

tpcResult_t Bootstrap::broadcast(int root, std::string* data) {
  std::vector<std::string> all;
  TPC_CHECK(allGather(rank_ == root ? *data : std::string(), &all));
  *data = std::move(all[root]);
  return tpcSuccess;
}

tpcResult_t Bootstrap::barrier() {
  std::vector<std::string> all;
  return allGather(std::string(), &all);
}

tpcResult_t Bootstrap::agree(tpcResult_t mine, const char* step) {
  const int32_t code = mine;
  std::string blob(reinterpret_cast<const char*>(&code), sizeof(code));
  if (mine != tpcSuccess) blob += threadLastError();
  std::vector<std::string> all;
  TPC_CHECK(allGather(blob, &all));
  if (mine != tpcSuccess) return mine;
  for (int r = 0; r < nranks_; ++r) {
    int32_t theirs = tpcSuccess;
    if (all[r].size() >= sizeof(theirs)) std::memcpy(&theirs, all[r].data(), sizeof(theirs));
    if (theirs != tpcSuccess) {
      return fail(tpcRemoteError, "rank %d: rank %d failed while %s: %s", rank_, r, step,
                  all[r].substr(sizeof(theirs)).c_str());
    }
  }
  return tpcSuccess;
}

tpcResult_t Bootstrap::allGatherFd(int fd, std::vector<int>* fds) {
  TPC_CHECK(inStep());
  const Deadline dl = deadline();
  fds->assign(nranks_, -1);
  auto closeAll = [fds] {
    for (int& f : *fds) {
      if (f >= 0) ::close(f);
      f = -1;
    }
  };
  IoStatus st;
  if (rank_ != 0) {
    st = sendFd(root_, fd, dl);
    if (!st.ok()) return ioFailure(st, 0, "passing a file descriptor to");
    for (int q = 0; q < nranks_; ++q) {
      if (q == rank_) continue;
      std::string notice;
      st = receiveFd(root_, &(*fds)[q], dl, &notice);
      if (!st.ok()) {
        closeAll();
        return ioFailure(st, 0, "waiting for file descriptors from", notice);
      }
    }
    return tpcSuccess;
  }
  for (int r = 1; r < nranks_; ++r) {
    st = recvFd(peers_[r], &(*fds)[r], dl);
    if (!st.ok()) {
      closeAll();
      return ioFailure(st, r, "waiting for a file descriptor from");
    }
  }
  for (int r = 1; r < nranks_; ++r) {
    for (int q = 0; q < nranks_; ++q) {
      if (q == r) continue;
      st = sendFd(peers_[r], q == 0 ? fd : (*fds)[q], dl);
      if (!st.ok()) {
        closeAll();
        return ioFailure(st, r, "passing file descriptors to");
      }
    }
  }
  return tpcSuccess;
}

tpcResult_t Bootstrap::allGatherFds(const std::vector<int>& mine,
                                    std::vector<std::vector<int>>* all) {
  std::vector<std::string> counts;
  TPC_CHECK(allGather(std::to_string(mine.size()), &counts));
  const Deadline dl = deadline();
  all->assign(nranks_, std::vector<int>());
  auto closeAll = [all] {
    for (std::vector<int>& fds : *all) {
      for (int fd : fds) ::close(fd);
      fds.clear();
    }
  };
  auto receive = [&](const Socket& s, int from, int owner) -> tpcResult_t {
    const size_t n = std::stoul(counts[owner]);
    for (size_t i = 0; i < n; ++i) {
      int fd = -1;
      std::string notice;
      const IoStatus st = receiveFd(s, &fd, dl, &notice);
      if (!st.ok()) {
        closeAll();
        return ioFailure(st, from, "waiting for file descriptors from", notice);
      }
      (*all)[owner].push_back(fd);
    }
    return tpcSuccess;
  };
  if (rank_ != 0) {
    for (int fd : mine) {
      const IoStatus st = sendFd(root_, fd, dl);
      if (!st.ok()) return ioFailure(st, 0, "passing file descriptors to");
    }
    for (int q = 0; q < nranks_; ++q) {
      if (q != rank_) TPC_CHECK(receive(root_, 0, q));
    }
    return tpcSuccess;
  }
  for (int r = 1; r < nranks_; ++r) TPC_CHECK(receive(peers_[r], r, r));
  for (int r = 1; r < nranks_; ++r) {
    for (int q = 0; q < nranks_; ++q) {
      if (q == r) continue;
      for (int fd : q == 0 ? mine : (*all)[q]) {
        const IoStatus st = sendFd(peers_[r], fd, dl);
        if (!st.ok()) {
          closeAll();
          return ioFailure(st, r, "passing file descriptors to");
        }
      }
    }
  }
  return tpcSuccess;
}

}  // namespace tpcomm
