// Rendezvous of the ranks of one communicator on one host, and the small collectives the runtime
// needs afterwards (exchange of buffer handles, file descriptors, agreement checks).
//
// Rank 0 listens on the abstract Unix socket named in the unique id; every other rank connects,
// proves it knows the id's secret and runs as the same user, and states its view of the world
// (nranks, configuration). Rank 0 admits a rank only when all of that matches. The connections
// stay open for the communicator's lifetime and carry star-shaped collectives through rank 0.
// Every wait is bounded by the timeout and fails with tpcTimeout naming the ranks involved.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bootstrap/socket.h"
#include "tpcomm/tpcomm.h"

namespace tpcomm {

// What tpcUniqueId holds.
struct RendezvousId {
  uint32_t magic;
  uint32_t version;
  uint8_t secret[16];
  char name[64];  // abstract socket name, NUL-terminated
};
static_assert(sizeof(RendezvousId) <= TPC_UNIQUE_ID_BYTES, "RendezvousId must fit tpcUniqueId");

tpcResult_t newRendezvousId(tpcUniqueId* id);
// False when the bytes are not a tpcomm unique id.
bool decodeRendezvousId(const tpcUniqueId& id, RendezvousId* out);

class Bootstrap {
 public:
  struct Options {
    int rank = 0;
    int nranks = 0;
    // Every rank's description of the configuration it was given; ranks must agree exactly.
    std::string configDigest;
    std::chrono::milliseconds timeout{0};
  };

  // Collective: returns once every rank has joined, or fails.
  static tpcResult_t connect(const tpcUniqueId& id, const Options& options,
                             std::unique_ptr<Bootstrap>* out);

  int rank() const { return rank_; }
  int nranks() const { return nranks_; }

  // Once one of these collectives fails in sending or receiving (a timeout, a closed
  // connection), every later one fails at once on this rank, saying why.
  //
  // all[r] is rank r's blob; blobs may differ in size.
  tpcResult_t allGather(const std::string& mine, std::vector<std::string>* all);
  // Rank `root`'s data ends up in *data on every rank.
  tpcResult_t broadcast(int root, std::string* data);
  tpcResult_t barrier();
  // Tells every rank how this rank's step went (with its error text); fails on every rank, with
  // tpcRemoteError naming the rank, if any rank failed. A rank whose own step failed keeps its own
  // error. Every rank takes part even when its step failed, so that a failure reaches all ranks
  // at once instead of leaving them waiting for the timeout.
  tpcResult_t agree(tpcResult_t mine, const char* step);
  // (*fds)[r] is a new descriptor for rank r's `fd`, owned by the caller; (*fds)[rank()] is -1.
  tpcResult_t allGatherFd(int fd, std::vector<int>* fds);
  // Any number of descriptors per rank: (*all)[r] are new descriptors for rank r's, owned by
  // the caller; (*all)[rank()] stays empty.
  tpcResult_t allGatherFds(const std::vector<int>& mine, std::vector<std::vector<int>>* all);

 private:
  Bootstrap(int rank, int nranks, std::chrono::milliseconds timeout)
      : rank_(rank), nranks_(nranks), timeout_(timeout) {}

  static tpcResult_t acceptRanks(const RendezvousId& id, const Options& options,
                                 std::unique_ptr<Bootstrap>* out);
  static tpcResult_t joinRoot(const RendezvousId& id, const Options& options,
                              std::unique_ptr<Bootstrap>* out);

  // How long an exchange waits. Rank 0 waits the timeout for the other ranks; they wait longer
  // for rank 0, so that where a third rank never comes, rank 0's notice naming it reaches them
  // before they give up on rank 0 itself, also where rank 0 entered the exchange a little later.
  std::chrono::milliseconds waitLimit() const;
  Deadline deadline() const { return Clock::now() + waitLimit(); }
  // Explains a failed send or receive. The ranks' exchanges are then out of step (a frame may
  // be half read, a peer's reply to this exchange may still come), so every later collective
  // fails at once (inStep), and the connections close so that peers blocked in one learn it now.
  // Rank 0 first sends every other rank a notice with its error, which names the rank that
  // failed: a rank that reads one (`notice`, Io::kNotice) fails with it.
  tpcResult_t ioFailure(const IoStatus& st, int peer, const char* what,
                        const std::string& notice = std::string());
  // recvFd, reading the rest of a notice that came instead of a descriptor.
  IoStatus receiveFd(const Socket& s, int* fd, Deadline deadline, std::string* notice);
  tpcResult_t inStep() const;
  tpcResult_t send(const Socket& s, int peer, const std::string& blob, Deadline deadline);
  tpcResult_t recv(const Socket& s, int peer, std::string* blob, Deadline deadline);

  int rank_;
  int nranks_;
  std::chrono::milliseconds timeout_;
  Socket root_;                      // on ranks > 0: the connection to rank 0
  std::vector<Socket> peers_;        // on rank 0: peers_[r] is the connection to rank r
  tpcResult_t broken_ = tpcSuccess;  // the failure that put the exchanges out of step
  std::string brokenBy_;
};

}  // namespace tpcomm
