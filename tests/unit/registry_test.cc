// The bookkeeping of zero-copy registrations, without a GPU: one export per allocation, offsets
// of the calls inside it, unshareable buffers, and the plan's trip over the wire.
#include "memory/registry.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace tpcomm {
namespace {

ExportedBuffer legacy(uint64_t base, uint64_t span, char tag) {
  ExportedBuffer e{};
  e.kind = MemoryKind::kLegacyIpc;
  e.base = base;
  e.spanBytes = span;
  e.ipc.reserved[0] = tag;
  return e;
}

ExportedBuffer vmm(uint64_t base, std::vector<uint64_t> segments) {
  ExportedBuffer e{};
  e.kind = MemoryKind::kVmm;
  e.base = base;
  for (uint64_t s : segments) {
    e.segmentBytes[e.segments++] = s;
    e.spanBytes += s;
  }
  return e;
}

SlotRequest request(uint32_t slot, uint64_t address) {
  return SlotRequest{slot, reinterpret_cast<const void*>(address), 4096};
}

bool isOpen(int fd) { return fcntl(fd, F_GETFD) != -1; }

TEST(ExportPlan, OneExportPerAllocationWithOffsets) {
  ExportPlan plan;
  plan.add(request(0, 0x10000), legacy(0x10000, 1 << 20, 'a'), {}, "");
  plan.add(request(1, 0x10000 + 4096), legacy(0x10000, 1 << 20, 'a'), {}, "");
  plan.add(request(2, 0x900000 + 48), legacy(0x900000, 1 << 20, 'b'), {}, "");
  ASSERT_EQ(2u, plan.exports.size());
  ASSERT_EQ(3u, plan.requests.size());
  EXPECT_EQ(0, plan.requests[0].exportIndex);
  EXPECT_EQ(0u, plan.requests[0].offset);
  EXPECT_EQ(0, plan.requests[1].exportIndex);
  EXPECT_EQ(4096u, plan.requests[1].offset);
  EXPECT_EQ(1, plan.requests[2].exportIndex);
  EXPECT_EQ(48u, plan.requests[2].offset);
  EXPECT_EQ(plan.exports[1].base, plan.exports[1].address) << "peers map whole allocations";
  for (const ExportedRequest& r : plan.requests) EXPECT_TRUE(r.aligned);
}

TEST(ExportPlan, UnalignedAndUnshareableBuffersAreMarked) {
  ExportPlan plan;
  plan.add(request(0, 0x10008), legacy(0x10000, 1 << 20, 'a'), {}, "");
  ExportedBuffer host{};
  host.kind = MemoryKind::kUnshareable;
  plan.add(request(1, 0x7000), host, {}, "host memory");
  EXPECT_FALSE(plan.requests[0].aligned);
  EXPECT_EQ(-1, plan.requests[1].exportIndex);
  EXPECT_EQ("host memory", plan.firstProblem);
}

TEST(ExportPlan, DuplicateSegmentDescriptorsAreClosedAndOffsetsCounted) {
  int a[2], b[2], c[2];
  ASSERT_EQ(0, pipe(a));
  ASSERT_EQ(0, pipe(b));
  ASSERT_EQ(0, pipe(c));
  ExportPlan plan;
  plan.add(request(0, 0x200000), vmm(0x200000, {2 << 20, 2 << 20}), {a[0], a[1]}, "");
  // The same segments again: its descriptors are redundant and must be closed.
  plan.add(request(1, 0x200000 + 8192), vmm(0x200000, {2 << 20, 2 << 20}), {b[0], b[1]}, "");
  plan.add(request(2, 0x800000), vmm(0x800000, {2 << 20}), {c[0]}, "");
  ASSERT_EQ(2u, plan.exports.size());
  EXPECT_EQ(8192u, plan.requests[1].offset);
  EXPECT_FALSE(isOpen(b[0]));
  EXPECT_FALSE(isOpen(b[1]));
  EXPECT_EQ((std::vector<int>{a[0], a[1], c[0]}), plan.fds);
  EXPECT_EQ(0u, plan.fdOffset(0));
  EXPECT_EQ(2u, plan.fdOffset(1));
  for (int fd : {a[0], a[1], c[0], c[1]}) close(fd);
}

TEST(ExportPlan, RoundTripsAndRejectsGarbage) {
  ExportPlan plan;
  plan.add(request(0, 0x10000), legacy(0x10000, 1 << 20, 'a'), {}, "");
  plan.add(request(1, 0x300000), vmm(0x300000, {2 << 20}), {}, "");
  ExportedBuffer host{};
  plan.add(request(2, 0x1), host, {}, "no");
  ExportPlan back;
  ASSERT_TRUE(back.parse(plan.serialize()));
  ASSERT_EQ(2u, back.exports.size());
  EXPECT_EQ(MemoryKind::kVmm, back.exports[1].kind);
  EXPECT_EQ(1u, back.exports[1].segments);
  EXPECT_EQ('a', back.exports[0].ipc.reserved[0]);
  ASSERT_EQ(3u, back.requests.size());
  EXPECT_EQ(-1, back.requests[2].exportIndex);
  const std::string blob = plan.serialize();
  EXPECT_FALSE(back.parse(blob.substr(0, blob.size() - 1)));
  EXPECT_FALSE(back.parse(blob + "x"));
  EXPECT_FALSE(back.parse(""));
}

}  // namespace
}  // namespace tpcomm
