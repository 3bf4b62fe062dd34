// tpcomm-perf's command line, sweep and formats, none of which needs a GPU.
#include <gtest/gtest.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "perf/options.h"
#include "perf/report.h"

namespace tpcomm {
namespace perf {
namespace {

bool parse(std::vector<std::string> args, Options* o, std::string* error = nullptr) {
  args.insert(args.begin(), "tpcomm-perf");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  std::string ignored;
  bool help = false;
  return parseOptions(static_cast<int>(argv.size()), argv.data(), o,
                      error != nullptr ? error : &ignored, &help);
}

TEST(PerfOptions, DefaultsAreTheMainJob) {
  Options o;
  ASSERT_TRUE(parse({}, &o));
  EXPECT_EQ(8u, o.minBytes);
  EXPECT_EQ(size_t{256} << 20, o.maxBytes);
  EXPECT_EQ(tpcBfloat16, o.dtype);
  EXPECT_GT(o.graphLaunches, 0) << "graph mode by default";
  EXPECT_TRUE(o.check);
  EXPECT_TRUE(o.nccl);
  EXPECT_EQ("auto", o.algo);
}

TEST(PerfOptions, UsageStatesTheDefaultsTheToolUses) {
  const Options o;
  const std::string text = usage();
  const std::string graph = std::to_string(o.graphLaunches);
  for (const std::string& stated :
       {"timed iterations per size (default " + std::to_string(o.iters) + ")",
        "warm-up iterations per size (default " + std::to_string(o.warmup) + ")",
        "iterations " + std::to_string(kEagerSectionRepeats) + " times a section (default " +
            graph + ")",
        "graph mode (-G " + graph + ")"}) {
    EXPECT_NE(std::string::npos, text.find(stated)) << stated;
  }
}

TEST(PerfOptions, NcclTestsFlags) {
  Options o;
  ASSERT_TRUE(parse({"-b", "1K",      "-e", "64M", "-f",   "4",      "-n", "7",  "-w",
                     "2",  "-c",      "0",  "-d",  "half", "-G",     "3",  "-J", "out.json",
                     "-a", "twoshot", "-g", "2",   "-t",   "--nccl", "off"},
                    &o));
  EXPECT_EQ(1024u, o.minBytes);
  EXPECT_EQ(size_t{64} << 20, o.maxBytes);
  EXPECT_EQ(4.0, o.stepFactor);
  EXPECT_EQ(7, o.iters);
  EXPECT_EQ(2, o.warmup);
  EXPECT_FALSE(o.check);
  EXPECT_EQ(tpcFloat16, o.dtype);
  EXPECT_EQ(3, o.graphLaunches);
  EXPECT_EQ("out.json", o.jsonPath);
  EXPECT_EQ("twoshot", o.algo);
  EXPECT_EQ(2, o.nranks);
  EXPECT_TRUE(o.threads);
  EXPECT_FALSE(o.nccl);
  ASSERT_TRUE(parse({"--eager"}, &o));
  EXPECT_EQ(0, o.graphLaunches);
  ASSERT_TRUE(parse({"--eager", "--graph", "-d", "float", "-i", "4K"}, &o));
  EXPECT_GT(o.graphLaunches, 0);
  EXPECT_EQ(tpcFloat32, o.dtype);
  EXPECT_EQ(4096u, o.stepBytes);
  for (const char* algo : {"push-oneshot", "push-twoshot", "auto", "nccl"}) {
    ASSERT_TRUE(parse({"-a", algo}, &o)) << algo;
    EXPECT_EQ(algo, o.algo);
  }
  ASSERT_TRUE(parse({"-a", "PUSH-ONESHOT"}, &o));
  EXPECT_EQ("push-oneshot", o.algo) << "as TPCOMM_ALGO reads it";
}

TEST(PerfOptions, EagerAndGraphSectionsTimeAsManyCalls) {
  Options eager, graph, fewer;
  ASSERT_TRUE(parse({"--eager", "-n", "7"}, &eager));
  ASSERT_TRUE(parse({"--graph", "-n", "7"}, &graph));
  ASSERT_TRUE(parse({"-n", "7", "-G", "3"}, &fewer));
  EXPECT_EQ(70, sectionCalls(eager.iters, eager.graphLaunches));
  EXPECT_EQ(70, sectionCalls(graph.iters, graph.graphLaunches));
  EXPECT_EQ(21, sectionCalls(fewer.iters, fewer.graphLaunches));
  EXPECT_EQ(2147483647LL * 10, sectionCalls(2147483647, 0)) << "no overflow";
}

TEST(PerfOptions, BadArgumentsAreOneLineErrors) {
  Options o;
  std::string error;
  EXPECT_FALSE(parse({"-d", "int8"}, &o, &error));
  EXPECT_NE(std::string::npos, error.find("unknown data type 'int8'"));
  EXPECT_FALSE(parse({"-x"}, &o, &error));
  EXPECT_NE(std::string::npos, error.find("-x"));
  EXPECT_FALSE(parse({"--bogus"}, &o, &error));
  EXPECT_NE(std::string::npos, error.find("--bogus"));
  EXPECT_FALSE(parse({"-b", "12Q"}, &o, &error));
  EXPECT_FALSE(parse({"-b", "1M", "-e", "1K"}, &o, &error));
  EXPECT_NE(std::string::npos, error.find("-b is larger than -e"));
  EXPECT_FALSE(parse({"-a", "ring"}, &o, &error));
  EXPECT_FALSE(parse({"-f", "1"}, &o, &error));
  EXPECT_FALSE(parse({"-n", "0"}, &o, &error));
  EXPECT_FALSE(parse({"-g", "9"}, &o, &error));
  EXPECT_FALSE(parse({"-o", "max"}, &o, &error));
  EXPECT_FALSE(parse({"-a", "nccl", "--nccl", "off"}, &o, &error));
  EXPECT_FALSE(parse({"stray"}, &o, &error));
  for (const std::string& e : {error}) EXPECT_EQ(std::string::npos, e.find('\n'));
}

// A sweep with no size to time, a factor that is not finite, and an -e no run could hold are
// refused, where they printed an empty table, or overflowed the buffer sizes.
TEST(PerfOptions, SweepsThatTimeNothingAreRefused) {
  Options o;
  std::string error;
  EXPECT_FALSE(parse({"--fused", "8192", "-e", "8K"}, &o, &error));
  EXPECT_NE(std::string::npos, error.find("whole row (16384 bytes)")) << error;
  EXPECT_FALSE(parse({"-b", "0", "-e", "1"}, &o, &error));
  EXPECT_NE(std::string::npos, error.find("whole element (2 bytes)")) << error;
  EXPECT_FALSE(parse({"--fused", "8192", "-b", "10000", "-e", "16384", "-f", "2"}, &o, &error))
      << "the first step jumps from under a row to beyond -e";
  EXPECT_TRUE(parse({"-b", "1", "-e", "2"}, &o, &error)) << error;
  EXPECT_FALSE(parse({"-f", "inf"}, &o, &error));
  EXPECT_FALSE(parse({"-f", "1e999"}, &o, &error));
  EXPECT_FALSE(parse({"-e", "9223372036854775808"}, &o, &error));
  EXPECT_NE(std::string::npos, error.find("beyond 1 TiB")) << error;
}

// A long option without its argument, or a flag given one, is named as it was typed.
TEST(PerfOptions, AnIncompleteLongOptionIsNamed) {
  Options o;
  std::string error;
  EXPECT_FALSE(parse({"--fused"}, &o, &error));
  EXPECT_NE(std::string::npos, error.find("'--fused'")) << error;
  EXPECT_FALSE(parse({"--graph=1"}, &o, &error));
  EXPECT_NE(std::string::npos, error.find("'--graph=1'")) << error;
  EXPECT_FALSE(parse({"-b"}, &o, &error));
  EXPECT_NE(std::string::npos, error.find("'-b'")) << error;
}

TEST(PerfOptions, Sizes) {
  size_t v = 0;
  EXPECT_TRUE(parseSize("8", &v));
  EXPECT_EQ(8u, v);
  EXPECT_TRUE(parseSize("256M", &v));
  EXPECT_EQ(size_t{256} << 20, v);
  EXPECT_TRUE(parseSize("2G", &v));
  EXPECT_EQ(size_t{2} << 30, v);
  EXPECT_FALSE(parseSize("", &v));
  EXPECT_FALSE(parseSize("M", &v));
  EXPECT_FALSE(parseSize("1T", &v));
}

TEST(PerfSweep, FactorSweepOfTheMainJob) {
  Options o;
  const std::vector<size_t> sizes = sweepSizes(o, 2);
  ASSERT_EQ(26u, sizes.size());  // 8 B to 256 MB, doubling
  EXPECT_EQ(8u, sizes.front());
  EXPECT_EQ(size_t{256} << 20, sizes.back());
  for (size_t i = 1; i < sizes.size(); ++i) EXPECT_EQ(2 * sizes[i - 1], sizes[i]);
}

TEST(PerfSweep, StepsAndWholeElements) {
  Options o;
  o.minBytes = 1;
  o.maxBytes = 16;
  EXPECT_EQ((std::vector<size_t>{4, 8, 16}), sweepSizes(o, 4)) << "sizes under an element go";
  o.minBytes = 10;
  o.maxBytes = 40;
  o.stepBytes = 10;
  EXPECT_EQ((std::vector<size_t>{8, 20, 28, 40}), sweepSizes(o, 4));
  o.stepBytes = 0;
  o.stepFactor = 1.5;
  o.minBytes = 2;
  o.maxBytes = 10;
  EXPECT_EQ((std::vector<size_t>{2, 3, 4, 6, 9}), sweepSizes(o, 1));
}

TEST(PerfReport, BandwidthArithmetic) {
  EXPECT_DOUBLE_EQ(100.0, algbwGBs(1000000, 10.0));
  EXPECT_DOUBLE_EQ(175.0, busbwGBs(100.0, 8));
  EXPECT_DOUBLE_EQ(100.0, busbwGBs(100.0, 2));
  EXPECT_DOUBLE_EQ(0.0, busbwGBs(100.0, 1));
  EXPECT_DOUBLE_EQ(0.0, algbwGBs(100, 0.0));
}

TEST(PerfReport, RowsCombineToTheSlowestRank) {
  Row a, b;
  a.outOfPlace = {5, 1};
  b.outOfPlace = {7, 2};
  a.inPlace = {9, 0};
  b.inPlace = {8, 4};
  a.ncclUs = 20;
  b.ncclUs = 25;
  Row c = combineRanks({a, b});
  EXPECT_EQ(7, c.outOfPlace.timeUs);
  EXPECT_EQ(3u, c.outOfPlace.wrong);
  EXPECT_EQ(9, c.inPlace.timeUs);
  EXPECT_EQ(4u, c.inPlace.wrong);
  EXPECT_EQ(25, c.ncclUs);
  b.ncclUs = -1;
  EXPECT_LT(combineRanks({a, b}).ncclUs, 0) << "no NCCL figure unless every rank has one";
}

TEST(PerfReport, MessagesRoundTrip) {
  Row row;
  row.bytes = 8192;
  row.count = 4096;
  row.outOfPlace = {6.123456789, 0};
  row.inPlace = {7.5, 12};
  row.ncclUs = -1;
  row.algo = "oneshot";
  Row back;
  ASSERT_TRUE(decodeRow(encodeRow(row), &back));
  EXPECT_EQ(row.bytes, back.bytes);
  EXPECT_EQ(row.count, back.count);
  EXPECT_DOUBLE_EQ(row.outOfPlace.timeUs, back.outOfPlace.timeUs);
  EXPECT_EQ(12u, back.inPlace.wrong);
  EXPECT_EQ(row.ncclUs, back.ncclUs);
  EXPECT_EQ("oneshot", back.algo);
  RankInfo info{3, 99, 1, "0000:19:00.0", "node7", "NVIDIA H100 80GB HBM3"};
  RankInfo info2;
  ASSERT_TRUE(decodeRank(encodeRank(info), &info2));
  EXPECT_EQ("NVIDIA H100 80GB HBM3", info2.name);
  EXPECT_EQ(3, info2.rank);
  EXPECT_EQ("node7", info2.host);
  EXPECT_FALSE(decodeRow("ROW 1 2", &back));
  EXPECT_FALSE(decodeRank("ROW 1 2 3", &info2));
}

TEST(PerfOptions, FusedModeSweepsWholeRows) {
  Options o;
  ASSERT_TRUE(parse({"--fused", "5120", "-b", "10K", "-e", "5M"}, &o));
  EXPECT_EQ(5120u, o.fusedHidden);
  EXPECT_EQ(10240u, sweepUnit(o));
  const std::vector<size_t> sizes = sweepSizes(o, sweepUnit(o));
  ASSERT_EQ(10u, sizes.size()) << "1 to 512 tokens";
  EXPECT_EQ(10240u, sizes.front());
  EXPECT_EQ(512u * 10240u, sizes.back());
  ASSERT_TRUE(parse({"--fused", "8192", "-b", "20K", "-e", "40K", "-i", "10K"}, &o));
  EXPECT_EQ((std::vector<size_t>{16384, 32768}), sweepSizes(o, sweepUnit(o)))
      << "sizes round down to whole rows, once each";
  std::string error;
  EXPECT_FALSE(parse({"--fused", "100"}, &o, &error));
  EXPECT_NE(std::string::npos, error.find("multiple of 8")) << error;
  EXPECT_FALSE(parse({"--fused", "32768"}, &o, &error));
  EXPECT_FALSE(parse({"--fused", "4096", "-d", "float"}, &o, &error));
  EXPECT_FALSE(parse({"--fused", "4096", "-a", "nccl"}, &o, &error));
}

TEST(PerfReport, FusedRowsRoundTripAndPrintTokens) {
  Row row;
  row.bytes = 64 * 16384;
  row.count = 64 * 8192;
  row.hidden = 8192;
  row.outOfPlace = {6.0, 0};
  row.inPlace = {6.5, 0};
  row.allReduceUs = 5.0;
  row.ncclUs = 18.0;
  row.algo = "push-oneshot";
  row.allReduceAlgo = "push-twoshot";
  Row back;
  ASSERT_TRUE(decodeRow(encodeRow(row), &back));
  EXPECT_EQ(8192u, back.hidden);
  EXPECT_EQ("push-oneshot", back.algo);
  EXPECT_EQ("push-twoshot", back.allReduceAlgo);
  EXPECT_DOUBLE_EQ(5.0, back.allReduceUs);
  EXPECT_EQ(64u, back.tokens());
  Report r;
  r.dtype = "bfloat16";
  r.nranks = 2;
  r.fusedHidden = 8192;
  const std::string line = formatRow(r, row);
  EXPECT_EQ(
      "       64    8192     1048576  bfloat16     6.00  174.76       0     6.50  161.32       0 "
      " push-oneshot  push-twoshot     5.00     1.20x      18.00    3.00x\n",
      line);
  EXPECT_NE(std::string::npos, formatHeader(r).find("tokens"));
  EXPECT_NE(std::string::npos, formatJson(r).find("all_reduce_add_rmsnorm"));
}

Report goldenReport() {
  Report r;
  r.version = "0.1.0";
  r.minBytes = 8;
  r.maxBytes = 1 << 20;
  r.warmup = 5;
  r.iters = 20;
  r.graphLaunches = 10;
  r.dtype = "bfloat16";
  r.algo = "auto";
  r.nranks = 2;
  r.threads = true;
  r.loopback = true;
  r.ncclNote = "off: NCCL cannot run several ranks on one GPU";
  for (int k = 0; k < 2; ++k) {
    r.ranks.push_back(RankInfo{k, 4242, 0, "0000:18:00.0", "node1", "NVIDIA H100 80GB HBM3"});
  }
  Row a;
  a.bytes = 8192;
  a.count = 4096;
  a.outOfPlace = {6.25, 0};
  a.inPlace = {6.5, 0};
  a.algo = "oneshot";
  a.ncclUs = 20.0;
  Row b;
  b.bytes = 67108864;
  b.count = 33554432;
  b.outOfPlace = {12345.6, 3};
  b.inPlace = {250.0, 0};
  b.algo = "twoshot";
  r.rows = {a, b};
  return r;
}

TEST(PerfReport, GoldenTable) {
  const Report r = goldenReport();
  const std::string table = formatPreamble(r) + formatHeader(r) + formatRow(r, r.rows[0]) +
                            formatRow(r, r.rows[1]) + formatFooter(r);
  const std::string expected =
      "# tpcomm-perf 0.1.0: all_reduce, bfloat16, algorithm auto, ranks as threads\n"
      "# nThread 1 nGpus 2 minBytes 8 maxBytes 1048576 step: 2(factor) warmup iters: 5 iters: 20 "
      "agg iters: 1 validation: 1 graph: 10\n"
      "# time: the slowest rank's median of 3 timed sections of 200 calls\n"
      "#\n"
      "# Using devices\n"
      "#  Rank  0 Group  0 Pid   4242 on      node1 device  0 [0000:18:00.0] NVIDIA H100 80GB "
      "HBM3\n"
      "#  Rank  1 Group  0 Pid   4242 on      node1 device  0 [0000:18:00.0] NVIDIA H100 80GB "
      "HBM3\n"
      "#\n"
      "# NCCL: off: NCCL cannot run several ranks on one GPU\n"
      "#\n"
      "# LOOPBACK: several ranks share each GPU. These figures measure tpcomm's kernels and\n"
      "# overheads on one device; they are NOT NVLink performance.\n"
      "#\n"
      "#                                                              out-of-place                 "
      "      in-place                                \n"
      "#       size         count      type   redop    root     time   algbw   busbw #wrong     "
      "time   algbw   busbw #wrong          algo  nccl(us)   sym(us)  speedup\n"
      "#        (B)    (elements)                               (us)  (GB/s)  (GB/s)            "
      "(us)  (GB/s)  (GB/s)                                                \n"
      "        8192          4096  bfloat16     sum      -1     6.25    1.31    1.31       0     "
      "6.50    1.26    1.26       0       oneshot     20.00         -    3.20x  loopback\n"
      "    67108864      33554432  bfloat16     sum      -1    12346    5.44    5.44       3   "
      "250.00  268.44  268.44       0       twoshot         -         -        -  loopback\n"
      "# Out of bounds values : 3 FAILED\n"
      "# Avg bus bandwidth    : 69.1106 (loopback)\n"
      "#\n";
  EXPECT_EQ(expected, table);
  EXPECT_EQ(3u, totalWrong(r));
}

TEST(PerfReport, MemoryLineAppearsOnceReported) {
  Report r = goldenReport();
  r.memory.deviceBytes = size_t{72} << 20;
  r.memory.receiveBytes = size_t{48} << 20;
  r.memory.stagingBytes = size_t{24} << 20;
  r.memory.peerBytes = size_t{3} << 20;
  r.memory.slotsUsed = 520;
  EXPECT_NE(std::string::npos,
            formatFooter(r).find("# tpcomm memory per rank: 72.0 MiB on the device (48.0 MiB push "
                                 "receive buffers, 24.0 MiB pull staging), 3.0 MiB of peers "
                                 "mapped, 520 zero-copy slots taken"))
      << formatFooter(r);
  MemoryReport back;
  ASSERT_TRUE(decodeMemory(encodeMemory(r.memory), &back));
  EXPECT_EQ(r.memory.deviceBytes, back.deviceBytes);
  EXPECT_EQ(r.memory.receiveBytes, back.receiveBytes);
  EXPECT_EQ(r.memory.stagingBytes, back.stagingBytes);
  EXPECT_EQ(r.memory.peerBytes, back.peerBytes);
  EXPECT_EQ(520, back.slotsUsed);
}

TEST(PerfReport, SpeedupIsAgainstTheFasterNccl) {
  Row row;
  row.outOfPlace = {4.0, 0};
  EXPECT_LT(row.bestNcclUs(), 0);
  row.ncclUs = 10;
  EXPECT_EQ(10, row.bestNcclUs());
  row.ncclSymUs = 8;
  EXPECT_EQ(8, row.bestNcclUs());
  row.ncclUs = -1;
  EXPECT_EQ(8, row.bestNcclUs());
  Report r = goldenReport();
  row.ncclUs = 12;
  row.algo = "push-oneshot";
  EXPECT_NE(std::string::npos, formatRow(r, row).find("push-oneshot     12.00      8.00    2.00x"))
      << formatRow(r, row);
  EXPECT_NE(std::string::npos, formatJson(r).find("\"nccl_symmetric\": \"\""));
}

TEST(PerfReport, GoldenJson) {
  const std::string expected =
      "{\n"
      "  \"tool\": \"tpcomm-perf\",\n"
      "  \"version\": \"0.1.0\",\n"
      "  \"collective\": \"all_reduce\",\n"
      "  \"datatype\": \"bfloat16\",\n"
      "  \"algorithm\": \"auto\",\n"
      "  \"nranks\": 2,\n"
      "  \"ranks_as\": \"threads\",\n"
      "  \"loopback\": true,\n"
      "  \"graph_launches\": 10,\n"
      "  \"warmup_iters\": 5,\n"
      "  \"iters\": 20,\n"
      "  \"section_calls\": 200,\n"
      "  \"check\": true,\n"
      "  \"nccl\": \"off: NCCL cannot run several ranks on one GPU\",\n"
      "  \"nccl_symmetric\": \"\",\n"
      "  \"zero_copy\": false,\n"
      "  \"memory\": {\"device_bytes\": 0, \"receive_bytes\": 0, \"staging_bytes\": 0, "
      "\"peer_bytes\": 0, \"slots_used\": 0},\n"
      "  \"devices\": [\n"
      "    {\"rank\": 0, \"pid\": 4242, \"host\": \"node1\", \"device\": 0, \"bus_id\": "
      "\"0000:18:00.0\", \"name\": \"NVIDIA H100 80GB HBM3\"},\n"
      "    {\"rank\": 1, \"pid\": 4242, \"host\": \"node1\", \"device\": 0, \"bus_id\": "
      "\"0000:18:00.0\", \"name\": \"NVIDIA H100 80GB HBM3\"}\n"
      "  ],\n"
      "  \"results\": [\n"
      "    {\"bytes\": 8192, \"count\": 4096, \"type\": \"bfloat16\", \"redop\": \"sum\", "
      "\"algo\": \"oneshot\", \"out_of_place\": {\"time_us\": 6.25, \"algbw_gbs\": 1.31072, "
      "\"busbw_gbs\": 1.31072, \"wrong\": 0}, \"in_place\": {\"time_us\": 6.5, \"algbw_gbs\": "
      "1.26031, \"busbw_gbs\": 1.26031, \"wrong\": 0}, \"nccl_time_us\": 20, "
      "\"nccl_symmetric_time_us\": null, \"speedup\": 3.2},\n"
      "    {\"bytes\": 67108864, \"count\": 33554432, \"type\": \"bfloat16\", \"redop\": \"sum\", "
      "\"algo\": \"twoshot\", \"out_of_place\": {\"time_us\": 12345.6, \"algbw_gbs\": 5.43585, "
      "\"busbw_gbs\": 5.43585, \"wrong\": 3}, \"in_place\": {\"time_us\": 250, \"algbw_gbs\": "
      "268.435, \"busbw_gbs\": 268.435, \"wrong\": 0}, \"nccl_time_us\": null, "
      "\"nccl_symmetric_time_us\": null, \"speedup\": null}\n"
      "  ],\n"
      "  \"wrong\": 3,\n"
      "  \"avg_busbw_gbs\": 69.1106\n"
      "}\n";
  EXPECT_EQ(expected, formatJson(goldenReport()));
}

}  // namespace
}  // namespace perf
}  // namespace tpcomm
