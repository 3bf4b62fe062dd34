#include "perf/options.h"

#include <getopt.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "common/env.h"
#include "core/config.h"
#include "text/text.h"

namespace tpcomm {
namespace perf {
namespace {

// Counts and ranks are ints; anything up to 2^30 is accepted where no smaller bound applies.
constexpr int kMaxInt = 1 << 30;
// The largest -e: far beyond any GPU's memory, and small enough that buffer sizes derived from it
// cannot overflow.
constexpr size_t kMostBytes = size_t{1} << 40;

constexpr const char* kShort = "b:e:f:i:n:w:c:d:o:G:J:a:g:th";
enum LongOnly { kGraph = 1000, kEager, kNccl, kProcesses, kZeroCopy, kFused, kWorker, kIds };
const option kLong[] = {
    {"minbytes", required_argument, nullptr, 'b'},
    {"maxbytes", required_argument, nullptr, 'e'},
    {"stepfactor", required_argument, nullptr, 'f'},
    {"stepbytes", required_argument, nullptr, 'i'},
    {"iters", required_argument, nullptr, 'n'},
    {"warmup_iters", required_argument, nullptr, 'w'},
    {"check", required_argument, nullptr, 'c'},
    {"datatype", required_argument, nullptr, 'd'},
    {"op", required_argument, nullptr, 'o'},
    {"cudagraph", required_argument, nullptr, 'G'},
    {"output_file", required_argument, nullptr, 'J'},
    {"algo", required_argument, nullptr, 'a'},
    {"ngpus", required_argument, nullptr, 'g'},
    {"threads", no_argument, nullptr, 't'},
    {"help", no_argument, nullptr, 'h'},
    {"graph", no_argument, nullptr, kGraph},
    {"eager", no_argument, nullptr, kEager},
    {"nccl", required_argument, nullptr, kNccl},
    {"processes", no_argument, nullptr, kProcesses},
    {"zero-copy", no_argument, nullptr, kZeroCopy},
    {"fused", required_argument, nullptr, kFused},
    {"worker", required_argument, nullptr, kWorker},
    {"ids", required_argument, nullptr, kIds},
    {nullptr, 0, nullptr, 0},
};

}  // namespace

std::string usage() {
  return "usage: tpcomm-perf [options]\n"
         "  -b, --minbytes <size>      smallest message (default 8; K, M, G suffixes)\n"
         "  -e, --maxbytes <size>      largest message (default 256M)\n"
         "  -f, --stepfactor <f>       multiply the size by f between rows (default 2)\n"
         "  -i, --stepbytes <size>     add this many bytes between rows instead\n"
         "  -n, --iters <n>            timed iterations per size (default 20)\n"
         "  -w, --warmup_iters <n>     warm-up iterations per size (default 5)\n"
         "  -c, --check <0|1>          verify every size exactly (default 1)\n"
         "  -d, --datatype <type>      float, half or bfloat16 (default bfloat16)\n"
         "  -o, --op <op>              sum (the only operation)\n"
         "  -G, --cudagraph <n>        capture the iterations in a CUDA graph and replay it n\n"
         "                             times a timed section; 0 times eager calls, the\n"
         "                             iterations 10 times a section (default 10)\n"
         "      --graph, --eager       graph mode (-G 10) or eager mode (-G 0)\n"
         "  -a, --algo <algo>          auto, oneshot, twoshot, push-oneshot, push-twoshot or\n"
         "                             nccl (default auto)\n"
         "  -g, --ngpus <n>            ranks (default: one per GPU, four on a single GPU)\n"
         "  -t, --threads              run all ranks as threads of one process (the default\n"
         "                             where ranks share a GPU)\n"
         "      --processes            one process per rank even where ranks share a GPU\n"
         "                             (their kernels then time-slice: slow, for testing)\n"
         "      --nccl <on|off>        time NCCL beside tpcomm where it can run (default on)\n"
         "      --zero-copy            read peers' inputs in place: captured calls registered\n"
         "                             after capture, eager calls on a registered pool\n"
         "      --fused <hidden>       time the all-reduce fused with the residual add and\n"
         "                             RMSNorm (tpcAllReduceAddRmsNorm) on rows of <hidden>\n"
         "                             elements, beside tpcomm's all-reduce alone and NCCL's\n"
         "                             all-reduce followed by the norm kernel; sizes become\n"
         "                             whole rows (tokens)\n"
         "  -J, --output_file <file>   also write the results as JSON\n"
         "  -h, --help                 this text\n";
}

bool parseSize(const std::string& text, size_t* bytes) { return parseByteSize(text, bytes); }

bool parseDataType(const std::string& text, tpcDataType_t* type) {
  if (text == "float" || text == "float32" || text == "f32") {
    *type = tpcFloat32;
  } else if (text == "half" || text == "float16" || text == "fp16" || text == "f16") {
    *type = tpcFloat16;
  } else if (text == "bfloat16" || text == "bf16") {
    *type = tpcBfloat16;
  } else {
    return false;
  }
  return true;
}

const char* dataTypeName(tpcDataType_t type) {
  switch (type) {
    case tpcFloat32:
      return "float";
    case tpcFloat16:
      return "half";
    case tpcBfloat16:
      return "bfloat16";
    default:
      return "unknown";
  }
}

bool parseOptions(int argc, char** argv, Options* out, std::string* error, bool* help) {
  Options o;
  *help = false;
  optind = 0;  // 0, not 1: glibc then also resets its state from an earlier parse
  opterr = 0;
  int c;
  auto bad = [&](const std::string& what) {
    *error = what;
    return false;
  };
  while ((optopt = 0, c = getopt_long(argc, argv, kShort, kLong, nullptr)) != -1) {
    const std::string arg = optarg != nullptr ? optarg : "";
    switch (c) {
      case 'b':
        if (!parseSize(arg, &o.minBytes)) return bad("bad -b size '" + arg + "'");
        break;
      case 'e':
        if (!parseSize(arg, &o.maxBytes)) return bad("bad -e size '" + arg + "'");
        break;
      case 'f': {
        char* end = nullptr;
        o.stepFactor = std::strtod(arg.c_str(), &end);
        if (end == arg.c_str() || *end != '\0' || !(o.stepFactor > 1.0) ||
            !std::isfinite(o.stepFactor)) {
          return bad("bad -f factor '" + arg + "' (must be finite and > 1)");
        }
        break;
      }
      case 'i':
        if (!parseSize(arg, &o.stepBytes) || o.stepBytes == 0) {
          return bad("bad -i step '" + arg + "'");
        }
        break;
      case 'n':
        if (!parseInt(optarg, 1, kMaxInt, &o.iters)) return bad("bad -n iterations '" + arg + "'");
        break;
      case 'w':
        if (!parseInt(optarg, 0, kMaxInt, &o.warmup)) return bad("bad -w iterations '" + arg + "'");
        break;
      case 'c': {
        int v = 0;
        if (!parseInt(optarg, 0, 1, &v)) return bad("bad -c value '" + arg + "'");
        o.check = v == 1;
        break;
      }
      case 'd':
        if (!parseDataType(arg, &o.dtype)) {
          return bad("unknown data type '" + arg + "' (float, half or bfloat16)");
        }
        break;
      case 'o':
        if (arg != "sum") return bad("unsupported op '" + arg + "' (tpcomm-perf times sum)");
        break;
      case 'G':
        if (!parseInt(optarg, 0, kMaxInt, &o.graphLaunches))
          return bad("bad -G count '" + arg + "'");
        break;
      case kGraph:
        o.graphLaunches = Options().graphLaunches;
        break;
      case kEager:
        o.graphLaunches = 0;
        break;
      case 'J':
        o.jsonPath = arg;
        break;
      case 'a': {
        tpcAlgorithm_t algorithm;
        if (!parseAlgorithm(arg.c_str(), &algorithm)) {
          return bad("unknown algorithm '" + arg +
                     "' (auto, oneshot, twoshot, push-oneshot, push-twoshot or nccl)");
        }
        o.algo = algorithmName(algorithm);
        break;
      }
      case 'g':
        if (!parseInt(optarg, 1, 8, &o.nranks)) {
          return bad("bad -g rank count '" + arg + "' (1 to 8)");
        }
        break;
      case 't':
        o.threads = true;
        break;
      case kProcesses:
        o.processes = true;
        break;
      case kZeroCopy:
        o.zeroCopy = true;
        break;
      case kFused: {
        int hidden = 0;
        if (!parseInt(optarg, 8, 16384, &hidden) || hidden % 8 != 0) {
          return bad("bad --fused hidden size '" + arg + "' (a multiple of 8 up to 16384)");
        }
        o.fusedHidden = static_cast<size_t>(hidden);
        break;
      }
      case kNccl:
        if (arg != "on" && arg != "off") return bad("bad --nccl value '" + arg + "' (on or off)");
        o.nccl = arg == "on";
        break;
      case kWorker:
        if (!parseInt(optarg, 0, kMaxInt, &o.workerRank)) return bad("bad --worker rank");
        break;
      case kIds:
        o.workerIds = arg;
        break;
      case 'h':
        *help = true;
        return true;
      default: {
        // optopt holds a long option's value where that option lacks its argument: name it as
        // typed instead.
        const bool shortOption = optopt > 0 && optopt < 128 && std::strchr(kShort, optopt);
        const std::string which =
            shortOption ? std::string("-") + static_cast<char>(optopt) : argv[optind - 1];
        return bad("unknown or incomplete option '" + which + "'");
      }
    }
  }
  if (optind < argc) return bad(std::string("unexpected argument '") + argv[optind] + "'");
  if (o.minBytes > o.maxBytes) return bad("-b is larger than -e");
  if (o.maxBytes > kMostBytes) return bad("-e is beyond 1 TiB");
  if (o.algo == "nccl" && !o.nccl) return bad("--algo nccl needs --nccl on");
  if (o.threads && o.processes) return bad("-t and --processes exclude each other");
  if (o.zeroCopy && o.algo == "nccl") return bad("--zero-copy is tpcomm's, not NCCL's");
  if (o.fusedHidden != 0) {
    if (o.dtype == tpcFloat32) return bad("--fused takes half or bfloat16 rows");
    if (o.zeroCopy) return bad("--fused reads its input locally: no --zero-copy");
    if (o.algo == "nccl") return bad("--fused times NCCL + norm beside tpcomm: no --algo nccl");
  }
  if (sweepSizes(o, sweepUnit(o), 1).empty()) {
    return bad("no size from -b to -e holds a whole " +
               std::string(o.fusedHidden != 0 ? "row" : "element") + " (" +
               std::to_string(sweepUnit(o)) + " bytes)");
  }
  *out = o;
  return true;
}

size_t sweepUnit(const Options& o) {
  const size_t elemBytes = o.dtype == tpcFloat32 ? 4 : 2;
  return o.fusedHidden != 0 ? o.fusedHidden * elemBytes : elemBytes;
}

std::vector<size_t> sweepSizes(const Options& o, size_t elemBytes, size_t most) {
  std::vector<size_t> sizes;
  for (double size = static_cast<double>(o.minBytes);
       size <= static_cast<double>(o.maxBytes) && sizes.size() < most;) {
    const size_t bytes = static_cast<size_t>(size) / elemBytes * elemBytes;
    if (bytes > 0 && (sizes.empty() || sizes.back() != bytes)) sizes.push_back(bytes);
    const double next = o.stepBytes != 0 ? size + static_cast<double>(o.stepBytes)
                                         : std::floor(size * o.stepFactor);
    size = next > size ? next : size + 1;
  }
  return sizes;
}

std::vector<std::string> workerArguments(int argc, char** argv, int rank, const std::string& ids) {
  std::vector<std::string> args(argv, argv + argc);
  args.push_back("--worker");
  args.push_back(std::to_string(rank));
  args.push_back("--ids");
  args.push_back(ids);
  return args;
}

}  // namespace perf
}  // namespace tpcomm
