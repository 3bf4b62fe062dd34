#include "topology/topology.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>

namespace tpcomm {
namespace {

constexpr const char* kCacheMagic = "tpcomm-topology 2";

Fact mergeFact(Fact a, Fact b) {
  if (a == Fact::kNo || b == Fact::kNo) return Fact::kNo;
  if (a == Fact::kYes || b == Fact::kYes) return Fact::kYes;
  return Fact::kUnknown;
}

std::string describePair(const Topology& t, int i, int j) {
  return "ranks " + std::to_string(i) + " and " + std::to_string(j) + " (devices " + t.busIds[i] +
         " and " + t.busIds[j] + ")";
}

uint64_t fnv1a(const std::string& text) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

bool makeDirectories(const std::string& path) {
  for (size_t pos = 1; pos <= path.size(); ++pos) {
    if (pos != path.size() && path[pos] != '/') continue;
    const std::string prefix = path.substr(0, pos);
    if (mkdir(prefix.c_str(), 0700) != 0 && errno != EEXIST) return false;
  }
  return true;
}

}  // namespace

LinkFacts mergeFacts(const LinkFacts& a, const LinkFacts& b) {
  return LinkFacts{mergeFact(a.peerAccess, b.peerAccess), mergeFact(a.nvlink, b.nvlink),
                   mergeFact(a.works, b.works)};
}

std::vector<std::string> Topology::devices() const {
  std::vector<std::string> out;
  for (const std::string& bus : busIds) {
    if (std::find(out.begin(), out.end(), bus) == out.end()) out.push_back(bus);
  }
  return out;
}

PathDecision decidePath(const Topology& t, const PathSwitches& s) {
  if (s.disabled) return {false, "tpcomm's kernels are disabled by TPCOMM_DISABLE=1"};
  const size_t deviceCount = t.devices().size();
  bool allNvlink = true;
  for (int i = 0; i < t.nranks(); ++i) {
    for (int j = i + 1; j < t.nranks(); ++j) {
      const LinkFacts& f = t.at(i, j);
      if (f.works == Fact::kNo) {  // a failed check, or a mapping that failed
        return {false, describePair(t, i, j) +
                           " cannot use each other's memory: mapping it failed, or a write "
                           "through the mapping did not arrive"};
      }
      if (t.sameDevice(i, j)) continue;
      if (f.peerAccess == Fact::kNo) return {false, describePair(t, i, j) + " have no peer access"};
      if (f.nvlink == Fact::kYes) continue;
      allNvlink = false;
      if (deviceCount == 2) continue;  // a PCIe pair with working peer access
      return {false, describePair(t, i, j) +
                         (t.nvmlAvailable ? " are not connected by NVLink"
                                          : " cannot be shown to share NVLink (NVML unavailable)") +
                         ", and beyond two GPUs tpcomm needs NVLink between every pair"};
    }
  }
  const std::string checked = s.p2pCheck ? ", peer writes verified" : ", peer writes not checked";
  if (deviceCount == 1) {
    return {true,
            "all " + std::to_string(t.nranks()) + " ranks share device " + t.busIds[0] + checked};
  }
  if (allNvlink) {
    return {true, "every pair of the " + std::to_string(deviceCount) +
                      " devices is NVLink-connected" + checked};
  }
  return {true, "two GPUs with peer access over PCIe" + checked};
}

std::string TopologyCache::path(const std::string& directory) const {
  std::string key = machine;
  for (const std::string& d : devices) key += "|" + d;
  char name[64];
  std::snprintf(name, sizeof(name), "/topology-%016llx.txt",
                static_cast<unsigned long long>(fnv1a(key)));
  return directory + name;
}

void TopologyCache::record(size_t i, size_t j, const LinkFacts& facts) {
  pair(i, j) = LinkFacts{facts.peerAccess, facts.nvlink,
                         facts.works == Fact::kYes ? Fact::kYes : Fact::kUnknown};
}

bool TopologyCache::verified() const {
  return std::all_of(pairs.begin(), pairs.end(),
                     [](const LinkFacts& f) { return f.works == Fact::kYes; });
}

LinkFacts& TopologyCache::pair(size_t i, size_t j) {
  if (i > j) std::swap(i, j);
  // Row-major upper triangle without the diagonal.
  const size_t n = devices.size();
  return pairs[i * n - i * (i + 1) / 2 + (j - i - 1)];
}

std::string TopologyCache::serialize() const {
  // Plain strings and stdio throughout, no iostreams: tpcomm is loaded into processes (Python
  // with PyTorch among them) whose iostreams and locales may belong to another C++ runtime.
  std::string out = std::string(kCacheMagic) + "\nmachine " + machine + "\ndevices " +
                    std::to_string(devices.size());
  for (const std::string& d : devices) out += ' ' + d;
  out += '\n';
  size_t k = 0;
  for (size_t i = 0; i < devices.size(); ++i) {
    for (size_t j = i + 1; j < devices.size(); ++j, ++k) {
      const LinkFacts& f = pairs[k];
      out += "pair " + std::to_string(i) + ' ' + std::to_string(j) + ' ' +
             std::to_string(static_cast<int>(f.peerAccess)) + ' ' +
             std::to_string(static_cast<int>(f.nvlink)) + ' ' +
             std::to_string(static_cast<int>(f.works)) + '\n';
    }
  }
  return out;
}

namespace {

// Whitespace-separated words of a text, read one at a time.
class Words {
 public:
  explicit Words(const std::string& text, size_t from) : text_(text), at_(from) {}
  bool next(std::string* word) {
    const size_t start = text_.find_first_not_of(" \t\r\n", at_);
    if (start == std::string::npos) return false;
    const size_t end = text_.find_first_of(" \t\r\n", start);
    *word = text_.substr(start, end == std::string::npos ? std::string::npos : end - start);
    at_ = end == std::string::npos ? text_.size() : end;
    return true;
  }
  bool next(long long* value) {
    std::string word;
    if (!next(&word)) return false;
    char* end = nullptr;
    errno = 0;
    *value = std::strtoll(word.c_str(), &end, 10);
    return errno == 0 && end != word.c_str() && *end == '\0';
  }

 private:
  const std::string& text_;
  size_t at_;
};

// The line of `text` starting at *at (without its newline); moves *at past it.
bool nextLine(const std::string& text, size_t* at, std::string* line) {
  if (*at >= text.size()) return false;
  const size_t end = text.find('\n', *at);
  *line = text.substr(*at, end == std::string::npos ? std::string::npos : end - *at);
  *at = end == std::string::npos ? text.size() : end + 1;
  return true;
}

}  // namespace

bool TopologyCache::parse(const std::string& text, bool anyMachine) {
  size_t at = 0;
  std::string line;
  if (!nextLine(text, &at, &line) || line != kCacheMagic) return false;
  const std::string machineLine = "machine ";
  if (!nextLine(text, &at, &line) || line.compare(0, machineLine.size(), machineLine) != 0) {
    return false;
  }
  const std::string textMachine = line.substr(machineLine.size());
  if (!anyMachine && textMachine != machine) return false;
  Words in(text, at);
  std::string word;
  long long n = 0;
  if (!in.next(&word) || word != "devices" || !in.next(&n) ||
      n != static_cast<long long>(devices.size())) {
    return false;
  }
  for (const std::string& d : devices) {
    if (!in.next(&word) || word != d) return false;
  }
  std::vector<LinkFacts> parsed;
  for (long long i = 0; i < n; ++i) {
    for (long long j = i + 1; j < n; ++j) {
      long long a = 0, b = 0, access = 0, nvlink = 0, works = 0;
      if (!in.next(&word) || word != "pair" || !in.next(&a) || !in.next(&b) || !in.next(&access) ||
          !in.next(&nvlink) || !in.next(&works) || a != i || b != j) {
        return false;
      }
      for (long long v : {access, nvlink}) {
        if (v < -1 || v > 1) return false;
      }
      if (works != -1 && works != 1) return false;  // a failed check is never stored
      parsed.push_back(LinkFacts{static_cast<Fact>(access), static_cast<Fact>(nvlink),
                                 static_cast<Fact>(works)});
    }
  }
  if (in.next(&word)) return false;
  pairs = std::move(parsed);
  machine = textMachine;
  return true;
}

std::string defaultCacheDirectory() {
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  if (xdg != nullptr && xdg[0] == '/') return std::string(xdg) + "/tpcomm";
  const char* home = std::getenv("HOME");
  if (home != nullptr && home[0] == '/') return std::string(home) + "/.cache/tpcomm";
  return "";
}

bool loadTopologyCache(const std::string& directory, TopologyCache* cache) {
  if (directory.empty()) return false;
  FILE* f = std::fopen(cache->path(directory).c_str(), "r");
  if (f == nullptr) return false;
  std::string text;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) text.append(buf, n);
  std::fclose(f);
  return cache->parse(text);
}

bool storeTopologyCache(const std::string& directory, const TopologyCache& cache) {
  if (directory.empty() || !makeDirectories(directory)) return false;
  const std::string path = cache.path(directory);
  const std::string temporary = path + ".tmp." + std::to_string(getpid());
  const std::string text = cache.serialize();
  FILE* f = std::fopen(temporary.c_str(), "w");
  if (f == nullptr) return false;
  const bool written = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  if (std::fclose(f) != 0 || !written || std::rename(temporary.c_str(), path.c_str()) != 0) {
    std::remove(temporary.c_str());
    return false;
  }
  return true;
}

}  // namespace tpcomm
