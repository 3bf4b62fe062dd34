#include "launch/launcher.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

extern char** environ;

namespace tpcomm {
namespace launch {

bool collectMessages(const std::vector<int>& fds, const MessageHandler& onMessage) {
  std::vector<std::string> pending(fds.size());
  std::vector<bool> open(fds.size(), true);
  size_t stillOpen = fds.size();
  bool ok = true;
  while (stillOpen > 0 && ok) {
    std::vector<pollfd> polls;
    std::vector<int> ranks;
    for (size_t r = 0; r < fds.size(); ++r) {
      if (!open[r]) continue;
      polls.push_back(pollfd{fds[r], POLLIN, 0});
      ranks.push_back(static_cast<int>(r));
    }
    if (poll(polls.data(), polls.size(), -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (size_t i = 0; i < polls.size() && ok; ++i) {
      if (polls[i].revents == 0) continue;
      const int r = ranks[i];
      char buf[4096];
      const ssize_t n = read(fds[r], buf, sizeof(buf));
      if (n <= 0) {
        if (n < 0 && errno == EINTR) continue;
        open[r] = false;
        --stillOpen;
        ok = onMessage(r, kClosed);
        continue;
      }
      pending[r].append(buf, static_cast<size_t>(n));
      size_t newline;
      while (ok && (newline = pending[r].find('\n')) != std::string::npos) {
        ok = onMessage(r, pending[r].substr(0, newline));
        pending[r].erase(0, newline + 1);
      }
    }
  }
  for (int fd : fds) close(fd);
  return ok;
}

bool spawnRanks(const std::vector<std::vector<std::string>>& argv, RankProcesses* out,
                std::string* error) {
  // A rank that cannot start leaves the others waiting for it at the rendezvous: stop them.
  auto stopStarted = [out] {
    std::string ignored;
    reapRanks(*out, true, &ignored);
    for (int fd : out->fds) close(fd);
    out->pids.clear();
    out->fds.clear();
  };
  for (size_t r = 0; r < argv.size(); ++r) {
    int pipeFds[2];
    if (pipe2(pipeFds, O_CLOEXEC) != 0) {
      *error = std::string("pipe: ") + std::strerror(errno);
      stopStarted();
      return false;
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    // dup2 clears close-on-exec on the copy, so only the rank's own pipe survives the exec.
    posix_spawn_file_actions_adddup2(&actions, pipeFds[1], kMessageFd);
    std::vector<char*> args;
    for (const std::string& a : argv[r]) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_t pid = 0;
    const int err = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    close(pipeFds[1]);
    if (err != 0) {
      close(pipeFds[0]);
      *error =
          "cannot start rank " + std::to_string(r) + " (" + argv[r][0] + "): " + std::strerror(err);
      stopStarted();
      return false;
    }
    out->pids.push_back(pid);
    out->fds.push_back(pipeFds[0]);
  }
  return true;
}

bool reapRanks(const RankProcesses& ranks, bool kill, std::string* error) {
  bool ok = true;
  if (kill) {
    for (pid_t pid : ranks.pids) ::kill(pid, SIGKILL);
  }
  for (size_t r = 0; r < ranks.pids.size(); ++r) {
    int status = 0;
    pid_t waited = -1;
    while ((waited = waitpid(ranks.pids[r], &status, 0)) < 0 && errno == EINTR) {
    }
    // Without its status (SIGCHLD ignored, say, which reaps children unseen) a rank counts as
    // failed: its exit is unknown.
    const int waitError = waited < 0 ? errno : 0;
    const bool failed = waited < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    if (failed && ok) {
      ok = false;
      *error =
          "rank " + std::to_string(r) + " (pid " + std::to_string(ranks.pids[r]) + ") " +
          (waited < 0 ? std::string("left no exit status: waitpid: ") + std::strerror(waitError)
           : WIFEXITED(status) ? "exited with status " + std::to_string(WEXITSTATUS(status))
                               : "was killed by signal " + std::to_string(WTERMSIG(status)));
      for (size_t q = r + 1; q < ranks.pids.size(); ++q) ::kill(ranks.pids[q], SIGKILL);
    }
  }
  return ok && !kill;
}

void sendMessage(int fd, const std::string& line) {
  const std::string text = line + "\n";
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

std::string toHex(const void* data, size_t bytes) {
  static const char kDigits[] = "0123456789abcdef";
  std::string hex;
  for (size_t i = 0; i < bytes; ++i) {
    const unsigned char c = static_cast<const unsigned char*>(data)[i];
    hex += kDigits[c >> 4];
    hex += kDigits[c & 15];
  }
  return hex;
}

bool fromHex(const std::string& hex, void* data, size_t bytes) {
  if (hex.size() != 2 * bytes) return false;
  for (size_t i = 0; i < bytes; ++i) {
    const std::string byte = hex.substr(2 * i, 2);
    char* end = nullptr;
    const long v = std::strtol(byte.c_str(), &end, 16);
    if (*end != '\0') return false;
    static_cast<unsigned char*>(data)[i] = static_cast<unsigned char>(v);
  }
  return true;
}

}  // namespace launch
}  // namespace tpcomm
