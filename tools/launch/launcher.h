// Starting a tool's ranks as processes and listening to them (tpcomm-perf, tpcomm-decode). Each
// rank writes newline-terminated messages to a pipe; the coordinator reads every pipe until each
// closes, and a rank that fails (exits non-zero, dies, or reports an error) fails the whole run.
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>
#include <vector>

namespace tpcomm {
namespace launch {

// The descriptor number at which a rank process finds its message pipe.
constexpr int kMessageFd = 3;

// Called for every message, and with kClosed when a rank's pipe closes; returning false stops
// listening (the run has failed).
using MessageHandler = std::function<bool(int rank, const std::string& line)>;
constexpr const char* kClosed = "<closed>";

// Reads every descriptor until all are closed or the handler refuses a message. Closes them.
bool collectMessages(const std::vector<int>& fds, const MessageHandler& onMessage);

struct RankProcesses {
  std::vector<pid_t> pids;
  std::vector<int> fds;  // read ends of the message pipes
};

// Starts argv[r] as rank r's process with its message pipe at kMessageFd.
bool spawnRanks(const std::vector<std::vector<std::string>>& argv, RankProcesses* out,
                std::string* error);

// Waits for every rank process; once one has failed (or at once when `kill` is set) the rest are
// killed. Returns false if any failed or `kill` was set, the first failure described in *error.
bool reapRanks(const RankProcesses& ranks, bool kill, std::string* error);

// A rank's side: writes `line` and a newline to `fd`; a coordinator that is gone is ignored.
void sendMessage(int fd, const std::string& line);

// Ids and other bytes travel to rank processes as hexadecimal arguments.
std::string toHex(const void* data, size_t bytes);
bool fromHex(const std::string& hex, void* data, size_t bytes);

}  // namespace launch
}  // namespace tpcomm
