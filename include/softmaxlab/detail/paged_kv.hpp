// softmaxlab internals: the paged KV cache of MultiHeadAttention (multi_head_attention.hpp
// exports it as softmaxlab::PagedKV and documents it) and the row pointers through which the
// decoding kernels read K and V, contiguous or paged.
//
// Layout (vLLM's and FlashInfer's paged KV, one tensor for K and one for V): a pool of num_pages
// pages, each page_size rows of `cols` contiguous values (cols = Hkv d for K, Hkv dv for V), pages
// back to back: row r of page p starts at pool + (p page_size + r) cols. A sequence of Lk keys is
// a block table of ceil(Lk / page_size) page indices: key j is row j % page_size of page
// table[j / page_size]. The last page may be partly used.
#pragma once

#include <cstdint>
#include <type_traits>

#include "checks.hpp"
#include "common.hpp"
#include "functor_base.hpp"

namespace softmaxlab {
namespace detail {

template <class T>
class PagedKV {
 public:
  using Scalar = T;
  // Read as storage without direct access by the traits of Eigen objects (has_direct_access_v),
  // row-major with unit inner stride.
  enum { Flags = 0, IsRowMajor = 1, InnerStrideAtCompileTime = 1 };

  // Throws std::invalid_argument naming the value: pool null with pages, num_pages < 0,
  // page_size < 1, cols < 1, length < 0, a table of fewer than ceil(length / page_size) entries,
  // or a used entry outside [0, num_pages).
  PagedKV(const T* pool, Index num_pages, Index page_size, Index cols,
          const std::int32_t* block_table, Index table_size, Index length)
      : pool_(pool),
        pages_(num_pages),
        page_size_(page_size),
        cols_(cols),
        table_(block_table),
        length_(length) {
    if (num_pages < 0)
      fail("PagedKV: num_pages must be >= 0, but got ", num_pages);
    if (page_size < 1)
      fail("PagedKV: page_size must be >= 1, but got ", page_size);
    if (cols < 1)
      fail("PagedKV: cols must be >= 1, but got ", cols);
    if (length < 0)
      fail("PagedKV: length must be >= 0, but got ", length);
    if (pool == nullptr && num_pages > 0)
      fail("PagedKV: pool must not be null with num_pages = ", num_pages);
    const Index used = (length + page_size - 1) / page_size;
    if (table_size < used)
      fail("PagedKV: block_table must have ceil(length / page_size) = ", used, " entries, but got ",
           table_size);
    if (used > 0 && block_table == nullptr)
      fail("PagedKV: block_table must not be null with length = ", length);
    for (Index b = 0; b < used; ++b) {
      if (block_table[b] < 0 || block_table[b] >= num_pages)
        fail("PagedKV: block_table[", b, "] must be a page in [0, ", num_pages, "), but got ",
             block_table[b]);
    }
  }

  Index rows() const { return length_; }
  Index cols() const { return cols_; }
  Index page_size() const { return page_size_; }
  Index num_pages() const { return pages_; }
  const T* pool() const { return pool_; }
  const std::int32_t* block_table() const { return table_; }

  // Pointers to column col of rows [j0, j0 + n), one division for the whole range.
  void row_pointers(Index j0, Index n, Index col, const T** out) const {
    Index page = j0 / page_size_, r = j0 % page_size_;
    for (Index i = 0; i < n; ++i) {
      out[i] = pool_ + (Index(table_[page]) * page_size_ + r) * cols_ + col;
      if (++r == page_size_) {
        r = 0;
        ++page;
      }
    }
  }

 private:
  const T* pool_;
  Index pages_, page_size_, cols_;
  const std::int32_t* table_;
  Index length_;
};

template <class X>
inline constexpr bool is_paged_kv_v = false;
template <class T>
inline constexpr bool is_paged_kv_v<PagedKV<T>> = true;

// Whether K or V can be read through row pointers: a paged cache, or row-major storage (checked
// at run time for a unit inner stride by kv_rows_contiguous).
template <class X>
inline constexpr bool kv_rows_v =
    is_paged_kv_v<X> || (has_direct_access_v<X> && bool(X::IsRowMajor));

template <class X>
bool kv_rows_contiguous(const X& x) {
  if constexpr (is_paged_kv_v<X>) {
    return true;
  } else {
    return x.innerStride() == 1;
  }
}

template <class X, class T>
void kv_row_pointers(const X& x, Index j0, Index n, Index col, const T** out) {
  if constexpr (is_paged_kv_v<X>) {
    x.row_pointers(j0, n, col, out);
  } else {
    for (Index i = 0; i < n; ++i)
      out[i] = x.data() + (j0 + i) * x.outerStride() + col;
  }
}

}  // namespace detail
}  // namespace softmaxlab
