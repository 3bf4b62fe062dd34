#include "decode/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <sstream>

#include "text/text.h"

namespace tpcomm {
namespace decode {
namespace {

float bf16ToFloat(uint16_t bits) {
  const uint32_t word = uint32_t(bits) << 16;
  float f;
  std::memcpy(&f, &word, sizeof(f));
  return f;
}

const Run* findRun(const Report& report, const std::string& model, int batch, Comm comm) {
  for (const Run& r : report.runs) {
    if (r.model == model && r.batch == batch && r.comm == comm) return &r;
  }
  return nullptr;
}

// The tpcomm run a summary row shows: the fused call where it ran.
const Run* tpcommRun(const Report& report, const std::string& model, int batch) {
  const Run* fused = findRun(report, model, batch, Comm::kTpcomm);
  return fused != nullptr ? fused : findRun(report, model, batch, Comm::kTpcommUnfused);
}

double allReduceShare(const RankResult& r) {
  return r.stepP50Us > 0 ? (r.stepP50Us - r.localStepUs) / r.stepP50Us : 0;
}

std::string change(double value, double base) {
  return base > 0 ? strprintf("%+.1f%%", 100 * (value - base) / base) : "-";
}

}  // namespace

std::string encodeResult(const RankResult& r) {
  return strprintf(
      "RES weights=%s prefill_ms=%.4f total_ms=%.4f step_mean_us=%.3f step_p50_us=%.3f "
      "step_p99_us=%.3f local_step_us=%.3f peak_mb=%.1f comm_mb=%.1f graph_mb=%.1f",
      r.weights.c_str(), r.prefillMs, r.totalMs, r.stepMeanUs, r.stepP50Us, r.stepP99Us,
      r.localStepUs, r.peakMb, r.commMb, r.graphMb);
}

bool decodeResult(const std::string& line, RankResult* out) {
  std::istringstream in(line);
  std::string word;
  if (!(in >> word) || word != "RES") return false;
  RankResult r;
  int seen = 0;
  while (in >> word) {
    const size_t eq = word.find('=');
    if (eq == std::string::npos) return false;
    const std::string key = word.substr(0, eq), value = word.substr(eq + 1);
    if (key == "weights") {
      r.weights = value;
      ++seen;
      continue;
    }
    char* end = nullptr;
    const double v = std::strtod(value.c_str(), &end);
    if (end == value.c_str() || *end != '\0') return false;
    double* field = key == "prefill_ms"      ? &r.prefillMs
                    : key == "total_ms"      ? &r.totalMs
                    : key == "step_mean_us"  ? &r.stepMeanUs
                    : key == "step_p50_us"   ? &r.stepP50Us
                    : key == "step_p99_us"   ? &r.stepP99Us
                    : key == "local_step_us" ? &r.localStepUs
                    : key == "peak_mb"       ? &r.peakMb
                    : key == "comm_mb"       ? &r.commMb
                    : key == "graph_mb"      ? &r.graphMb
                                             : nullptr;
    if (field == nullptr) return false;
    *field = v;
    ++seen;
  }
  if (seen != 10) return false;
  *out = r;
  return true;
}

RankResult slowestOf(const std::vector<RankResult>& ranks) {
  RankResult s;
  for (const RankResult& r : ranks) {
    if (s.weights.empty() || r.weights == "shared") s.weights = r.weights;
    s.prefillMs = std::max(s.prefillMs, r.prefillMs);
    s.totalMs = std::max(s.totalMs, r.totalMs);
    s.stepMeanUs = std::max(s.stepMeanUs, r.stepMeanUs);
    s.stepP50Us = std::max(s.stepP50Us, r.stepP50Us);
    s.stepP99Us = std::max(s.stepP99Us, r.stepP99Us);
    s.localStepUs = std::max(s.localStepUs, r.localStepUs);
    s.peakMb = std::max(s.peakMb, r.peakMb);
    s.commMb = std::max(s.commMb, r.commMb);
    s.graphMb = std::max(s.graphMb, r.graphMb);
  }
  return s;
}

double percentile(std::vector<double>& values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t at = static_cast<size_t>(std::ceil(p * values.size())) - (p > 0 ? 1 : 0);
  return values[std::min(at, values.size() - 1)];
}

bool LogitsCheck::passed() const {
  if (elements == 0 || nonFinite != 0) return false;
  // More than two ranks: NCCL sums in another order; the roundings may part ways, not the model.
  return bitwise ? differing == 0 : maxAbsDiff <= 0.05 * maxAbs;
}

void compareLogits(const std::vector<uint16_t>& reference, const std::vector<uint16_t>& got,
                   LogitsCheck* check) {
  if (reference.size() != got.size()) {
    check->differing += std::max(reference.size(), got.size());
    check->nonFinite += 1;  // a missing or truncated file never passes
    return;
  }
  check->elements += reference.size();
  for (size_t i = 0; i < reference.size(); ++i) {
    const float a = bf16ToFloat(reference[i]), b = bf16ToFloat(got[i]);
    if (reference[i] != got[i]) ++check->differing;
    if (!std::isfinite(a) || !std::isfinite(b)) {
      ++check->nonFinite;
      continue;
    }
    check->maxAbsDiff = std::max(check->maxAbsDiff, double(std::fabs(a - b)));
    check->maxAbs = std::max(check->maxAbs, double(std::fabs(a)));
  }
}

std::string formatPreamble(const Report& report) {
  std::string s = strprintf(
      "# tpcomm-decode %s: tensor-parallel decode with synthetic weights, bf16\n"
      "#  %d x %s, TP %d, one process per rank; prompts of %d tokens, then %d decode steps\n",
      report.version.c_str(), report.gpus, report.gpu.c_str(), report.ranks, report.inputLen,
      report.outputLen);
  if (report.ranks == 1) {
    s += "#  ONE RANK: every all-reduce is local, nothing crosses NVLink. A diagnostic run, not a "
         "communication figure.\n";
  }
  s += "#  The prompt runs eagerly; every decode step is one CUDA graph replay, and the host waits "
       "for each\n"
       "#  (as an engine waits for its sampled tokens).\n";
  for (const ModelShape& m : report.models) {
    s += strprintf("#  %s: %d layers, hidden %d, %d heads (%d KV) of %d, MLP %d, vocabulary %d\n",
                   m.name.c_str(), m.layers, m.hidden, m.heads, m.kvHeads, m.headDim,
                   m.intermediate, m.vocab);
  }
  s += "#  Megatron sharding: QKV and gate/up split by columns, O and down by rows, the vocabulary "
       "over the ranks.\n"
       "#  All-reduces per forward pass: 2 per layer and 1 for the embedding, each followed by "
       "the residual add and RMSNorm.\n"
       "#  Attention: rotary embedding, then causal grouped-query attention over a bf16 KV cache "
       "of prompt + output\n"
       "#  tokens, in runs of 32 keys (decode) or 256 (prefill) merged by their softmax weights.\n"
       "#  weights: distinct = every layer its own; shared = every layer reads the first layer's "
       "(same shapes\n"
       "#  and time, less memory), where distinct ones would not fit.\n"
       "#  nccl = ncclAllReduce, then tpcomm's RMSNorm kernel; tpcomm = tpcAllReduceAddRmsNorm; "
       "tpcomm-unfused =\n"
       "#  tpcAllReduce, then the same RMSNorm kernel.";
  s += report.tpcommNccl ? " tpcomm hands the sizes its table gives NCCL to an NCCL "
                           "communicator of its own.\n"
                         : " tpcomm's kernels carry every size (no NCCL communicator).\n";
  s += "#  AR share: the part of a decode step's median that goes when its all-reduces are left "
       "out (norms stay).\n"
       "#  Memory: device memory in use at its highest, as the driver reports it; comm = what the "
       "communicator\n"
       "#  took at its creation and first calls; graph = what capturing the decode graphs took.\n";
  return s;
}

std::string formatHeader() {
  return "#\n"
         "#  model        batch  comm            weights    total ms  vs nccl  prefill ms"
         "   step us      p99  no-AR us  AR share   peak MB  comm MB  graph MB\n";
}

std::string formatRun(const Report& report, const Run& run) {
  const RankResult& r = run.result;
  const Run* nccl = findRun(report, run.model, run.batch, Comm::kNccl);
  const std::string versus =
      run.comm != Comm::kNccl && nccl != nullptr ? change(r.totalMs, nccl->result.totalMs) : "-";
  return strprintf(
      "   %-12s %5d  %-14s  %-8s %10.1f %8s %11.1f %9.1f %8.1f %9.1f %8.1f%% %9.0f %8.0f %9.0f\n",
      run.model.c_str(), run.batch, commName(run.comm), r.weights.c_str(), r.totalMs,
      versus.c_str(), r.prefillMs, r.stepP50Us, r.stepP99Us, r.localStepUs, 100 * allReduceShare(r),
      r.peakMb, r.commMb, r.graphMb);
}

std::string formatCheck(const LogitsCheck& c) {
  const std::string what =
      strprintf("#  logits of %s, batch %d: %s against %s, %zu elements: ", c.model.c_str(),
                c.batch, commName(c.comm), commName(c.reference), c.elements);
  if (c.nonFinite != 0) {
    return what + strprintf("%zu not finite: FAILED\n", c.nonFinite);
  }
  if (c.bitwise) {
    return what + (c.differing == 0 ? std::string("bitwise equal\n")
                                    : strprintf("%zu differ (max |diff| %.4g): FAILED\n",
                                                c.differing, c.maxAbsDiff));
  }
  return what + strprintf("%zu differ, max |diff| %.4g of max |logit| %.4g: %s\n", c.differing,
                          c.maxAbsDiff, c.maxAbs, c.passed() ? "within 5%" : "FAILED");
}

std::string formatSummary(const Report& report) {
  std::string rows;
  for (const Run& n : report.runs) {
    if (n.comm != Comm::kNccl) continue;
    const Run* t = tpcommRun(report, n.model, n.batch);
    if (t == nullptr) continue;
    rows +=
        strprintf("   %-12s %-22s %3d %6d %10.1f %10.1f %7s %9.0f %9.0f %7s\n", n.model.c_str(),
                  report.gpu.c_str(), report.ranks, n.batch, n.result.totalMs, t->result.totalMs,
                  change(t->result.totalMs, n.result.totalMs).c_str(), n.result.peakMb,
                  t->result.peakMb, change(t->result.peakMb, n.result.peakMb).c_str());
  }
  if (rows.empty()) return "";
  return "#\n"
         "# Latency of a request (prompt + decode steps) and peak device memory per GPU:\n"
         "#  model        GPU                     TP  batch    NCCL ms  tpcomm ms  change   NCCL "
         "MB "
         "tpcomm MB  change\n" +
         rows;
}

std::string formatJson(const Report& report) {
  std::string s = "{\n  \"tool\": \"tpcomm-decode\",\n";
  s += "  \"version\": " + jsonString(report.version) + ",\n";
  s += "  \"gpu\": " + jsonString(report.gpu) + ",\n";
  s += strprintf("  \"gpus\": %d,\n  \"tp\": %d,\n  \"input_len\": %d,\n  \"output_len\": %d,\n",
                 report.gpus, report.ranks, report.inputLen, report.outputLen);
  s += std::string("  \"tpcomm_nccl\": ") + (report.tpcommNccl ? "true" : "false") + ",\n";
  s += "  \"models\": [";
  for (size_t i = 0; i < report.models.size(); ++i) {
    const ModelShape& m = report.models[i];
    s += strprintf(
        "%s\n    {\"name\": %s, \"layers\": %d, \"hidden\": %d, \"heads\": %d, \"kv_heads\": %d, "
        "\"head_dim\": %d, \"intermediate\": %d, \"vocab\": %d}",
        i ? "," : "", jsonString(m.name).c_str(), m.layers, m.hidden, m.heads, m.kvHeads, m.headDim,
        m.intermediate, m.vocab);
  }
  s += "\n  ],\n  \"runs\": [";
  for (size_t i = 0; i < report.runs.size(); ++i) {
    const Run& run = report.runs[i];
    const RankResult& r = run.result;
    s += strprintf(
        "%s\n    {\"model\": %s, \"batch\": %d, \"comm\": \"%s\", \"weights\": %s, "
        "\"total_ms\": %.3f, \"prefill_ms\": %.3f, \"step_mean_us\": %.2f, \"step_p50_us\": "
        "%.2f, \"step_p99_us\": %.2f, \"step_without_allreduce_us\": %.2f, "
        "\"allreduce_share\": %.4f, \"peak_mb\": %.1f, \"comm_mb\": %.1f, \"graph_mb\": %.1f}",
        i ? "," : "", jsonString(run.model).c_str(), run.batch, commName(run.comm),
        jsonString(r.weights).c_str(), r.totalMs, r.prefillMs, r.stepMeanUs, r.stepP50Us,
        r.stepP99Us, r.localStepUs, allReduceShare(r), r.peakMb, r.commMb, r.graphMb);
  }
  s += "\n  ],\n  \"checks\": [";
  for (size_t i = 0; i < report.checks.size(); ++i) {
    const LogitsCheck& c = report.checks[i];
    s += strprintf(
        "%s\n    {\"model\": %s, \"batch\": %d, \"comm\": \"%s\", \"reference\": \"%s\", "
        "\"bitwise\": %s, \"elements\": %zu, \"differing\": %zu, \"non_finite\": %zu, "
        "\"max_abs_diff\": %.6g, \"passed\": %s}",
        i ? "," : "", jsonString(c.model).c_str(), c.batch, commName(c.comm), commName(c.reference),
        c.bitwise ? "true" : "false", c.elements, c.differing, c.nonFinite, c.maxAbsDiff,
        c.passed() ? "true" : "false");
  }
  s += "\n  ]\n}\n";
  return s;
}

}  // namespace decode
}  // namespace tpcomm
