#include "perf/report.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "text/text.h"

namespace tpcomm {
namespace perf {
namespace {

// nccl-tests prints large times without decimals to keep the columns.
std::string formatTime(double us) {
  return us < 10000 ? strprintf("%7.2f", us) : strprintf("%7.0f", us);
}

std::string formatMeasurement(const Report& report, size_t bytes, const Measurement& m) {
  const double algbw = algbwGBs(bytes, m.timeUs);
  return strprintf("  %s  %6.2f  %6.2f  %6" PRIu64, formatTime(m.timeUs).c_str(), algbw,
                   busbwGBs(algbw, report.nranks), m.wrong);
}

std::string jsonNumber(double v) { return strprintf("%.6g", v); }

std::string jsonMeasurement(const Report& report, size_t bytes, const Measurement& m) {
  const double algbw = algbwGBs(bytes, m.timeUs);
  return "{\"time_us\": " + jsonNumber(m.timeUs) + ", \"algbw_gbs\": " + jsonNumber(algbw) +
         ", \"busbw_gbs\": " + jsonNumber(busbwGBs(algbw, report.nranks)) +
         ", \"wrong\": " + std::to_string(m.wrong) + "}";
}

double averageBusbw(const Report& report) {
  double sum = 0;
  int n = 0;
  for (const Row& row : report.rows) {
    for (const Measurement* m : {&row.outOfPlace, &row.inPlace}) {
      sum += busbwGBs(algbwGBs(row.bytes, m->timeUs), report.nranks);
      ++n;
    }
  }
  return n == 0 ? 0 : sum / n;
}

}  // namespace

double Row::bestNcclUs() const {
  if (ncclUs < 0) return ncclSymUs;
  return ncclSymUs < 0 ? ncclUs : std::min(ncclUs, ncclSymUs);
}

double algbwGBs(size_t bytes, double timeUs) {
  return timeUs > 0 ? static_cast<double>(bytes) / timeUs * 1e-3 : 0;
}

double busbwGBs(double algbw, int nranks) {
  return nranks > 0 ? algbw * 2.0 * (nranks - 1) / nranks : 0;
}

Row combineRanks(const std::vector<Row>& perRank) {
  Row out = perRank.front();
  for (size_t r = 1; r < perRank.size(); ++r) {
    const Row& row = perRank[r];
    out.outOfPlace.timeUs = std::max(out.outOfPlace.timeUs, row.outOfPlace.timeUs);
    out.inPlace.timeUs = std::max(out.inPlace.timeUs, row.inPlace.timeUs);
    out.outOfPlace.wrong += row.outOfPlace.wrong;
    out.inPlace.wrong += row.inPlace.wrong;
    out.ncclUs = (out.ncclUs < 0 || row.ncclUs < 0) ? -1 : std::max(out.ncclUs, row.ncclUs);
    out.ncclSymUs =
        (out.ncclSymUs < 0 || row.ncclSymUs < 0) ? -1 : std::max(out.ncclSymUs, row.ncclSymUs);
    out.allReduceUs = (out.allReduceUs < 0 || row.allReduceUs < 0)
                          ? -1
                          : std::max(out.allReduceUs, row.allReduceUs);
  }
  return out;
}

uint64_t totalWrong(const Report& report) {
  uint64_t wrong = 0;
  for (const Row& row : report.rows) wrong += row.outOfPlace.wrong + row.inPlace.wrong;
  return wrong;
}

std::string formatPreamble(const Report& r) {
  const std::string what =
      r.fusedHidden != 0
          ? strprintf("all_reduce + residual add + rmsnorm (rows of %zu)", r.fusedHidden)
          : std::string("all_reduce");
  std::string out = "# tpcomm-perf " + r.version + ": " + what + ", " + r.dtype + ", algorithm " +
                    r.algo + (r.threads ? ", ranks as threads" : ", ranks as processes") +
                    (r.zeroCopy ? ", zero-copy" : "") + "\n";
  out += strprintf(
      "# nThread 1 nGpus %d minBytes %zu maxBytes %zu step: %s warmup iters: %d iters: %d agg "
      "iters: 1 validation: %d graph: %d\n",
      r.nranks, r.minBytes, r.maxBytes,
      r.stepBytes != 0 ? strprintf("%zu(bytes)", r.stepBytes).c_str()
                       : strprintf("%g(factor)", r.stepFactor).c_str(),
      r.warmup, r.iters, r.check ? 1 : 0, r.graphLaunches);
  out += strprintf("# time: the slowest rank's median of %d timed sections of %lld calls\n",
                   kTimedSections, sectionCalls(r.iters, r.graphLaunches));
  out += "#\n# Using devices\n";
  for (const RankInfo& k : r.ranks) {
    out += strprintf("#  Rank %2d Group  0 Pid %6d on %10s device %2d [%s] %s\n", k.rank, k.pid,
                     k.host.c_str(), k.device, k.busId.c_str(), k.name.c_str());
  }
  out += "#\n# NCCL: " + r.ncclNote + "\n";
  if (!r.ncclSymNote.empty()) out += "# NCCL on symmetric windows: " + r.ncclSymNote + "\n";
  if (r.loopback) {
    out +=
        "#\n# LOOPBACK: several ranks share each GPU. These figures measure tpcomm's kernels and\n"
        "# overheads on one device; they are NOT NVLink performance.\n";
  }
  return out + "#\n";
}

std::string formatHeader(const Report& r) {
  if (r.fusedHidden != 0) {
    return "#                                   norm out of place          norm over the input   "
           "       fused                 tpcomm all-reduce alone   NCCL + norm kernel\n"
           "#  tokens  hidden        size      type     time   algbw  #wrong     time   algbw  "
           "#wrong          algo          algo     time  fused/ar       time  speedup\n"
           "#                         (B)               (us)  (GB/s)             (us)  (GB/s)  "
           "                                      (us)                  (us)\n";
  }
  return "#                                                              out-of-place           "
         "            in-place                                \n"
         "#       size         count      type   redop    root     time   algbw   busbw #wrong  "
         "   time   algbw   busbw #wrong          algo  nccl(us)   sym(us)  speedup\n"
         "#        (B)    (elements)                               (us)  (GB/s)  (GB/s)        "
         "    (us)  (GB/s)  (GB/s)                                                \n";
}

std::string formatFusedRow(const Report& r, const Row& row) {
  std::string out =
      strprintf("%9zu  %6zu  %10zu  %8s", row.tokens(), row.hidden, row.bytes, r.dtype.c_str());
  for (const Measurement* m : {&row.outOfPlace, &row.inPlace}) {
    out += strprintf("  %s  %6.2f  %6" PRIu64, formatTime(m->timeUs).c_str(),
                     algbwGBs(row.bytes, m->timeUs), m->wrong);
  }
  out += strprintf("  %12s  %12s", row.algo.c_str(), row.allReduceAlgo.c_str());
  out += row.allReduceUs >= 0 ? strprintf("  %s  %7.2fx", formatTime(row.allReduceUs).c_str(),
                                          row.outOfPlace.timeUs / row.allReduceUs)
                              : strprintf("  %7s  %8s", "-", "-");
  out += row.ncclUs >= 0 ? strprintf("    %s  %6.2fx", formatTime(row.ncclUs).c_str(),
                                     row.ncclUs / row.outOfPlace.timeUs)
                         : strprintf("    %7s  %7s", "-", "-");
  if (r.loopback) out += "  loopback";
  return out + "\n";
}

std::string formatRow(const Report& r, const Row& row) {
  if (r.fusedHidden != 0) return formatFusedRow(r, row);
  std::string out =
      strprintf("%12zu  %12zu  %8s  %6s  %6d", row.bytes, row.count, r.dtype.c_str(), "sum", -1);
  out += formatMeasurement(r, row.bytes, row.outOfPlace);
  out += formatMeasurement(r, row.bytes, row.inPlace);
  out += strprintf("  %12s", row.algo.c_str());
  for (double us : {row.ncclUs, row.ncclSymUs}) {
    out += us >= 0 ? strprintf("  %8s", formatTime(us).c_str()) : strprintf("  %8s", "-");
  }
  const double nccl = row.bestNcclUs();
  out += nccl >= 0 && row.outOfPlace.timeUs > 0
             ? strprintf("  %6.2fx", nccl / row.outOfPlace.timeUs)
             : strprintf("  %7s", "-");
  if (r.loopback) out += "  loopback";
  return out + "\n";
}

std::string formatFooter(const Report& r) {
  const uint64_t wrong = totalWrong(r);
  std::string out =
      strprintf("# Out of bounds values : %" PRIu64 " %s\n# Avg bus bandwidth    : %g %s\n", wrong,
                wrong == 0 ? "OK" : "FAILED", averageBusbw(r), r.loopback ? "(loopback)" : "");
  const MemoryReport& m = r.memory;
  if (m.deviceBytes != 0) {
    out += strprintf(
        "# tpcomm memory per rank: %.1f MiB on the device (%.1f MiB push receive buffers, %.1f "
        "MiB pull staging), %.1f MiB of peers mapped, %d zero-copy slots taken\n",
        m.deviceBytes / 1048576.0, m.receiveBytes / 1048576.0, m.stagingBytes / 1048576.0,
        m.peerBytes / 1048576.0, m.slotsUsed);
  }
  return out + "#\n";
}

std::string formatJson(const Report& r) {
  std::string out = "{\n";
  out += "  \"tool\": \"tpcomm-perf\",\n";
  out += "  \"version\": " + jsonString(r.version) + ",\n";
  out += std::string("  \"collective\": ") +
         (r.fusedHidden != 0 ? "\"all_reduce_add_rmsnorm\"" : "\"all_reduce\"") + ",\n";
  if (r.fusedHidden != 0) {
    out += "  \"hidden\": " + std::to_string(r.fusedHidden) + ",\n";
    out +=
        "  \"columns\": \"out_of_place: norm to its own buffer; in_place: norm over the "
        "input; nccl_time_us: NCCL all-reduce then the norm kernel; allreduce_time_us: "
        "tpcomm's all-reduce alone\",\n";
  }
  out += "  \"datatype\": " + jsonString(r.dtype) + ",\n";
  out += "  \"algorithm\": " + jsonString(r.algo) + ",\n";
  out += "  \"nranks\": " + std::to_string(r.nranks) + ",\n";
  out += std::string("  \"ranks_as\": ") + (r.threads ? "\"threads\"" : "\"processes\"") + ",\n";
  out += std::string("  \"loopback\": ") + (r.loopback ? "true" : "false") + ",\n";
  out += "  \"graph_launches\": " + std::to_string(r.graphLaunches) + ",\n";
  out += "  \"warmup_iters\": " + std::to_string(r.warmup) + ",\n";
  out += "  \"iters\": " + std::to_string(r.iters) + ",\n";
  out += "  \"section_calls\": " + std::to_string(sectionCalls(r.iters, r.graphLaunches)) + ",\n";
  out += std::string("  \"check\": ") + (r.check ? "true" : "false") + ",\n";
  out += "  \"nccl\": " + jsonString(r.ncclNote) + ",\n";
  out += "  \"nccl_symmetric\": " + jsonString(r.ncclSymNote) + ",\n";
  out += std::string("  \"zero_copy\": ") + (r.zeroCopy ? "true" : "false") + ",\n";
  out += "  \"memory\": {\"device_bytes\": " + std::to_string(r.memory.deviceBytes) +
         ", \"receive_bytes\": " + std::to_string(r.memory.receiveBytes) +
         ", \"staging_bytes\": " + std::to_string(r.memory.stagingBytes) +
         ", \"peer_bytes\": " + std::to_string(r.memory.peerBytes) +
         ", \"slots_used\": " + std::to_string(r.memory.slotsUsed) + "},\n";
  out += "  \"devices\": [";
  for (size_t i = 0; i < r.ranks.size(); ++i) {
    const RankInfo& k = r.ranks[i];
    out += std::string(i == 0 ? "\n" : ",\n") + "    {\"rank\": " + std::to_string(k.rank) +
           ", \"pid\": " + std::to_string(k.pid) + ", \"host\": " + jsonString(k.host) +
           ", \"device\": " + std::to_string(k.device) + ", \"bus_id\": " + jsonString(k.busId) +
           ", \"name\": " + jsonString(k.name) + "}";
  }
  out += "\n  ],\n  \"results\": [";
  for (size_t i = 0; i < r.rows.size(); ++i) {
    const Row& row = r.rows[i];
    out += std::string(i == 0 ? "\n" : ",\n") + "    {\"bytes\": " + std::to_string(row.bytes) +
           ", \"count\": " + std::to_string(row.count) + ", \"type\": " + jsonString(r.dtype) +
           ", \"redop\": \"sum\", \"algo\": " + jsonString(row.algo) +
           ", \"out_of_place\": " + jsonMeasurement(r, row.bytes, row.outOfPlace) +
           ", \"in_place\": " + jsonMeasurement(r, row.bytes, row.inPlace) +
           ", \"nccl_time_us\": " + (row.ncclUs >= 0 ? jsonNumber(row.ncclUs) : "null") +
           ", \"nccl_symmetric_time_us\": " +
           (row.ncclSymUs >= 0 ? jsonNumber(row.ncclSymUs) : "null") + ", \"speedup\": " +
           (row.bestNcclUs() >= 0 && row.outOfPlace.timeUs > 0
                ? jsonNumber(row.bestNcclUs() / row.outOfPlace.timeUs)
                : "null") +
           (row.hidden != 0 ? ", \"tokens\": " + std::to_string(row.tokens()) + ", \"hidden\": " +
                                  std::to_string(row.hidden) + ", \"allreduce_time_us\": " +
                                  (row.allReduceUs >= 0 ? jsonNumber(row.allReduceUs) : "null") +
                                  ", \"allreduce_algo\": " + jsonString(row.allReduceAlgo)
                            : std::string()) +
           "}";
  }
  out += "\n  ],\n";
  out += "  \"wrong\": " + std::to_string(totalWrong(r)) + ",\n";
  out += "  \"avg_busbw_gbs\": " + jsonNumber(averageBusbw(r)) + "\n}\n";
  return out;
}

std::string encodeRank(const RankInfo& k) {
  return strprintf("DEV %d %d %d %s %s %s", k.rank, k.pid, k.device, k.busId.c_str(),
                   k.host.c_str(), k.name.c_str());
}

std::string encodeRow(const Row& row) {
  return strprintf("ROW %zu %zu %.17g %" PRIu64 " %.17g %" PRIu64 " %.17g %.17g %zu %.17g %s %s",
                   row.bytes, row.count, row.outOfPlace.timeUs, row.outOfPlace.wrong,
                   row.inPlace.timeUs, row.inPlace.wrong, row.ncclUs, row.ncclSymUs, row.hidden,
                   row.allReduceUs, row.algo.c_str(), row.allReduceAlgo.c_str());
}

std::string encodeMemory(const MemoryReport& m) {
  return strprintf("MEM %zu %zu %zu %zu %d", m.deviceBytes, m.stagingBytes, m.receiveBytes,
                   m.peerBytes, m.slotsUsed);
}

bool decodeMemory(const std::string& line, MemoryReport* m) {
  std::istringstream in(line);
  std::string tag;
  return static_cast<bool>(in >> tag >> m->deviceBytes >> m->stagingBytes >> m->receiveBytes >>
                           m->peerBytes >> m->slotsUsed) &&
         tag == "MEM";
}

bool decodeRank(const std::string& line, RankInfo* k) {
  std::istringstream in(line);
  std::string tag;
  if (!(in >> tag >> k->rank >> k->pid >> k->device >> k->busId >> k->host) || tag != "DEV") {
    return false;
  }
  std::getline(in >> std::ws, k->name);
  return true;
}

bool decodeRow(const std::string& line, Row* row) {
  std::istringstream in(line);
  std::string tag;
  return static_cast<bool>(in >> tag >> row->bytes >> row->count >> row->outOfPlace.timeUs >>
                           row->outOfPlace.wrong >> row->inPlace.timeUs >> row->inPlace.wrong >>
                           row->ncclUs >> row->ncclSymUs >> row->hidden >> row->allReduceUs >>
                           row->algo >> row->allReduceAlgo) &&
         tag == "ROW";
}

}  // namespace perf
}  // namespace tpcomm
