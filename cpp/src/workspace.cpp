#include <algorithm>

#include "backend.hpp"

namespace ekinet::detail {

namespace {
constexpr std::size_t kAlignment = 256;  // cuBLAS/cuSOLVER and AVX-512 friendly
std::size_t aligned(std::size_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }
}  // namespace

Workspace::~Workspace() { release(); }

void Workspace::reset() {
  if (!spills_.empty()) {
    for (void* spill : spills_) allocator_.deallocate(spill);
    spills_.clear();
    if (block_ != nullptr) allocator_.deallocate(block_);
    // Empty, not dangling, if the allocation below runs out of memory: the next take spills instead of
    // handing out freed memory, and release() does not free the block twice.
    block_ = nullptr;
    capacity_ = used_ = 0;
    block_ = allocator_.allocate(high_water_);
    capacity_ = high_water_;
  }
  used_ = 0;
}

void Workspace::release() {
  for (void* spill : spills_) allocator_.deallocate(spill);
  spills_.clear();
  if (block_ != nullptr) allocator_.deallocate(block_);
  block_ = nullptr;
  capacity_ = used_ = high_water_ = 0;
}

void* Workspace::take_bytes(std::size_t bytes) {
  bytes = aligned(std::max<std::size_t>(bytes, 1));
  high_water_ = std::max(high_water_, used_ + bytes);
  if (used_ + bytes <= capacity_) {
    void* pointer = static_cast<char*>(block_) + used_;
    used_ += bytes;
    return pointer;
  }
  // Grow before allocating, so that push_back cannot throw and leak the block; doubling keeps it linear.
  if (spills_.size() == spills_.capacity()) spills_.reserve(2 * spills_.size() + 8);
  void* pointer = allocator_.allocate(bytes);
  spills_.push_back(pointer);
  used_ += bytes;
  return pointer;
}

}  // namespace ekinet::detail
