// The workspace's bump allocation, its growth to the high-water mark, and its state after an allocation
// runs out of memory (the realistic failure on a GPU at large J x P).
#include <cstdlib>
#include <set>

#include "backend.hpp"
#include "ekinet/errors.hpp"
#include "test_support.hpp"

namespace ekinet::testing {
namespace {

// Hands out malloc'd blocks, records which are live, and throws OutOfMemory on request.
class RecordingAllocator : public detail::Allocator {
 public:
  ~RecordingAllocator() override {
    for (void* pointer : live) std::free(pointer);
  }
  void* allocate(std::size_t bytes) override {
    if (fail_next) {
      fail_next = false;
      throw OutOfMemory("test allocator: out of memory");
    }
    void* pointer = std::malloc(bytes);
    live.insert(pointer);
    return pointer;
  }
  void deallocate(void* pointer) override {
    EXPECT_EQ(live.erase(pointer), 1u) << "freed a block that is not live (double free or foreign pointer)";
    std::free(pointer);
  }
  std::set<void*> live;
  bool fail_next = false;
};

TEST(Workspace, GrowsToTheHighWaterMarkAndThenAllocatesNothing) {
  RecordingAllocator allocator;
  {
    detail::Workspace workspace(allocator);
    workspace.reset();
    workspace.take<float>(1000);
    workspace.take<float>(3000);  // both spill: the workspace starts empty
    EXPECT_EQ(allocator.live.size(), 2u);
    workspace.reset();  // one block for both
    EXPECT_EQ(allocator.live.size(), 1u);
    EXPECT_GE(workspace.bytes(), 4000 * sizeof(float));
    void* first = workspace.take<float>(1000);
    void* second = workspace.take<float>(3000);
    EXPECT_NE(first, second);
    EXPECT_EQ(allocator.live.size(), 1u);
  }
  EXPECT_TRUE(allocator.live.empty());
}

TEST(Workspace, StaysUsableAfterItsGrowthRunsOutOfMemory) {
  RecordingAllocator allocator;
  {
    detail::Workspace workspace(allocator);
    workspace.reset();
    workspace.take<float>(100);
    workspace.reset();
    workspace.take<float>(100);
    workspace.take<float>(10000);  // spills; the next reset grows the block
    allocator.fail_next = true;
    EXPECT_THROW(workspace.reset(), OutOfMemory);
    EXPECT_EQ(workspace.bytes(), 0u);
    EXPECT_TRUE(allocator.live.empty());  // nothing kept, nothing dangling
    void* pointer = workspace.take<float>(50);  // a fresh block, not the freed one
    EXPECT_EQ(allocator.live.count(pointer), 1u);
    workspace.reset();
    EXPECT_EQ(allocator.live.size(), 1u);
  }
  EXPECT_TRUE(allocator.live.empty());  // no double free at destruction
}

TEST(Workspace, TakesAnyNumberOfSpillsInOneOperation) {
  // The first call of a deep recurrent stack, chunked over members, takes hundreds of blocks before the
  // workspace has grown.
  RecordingAllocator allocator;
  {
    detail::Workspace workspace(allocator);
    workspace.reset();
    for (int i = 0; i < 1000; ++i) workspace.take<double>(10);
    EXPECT_EQ(allocator.live.size(), 1000u);
    workspace.reset();
    EXPECT_EQ(allocator.live.size(), 1u);
    for (int i = 0; i < 1000; ++i) workspace.take<double>(10);
    EXPECT_EQ(allocator.live.size(), 1u);  // the steady state allocates nothing
  }
  EXPECT_TRUE(allocator.live.empty());
}

}  // namespace
}  // namespace ekinet::testing
