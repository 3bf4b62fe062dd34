// The rendezvous across real processes and real sockets: every rank is a forked child.
#include "bootstrap/bootstrap.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "bootstrap/socket.h"
#include "common/error.h"

namespace tpcomm {
namespace {

constexpr int kDataMismatch = 100;

// Runs body(rank) in one child process per rank and returns their exit codes; a child still
// running after `limit` is killed and reported as -1.
std::vector<int> runRanks(int nranks, const std::function<int(int)>& body,
                          std::chrono::seconds limit = std::chrono::seconds(30)) {
  std::vector<pid_t> pids;
  for (int r = 0; r < nranks; ++r) {
    const pid_t pid = fork();
    if (pid == 0) _exit(body(r));
    pids.push_back(pid);
  }
  std::vector<int> codes(nranks, -1);
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (int r = 0; r < nranks; ++r) {
    int status = 0;
    while (waitpid(pids[r], &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        kill(pids[r], SIGKILL);
        waitpid(pids[r], &status, 0);
        status = -1;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    codes[r] = (status != -1 && WIFEXITED(status)) ? WEXITSTATUS(status) : -1;
  }
  return codes;
}

Bootstrap::Options options(int rank, int nranks, int timeoutMs, std::string digest = "cfg") {
  Bootstrap::Options o;
  o.rank = rank;
  o.nranks = nranks;
  o.configDigest = std::move(digest);
  o.timeout = std::chrono::milliseconds(timeoutMs);
  return o;
}

tpcUniqueId freshId() {
  tpcUniqueId id;
  EXPECT_EQ(tpcSuccess, newRendezvousId(&id));
  return id;
}

std::string blobOf(int rank) {
  std::string blob(static_cast<size_t>(rank) * 1000 + 1 + rank, '\0');
  for (size_t i = 0; i < blob.size(); ++i) blob[i] = static_cast<char>(rank * 31 + i);
  return blob;
}

// A rank that exercises every collective and checks what it receives.
int fullRank(const tpcUniqueId& id, int rank, int nranks) {
  std::unique_ptr<Bootstrap> boot;
  tpcResult_t res = Bootstrap::connect(id, options(rank, nranks, 20000), &boot);
  if (res != tpcSuccess) return res;
  std::vector<std::string> all;
  if ((res = boot->allGather(blobOf(rank), &all)) != tpcSuccess) return res;
  for (int r = 0; r < nranks; ++r) {
    if (all[r] != blobOf(r)) return kDataMismatch;
  }
  const int root = nranks - 1;
  std::string data = rank == root ? "from the last rank" : "";
  if ((res = boot->broadcast(root, &data)) != tpcSuccess) return res;
  if (data != "from the last rank") return kDataMismatch + 1;
  if ((res = boot->barrier()) != tpcSuccess) return res;

  // Descriptors: each rank shares a memory file holding its rank number.
  const int fd = memfd_create("tpcomm-test", MFD_CLOEXEC);
  if (fd < 0 || pwrite(fd, &rank, sizeof(rank), 0) != sizeof(rank)) return kDataMismatch + 2;
  std::vector<int> fds;
  if ((res = boot->allGatherFd(fd, &fds)) != tpcSuccess) return res;
  for (int r = 0; r < nranks; ++r) {
    if (r == rank) {
      if (fds[r] != -1) return kDataMismatch + 3;
      continue;
    }
    int seen = -1;
    if (pread(fds[r], &seen, sizeof(seen), 0) != sizeof(seen) || seen != r) {
      return kDataMismatch + 4;
    }
    close(fds[r]);
  }
  close(fd);

  // Any number of descriptors per rank: rank r shares r of them.
  std::vector<int> mine;
  for (int k = 0; k < rank; ++k) {
    const int f = memfd_create("tpcomm-test", MFD_CLOEXEC);
    const int value = 100 * rank + k;
    if (f < 0 || pwrite(f, &value, sizeof(value), 0) != sizeof(value)) return kDataMismatch + 5;
    mine.push_back(f);
  }
  std::vector<std::vector<int>> received;
  if ((res = boot->allGatherFds(mine, &received)) != tpcSuccess) return res;
  for (int r = 0; r < nranks; ++r) {
    if (static_cast<int>(received[r].size()) != (r == rank ? 0 : r)) return kDataMismatch + 6;
    for (size_t k = 0; k < received[r].size(); ++k) {
      int seen = -1;
      if (pread(received[r][k], &seen, sizeof(seen), 0) != sizeof(seen) ||
          seen != 100 * r + static_cast<int>(k)) {
        return kDataMismatch + 7;
      }
      close(received[r][k]);
    }
  }
  for (int f : mine) close(f);
  return tpcSuccess;
}

class BootstrapRanks : public ::testing::TestWithParam<int> {};

TEST_P(BootstrapRanks, CollectivesCarryBlobsOfEverySizeAndDescriptors) {
  const int nranks = GetParam();
  const tpcUniqueId id = freshId();
  const std::vector<int> codes = runRanks(nranks, [&](int r) { return fullRank(id, r, nranks); });
  for (int r = 0; r < nranks; ++r) EXPECT_EQ(0, codes[r]) << "rank " << r;
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, BootstrapRanks, ::testing::Values(1, 2, 3, 8));

TEST(Bootstrap, WrongSecretIsRejected) {
  const tpcUniqueId id = freshId();
  tpcUniqueId forged = id;
  RendezvousId rid;
  ASSERT_TRUE(decodeRendezvousId(forged, &rid));
  rid.secret[3] ^= 0x40;
  std::memcpy(forged.internal, &rid, sizeof(rid));

  const std::vector<int> codes = runRanks(2, [&](int r) {
    std::unique_ptr<Bootstrap> boot;
    return static_cast<int>(Bootstrap::connect(r == 0 ? id : forged, options(r, 2, 1500), &boot));
  });
  EXPECT_EQ(tpcInvalidUsage, codes[1]) << "the forged rank must be refused";
  EXPECT_EQ(tpcTimeout, codes[0]) << "rank 0 must keep waiting for the real rank 1, then time out";
}

TEST(Bootstrap, MissingRankEndsInTimeoutNotAHang) {
  const tpcUniqueId id = freshId();
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int> codes = runRanks(3, [&](int r) {
    if (r == 2) return 0;  // never joins
    std::unique_ptr<Bootstrap> boot;
    return static_cast<int>(Bootstrap::connect(id, options(r, 3, 500), &boot));
  });
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(tpcTimeout, codes[0]);
  EXPECT_EQ(tpcTimeout, codes[1]);
  EXPECT_LT(elapsed, std::chrono::seconds(10));
}

TEST(Bootstrap, MissingRootEndsInTimeout) {
  const tpcUniqueId id = freshId();
  const std::vector<int> codes = runRanks(2, [&](int r) {
    if (r == 0) return 0;
    std::unique_ptr<Bootstrap> boot;
    return static_cast<int>(Bootstrap::connect(id, options(r, 2, 300), &boot));
  });
  EXPECT_EQ(tpcTimeout, codes[1]);
}

// Rank 1's first exchange times out while rank 0 comes late: rank 0's reply to it must never pass
// for the reply to a later exchange. The failed exchange fails on rank 0 too (rank 1 closed its
// connection), and every later one fails at once on both, saying why.
TEST(Bootstrap, AFailedExchangeLeavesNoStaleReplyBehind) {
  const tpcUniqueId id = freshId();
  const std::vector<int> codes = runRanks(2, [&](int r) {
    std::unique_ptr<Bootstrap> boot;
    tpcResult_t res = Bootstrap::connect(id, options(r, 2, 300), &boot);
    if (res != tpcSuccess) return 50 + static_cast<int>(res);
    // Later than rank 1 waits for rank 0: its 300 ms and the 2 s it allows rank 0 beyond them.
    if (r == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2600));
    std::vector<std::string> all;
    const tpcResult_t first = boot->allGather("first from " + std::to_string(r), &all);
    // Rank 1 goes on once rank 0 has answered the first exchange, as it would have.
    if (r == 1) std::this_thread::sleep_for(std::chrono::milliseconds(700));
    res = boot->allGather("second from " + std::to_string(r), &all);
    if (first != (r == 0 ? tpcRemoteError : tpcTimeout)) return 60 + static_cast<int>(first);
    if (res == tpcSuccess) return all[0] == "second from 0" ? kDataMismatch : kDataMismatch + 1;
    if (threadLastError().find("out of step") == std::string::npos) return kDataMismatch + 2;
    return 0;
  });
  EXPECT_EQ(0, codes[0]);
  EXPECT_EQ(0, codes[1]) << kDataMismatch + 1
                         << ": the first exchange's reply taken for the second";
}

// A rank that dies between exchanges: rank 0, which relays every exchange, names it, and sends
// its error to the other ranks before it closes their connections, in an exchange of blobs and in
// one of descriptors alike.
TEST(Bootstrap, ARankThatDiesIsNamedToEveryRank) {
  for (const bool descriptors : {false, true}) {
    const tpcUniqueId id = freshId();
    const std::vector<int> codes = runRanks(3, [&](int r) {
      std::unique_ptr<Bootstrap> boot;
      const tpcResult_t res = Bootstrap::connect(id, options(r, 3, 5000), &boot);
      if (res != tpcSuccess) return 50 + static_cast<int>(res);
      if (r == 2) return 0;  // exits, closing its connection
      tpcResult_t exchanged;
      if (descriptors) {
        std::vector<int> fds;
        exchanged = boot->allGatherFd(STDIN_FILENO, &fds);
      } else {
        std::vector<std::string> all;
        exchanged = boot->allGather("blob", &all);
      }
      if (exchanged != tpcRemoteError) return 60 + static_cast<int>(exchanged);
      const std::string error = threadLastError();
      if (error.find("rank 2 closed its connection") == std::string::npos) return kDataMismatch;
      return r == 1 && error.find("rank 0 gave up on the exchanges") == std::string::npos
                 ? kDataMismatch + 1
                 : 0;
    });
    EXPECT_EQ(0, codes[0]) << (descriptors ? "descriptors" : "blobs");
    EXPECT_EQ(0, codes[1]) << (descriptors ? "descriptors" : "blobs")
                           << ": the previous library told rank 1 only that rank 0 had closed";
  }
}

// Rank 2 never comes to an exchange, and rank 0 comes to it after rank 1: rank 1 still learns
// that rank 2 is the one missing, from rank 0's notice, rather than timing out on rank 0 first.
// The same at the rendezvous, where rank 2 never connects and rank 0 listens late.
TEST(Bootstrap, AMissingRankIsNamedToRanksThatCameBeforeRankZero) {
  for (const bool atRendezvous : {false, true}) {
    const tpcUniqueId id = freshId();
    const auto rankZeroLate = [] { std::this_thread::sleep_for(std::chrono::milliseconds(200)); };
    const std::vector<int> codes = runRanks(3, [&](int r) {
      if (atRendezvous && r == 2) return 0;
      if (atRendezvous && r == 0) rankZeroLate();
      std::unique_ptr<Bootstrap> boot;
      tpcResult_t res = Bootstrap::connect(id, options(r, 3, 500), &boot);
      if (!atRendezvous) {
        if (res != tpcSuccess) return 50 + static_cast<int>(res);
        if (r == 2) {
          std::this_thread::sleep_for(std::chrono::milliseconds(1500));
          return 0;
        }
        if (r == 0) rankZeroLate();
        std::vector<std::string> all;
        res = boot->allGather("blob", &all);
      }
      if (res == tpcSuccess) return 70;
      const char* names = atRendezvous ? "ranks 2 did not join" : "waiting for rank 2";
      return threadLastError().find(names) == std::string::npos ? kDataMismatch : 0;
    });
    EXPECT_EQ(0, codes[0]) << (atRendezvous ? "rendezvous" : "exchange");
    EXPECT_EQ(0, codes[1]) << (atRendezvous ? "rendezvous" : "exchange") << ": " << kDataMismatch
                           << " is an error that does not name rank 2";
  }
}

// The lowest descriptor number this process has free.
int lowestFreeFd() {
  const int fd = open("/dev/null", O_RDONLY);
  close(fd);
  return fd;
}

// A rank whose limit on open descriptors leaves no room for those its peer passes says so; the
// kernel drops such a descriptor and reports it only in the message's flags.
TEST(Bootstrap, RunningOutOfDescriptorsSaysSo) {
  const tpcUniqueId id = freshId();
  const std::vector<int> codes = runRanks(2, [&](int r) {
    std::unique_ptr<Bootstrap> boot;
    const tpcResult_t res = Bootstrap::connect(id, options(r, 2, 5000), &boot);
    if (res != tpcSuccess) return 50 + static_cast<int>(res);
    std::vector<int> mine;
    if (r == 0) {
      for (int i = 0; i < 64; ++i) mine.push_back(open("/dev/null", O_RDONLY));
    } else {
      rlimit limit{};
      getrlimit(RLIMIT_NOFILE, &limit);
      // Room for 8 more at most: a descriptor's number must stay below the limit.
      limit.rlim_cur = static_cast<rlim_t>(lowestFreeFd() + 8);
      if (setrlimit(RLIMIT_NOFILE, &limit) != 0) return 70;
    }
    std::vector<std::vector<int>> received;
    const tpcResult_t gathered = boot->allGatherFds(mine, &received);
    if (r == 0) return 0;
    if (gathered != tpcSystemError) return 60 + static_cast<int>(gathered);
    return threadLastError().find("limit on open descriptors") == std::string::npos ? kDataMismatch
                                                                                    : 0;
  });
  EXPECT_EQ(0, codes[0]);
  EXPECT_EQ(0, codes[1]);
}

// A peer that dies with bytes it never read makes the next read fail with ECONNRESET, not end of
// file: waiting for a descriptor, as waiting for a blob, that is a closed connection, which the
// bootstrap reports as the peer's failure.
TEST(Socket, APeerThatClosesWithUnreadBytesHasClosed) {
  const Deadline deadline = Clock::now() + std::chrono::seconds(5);
  for (bool descriptor : {true, false}) {
    int fds[2];
    ASSERT_EQ(0, socketpair(AF_UNIX, SOCK_STREAM, 0, fds));
    Socket mine(fds[0]), peer(fds[1]);
    const char byte = 'x';
    ASSERT_TRUE(sendAll(mine, &byte, 1, deadline).ok());
    peer.close();  // the byte unread
    int fd = -1;
    char got = 0;
    const IoStatus st = descriptor ? recvFd(mine, &fd, deadline) : recvAll(mine, &got, 1, deadline);
    EXPECT_EQ(Io::kClosed, st.result) << (descriptor ? "recvFd: " : "recvAll: ") << st.describe();
  }
}

TEST(Bootstrap, RanksMustAgreeOnWorldSize) {
  const tpcUniqueId id = freshId();
  const std::vector<int> codes = runRanks(2, [&](int r) {
    std::unique_ptr<Bootstrap> boot;
    // Rank 1 believes in a world of 3; it can still join rank 0's world of 2 as rank 1.
    return static_cast<int>(Bootstrap::connect(id, options(r, r == 0 ? 2 : 3, 5000), &boot));
  });
  EXPECT_EQ(tpcInvalidUsage, codes[0]);
  EXPECT_EQ(tpcInvalidUsage, codes[1]);
}

TEST(Bootstrap, RanksMustAgreeOnConfiguration) {
  const tpcUniqueId id = freshId();
  const std::vector<int> codes = runRanks(3, [&](int r) {
    std::unique_ptr<Bootstrap> boot;
    return static_cast<int>(
        Bootstrap::connect(id, options(r, 3, 5000, r == 2 ? "other" : "cfg"), &boot));
  });
  for (int r = 0; r < 3; ++r) EXPECT_EQ(tpcInvalidUsage, codes[r]) << "rank " << r;
}

TEST(Bootstrap, DuplicateRankIsRefused) {
  const tpcUniqueId id = freshId();
  const std::vector<int> codes = runRanks(3, [&](int r) {
    std::unique_ptr<Bootstrap> boot;
    return static_cast<int>(Bootstrap::connect(id, options(r == 2 ? 1 : r, 3, 1000), &boot));
  });
  EXPECT_EQ(tpcTimeout, codes[0]) << "rank 2 never arrives";
  // One of the two processes claiming rank 1 is refused at once, the other times out with rank 0.
  EXPECT_TRUE((codes[1] == tpcInvalidUsage && codes[2] == tpcTimeout) ||
              (codes[1] == tpcTimeout && codes[2] == tpcInvalidUsage))
      << codes[1] << " " << codes[2];
}

TEST(Bootstrap, AnIdServesOneCommunicatorAtATime) {
  const tpcUniqueId id = freshId();
  const std::vector<int> codes = runRanks(2, [&](int r) {
    if (r == 1) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::unique_ptr<Bootstrap> boot;
    return static_cast<int>(Bootstrap::connect(id, options(0, 2, 600), &boot));
  });
  EXPECT_EQ(tpcTimeout, codes[0]);
  EXPECT_EQ(tpcInvalidUsage, codes[1]) << "a second rank 0 on the same id must be refused";
}

TEST(Bootstrap, GarbageIdIsRejected) {
  tpcUniqueId id;
  std::memset(&id, 0x5a, sizeof(id));
  std::unique_ptr<Bootstrap> boot;
  EXPECT_EQ(tpcInvalidArgument, Bootstrap::connect(id, options(0, 2, 100), &boot));
}

TEST(Bootstrap, IdsAreFreshAndSecret) {
  const tpcUniqueId a = freshId();
  const tpcUniqueId b = freshId();
  RendezvousId ra, rb;
  ASSERT_TRUE(decodeRendezvousId(a, &ra));
  ASSERT_TRUE(decodeRendezvousId(b, &rb));
  EXPECT_STRNE(ra.name, rb.name);
  EXPECT_NE(0, std::memcmp(ra.secret, rb.secret, sizeof(ra.secret)));
}

}  // namespace
}  // namespace tpcomm
