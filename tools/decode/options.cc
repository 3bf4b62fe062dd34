#include "decode/options.h"

#include <getopt.h>

#include <sstream>

#include "text/text.h"

namespace tpcomm {
namespace decode {
namespace {

std::vector<std::string> splitList(const std::string& text) {
  std::vector<std::string> items;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) items.push_back(item);
  return items;
}

bool parseComms(const std::string& text, std::vector<Comm>* out) {
  out->clear();
  for (const std::string& item : splitList(text)) {
    if (item == "both") {
      out->insert(out->end(), {Comm::kNccl, Comm::kTpcomm});
    } else if (item == "all") {
      out->insert(out->end(), {Comm::kNccl, Comm::kTpcommUnfused, Comm::kTpcomm});
    } else if (item == "nccl") {
      out->push_back(Comm::kNccl);
    } else if (item == "tpcomm") {
      out->push_back(Comm::kTpcomm);
    } else if (item == "tpcomm-unfused") {
      out->push_back(Comm::kTpcommUnfused);
    } else {
      return false;
    }
  }
  return !out->empty();
}

enum Flag {
  kModel = 1000,
  kBatch,
  kInput,
  kOutput,
  kComm,
  kLayers,
  kTp,
  kWeights,
  kTpcommNccl,
  kJson,
  kWorkerRank,
  kWorkerIds,
  kWorkerDir,
};
const option kLong[] = {
    {"model", required_argument, nullptr, kModel},
    {"batch-size", required_argument, nullptr, kBatch},
    {"input-len", required_argument, nullptr, kInput},
    {"output-len", required_argument, nullptr, kOutput},
    {"comm", required_argument, nullptr, kComm},
    {"layers", required_argument, nullptr, kLayers},
    {"tp", required_argument, nullptr, kTp},
    {"weights", required_argument, nullptr, kWeights},
    {"tpcomm-nccl", no_argument, nullptr, kTpcommNccl},
    {"json", required_argument, nullptr, kJson},
    {"help", no_argument, nullptr, 'h'},
    {"worker-rank", required_argument, nullptr, kWorkerRank},
    {"worker-ids", required_argument, nullptr, kWorkerIds},
    {"worker-dir", required_argument, nullptr, kWorkerDir},
    {nullptr, 0, nullptr, 0},
};

const char* layoutName(WeightLayout layout) {
  switch (layout) {
    case WeightLayout::kDistinct:
      return "distinct";
    case WeightLayout::kShared:
      return "shared";
    default:
      return "auto";
  }
}

}  // namespace

const char* commName(Comm comm) {
  switch (comm) {
    case Comm::kNccl:
      return "nccl";
    case Comm::kTpcomm:
      return "tpcomm";
    case Comm::kTpcommUnfused:
      return "tpcomm-unfused";
  }
  return "?";
}

std::string usage() {
  std::string models;
  for (const ModelShape& m : presets()) models += (models.empty() ? "" : ", ") + m.name;
  return "usage: tpcomm-decode [options]\n"
         "Tensor-parallel decode of a transformer with synthetic weights, one process per GPU:\n"
         "prefill, then decode steps replayed from one CUDA graph, with NCCL or tpcomm carrying\n"
         "the all-reduces. Prints latency, per-step time, the all-reduces' share of a step and\n"
         "peak device memory, and checks that every communicator gives the same logits.\n"
         "  --model <names>        comma-separated presets: " +
         models +
         "\n"
         "                         (default llama3-8b)\n"
         "  --batch-size <list>    sequences per batch, comma-separated (default 1,8,32,64)\n"
         "  --input-len <n>        prompt tokens per sequence (default 256)\n"
         "  --output-len <n>       decode steps (default 256)\n"
         "  --comm <list>          nccl, tpcomm (the fused all-reduce + norm), tpcomm-unfused\n"
         "                         (all-reduce, then the norm kernel), both (nccl,tpcomm) or all\n"
         "                         (default both)\n"
         "  --layers <n>           fewer layers than the model has, for quick runs\n"
         "  --tp <n>               ranks (default: one per GPU)\n"
         "  --weights <layout>     distinct (every layer its own weights), shared (every layer\n"
         "                         reads the first layer's: same shapes, same time, far less\n"
         "                         memory) or auto (distinct where they fit; default)\n"
         "  --tpcomm-nccl          let tpcomm hand sizes its table gives NCCL to an NCCL\n"
         "                         communicator of its own (default: tpcomm's kernels carry all)\n"
         "  --json <file>          write the results as JSON\n";
}

bool parseOptions(int argc, char** argv, Options* out, std::string* error, bool* help) {
  Options o;
  *help = false;
  optind = 1;
  opterr = 0;
  const auto bad = [error](const std::string& why) {
    *error = why;
    return false;
  };
  int c;
  while ((c = getopt_long(argc, argv, "h", kLong, nullptr)) != -1) {
    const std::string arg = optarg != nullptr ? optarg : "";
    switch (c) {
      case kModel:
        o.models = splitList(arg);
        if (o.models.empty()) return bad("--model needs a name");
        for (const std::string& m : o.models) {
          if (findPreset(m) == nullptr) return bad("unknown model '" + m + "'");
        }
        break;
      case kBatch:
        o.batches.clear();
        for (const std::string& b : splitList(arg)) {
          int v = 0;
          if (!parseInt(b, 1, 4096, &v)) return bad("bad batch size '" + b + "' (1 to 4096)");
          o.batches.push_back(v);
        }
        if (o.batches.empty()) return bad("--batch-size needs a number");
        break;
      case kInput:
        if (!parseInt(arg, 1, 1 << 16, &o.inputLen)) {
          return bad("bad --input-len '" + arg + "' (1 to 65536)");
        }
        break;
      case kOutput:
        if (!parseInt(arg, 1, 1 << 16, &o.outputLen)) {
          return bad("bad --output-len '" + arg + "' (1 to 65536)");
        }
        break;
      case kComm:
        if (!parseComms(arg, &o.comms)) {
          return bad("bad --comm '" + arg + "' (nccl, tpcomm, tpcomm-unfused, both or all)");
        }
        break;
      case kLayers:
        if (!parseInt(arg, 1, 1 << 10, &o.layers)) return bad("bad --layers '" + arg + "'");
        break;
      case kTp:
        if (!parseInt(arg, 1, 8, &o.ranks)) return bad("bad --tp '" + arg + "' (1 to 8)");
        break;
      case kWeights:
        if (arg == "auto") {
          o.weights = WeightLayout::kAuto;
        } else if (arg == "distinct") {
          o.weights = WeightLayout::kDistinct;
        } else if (arg == "shared") {
          o.weights = WeightLayout::kShared;
        } else {
          return bad("bad --weights '" + arg + "' (distinct, shared or auto)");
        }
        break;
      case kTpcommNccl:
        o.tpcommNccl = true;
        break;
      case kJson:
        o.jsonPath = arg;
        break;
      case kWorkerRank:
        if (!parseInt(arg, 0, 1 << 10, &o.workerRank)) return bad("bad --worker-rank");
        break;
      case kWorkerIds:
        o.workerIds = arg;
        break;
      case kWorkerDir:
        o.workerDir = arg;
        break;
      case 'h':
        *help = true;
        return true;
      default:
        return bad("unknown or incomplete option '" + std::string(argv[optind - 1]) + "'");
    }
  }
  if (optind < argc) return bad("unexpected argument '" + std::string(argv[optind]) + "'");
  if (o.inputLen + o.outputLen > (1 << 16)) {
    return bad("--input-len plus --output-len must be at most 65536");
  }
  // The forward pass gives each prompt row a thread block in one grid dimension.
  for (int b : o.batches) {
    if (size_t(o.inputLen) * b > 65535) {
      return bad("batch " + std::to_string(b) + " x --input-len " + std::to_string(o.inputLen) +
                 " exceeds 65535 prompt rows");
    }
  }
  *out = o;
  return true;
}

std::vector<std::string> workerArguments(const Options& o, const std::string& model, int batch,
                                         Comm comm, int rank, const std::string& ids,
                                         const std::string& dir) {
  std::vector<std::string> args = {"/proc/self/exe",
                                   "--model",
                                   model,
                                   "--batch-size",
                                   std::to_string(batch),
                                   "--comm",
                                   commName(comm),
                                   "--input-len",
                                   std::to_string(o.inputLen),
                                   "--output-len",
                                   std::to_string(o.outputLen),
                                   "--weights",
                                   layoutName(o.weights),
                                   "--worker-rank",
                                   std::to_string(rank),
                                   "--worker-ids",
                                   ids,
                                   "--worker-dir",
                                   dir};
  if (o.layers > 0) args.insert(args.end(), {"--layers", std::to_string(o.layers)});
  if (o.tpcommNccl) args.push_back("--tpcomm-nccl");
  return args;
}

ModelShape modelFor(const Options& o, const std::string& name) {
  ModelShape m = *findPreset(name);
  if (o.layers > 0) m.layers = o.layers;
  return m;
}

}  // namespace decode
}  // namespace tpcomm
