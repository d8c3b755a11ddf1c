// softmaxlab: how vectors, rows, columns and matrices reach a variant's math, written once.
//
// A variant derives from DistributionFunctor<Variant> and implements, privately (befriending the
// base),
//     template <class Scalar> void compute(Span<const Scalar> x, Span<Scalar> y, Extra&... extra)
//     const;
// which maps one distribution x to y (same length; y may be x; either may be strided). The base
// provides the public contract of DESIGN.md: f(x), f.apply(x, y), f.rowwise(X), f.rowwise(X, Y),
// f.colwise(X), f.colwise(X, Y). Variants that need more arguments per call (a random generator)
// call the protected *_impl forms with the extra arguments.
//
// Scalars: float and double run compute<Scalar> on the data directly; Eigen::half, Eigen::bfloat16
// and mixed input/output pairs go through compute_mixed (scalar_types.hpp: float inside, double
// when either side is double, one rounding to the output type).
// Inputs are any dense Eigen expression of float or double. Inputs with direct storage are read in
// place; other expressions are first evaluated into the output's storage (no allocation) and the
// math runs in place there. Outputs must be writable storage: a plain object, Map, Ref, or a
// temporary Block such as Y.row(i), taken by forwarding reference so that a const Matrix/Array is
// refused at compile time (static_check_output / writable_output, shared by every header).
//
// Tensors (DESIGN.md's axis forms): f(t, axis) and f.apply(t, axis, y) for an Eigen::Tensor,
// TensorMap or TensorRef t, and f.backward(x, y, dy, axis[, dx]). The base only declares them and
// detects tensors through Eigen's TensorBase (declared below, so this header does not need the
// Tensor module); the definitions are in <softmaxlab/tensor.hpp>, which a program using them
// includes (a static_assert says so otherwise).
//
// Parallel batches: rowwise/colwise spread their slices over OpenMP threads when the program is
// compiled with OpenMP (-fopenmp, so _OPENMP is defined) AND defines SOFTMAXLAB_USE_OPENMP before
// including softmaxlab (off by default: a header library must not start threads behind its user's
// back). Each slice is computed by exactly the same code whatever thread runs it, so the results
// are bit-for-bit the same for any thread count. Batches under kParallelMinElements elements, runs
// with one OpenMP thread, calls from inside a parallel region, and variants with extra per-call
// arguments (a random generator, which threads must not share) stay sequential.
#pragma once

#include <algorithm>
#include <functional>
#include <utility>

#include "checks.hpp"
#include "common.hpp"
#include "scalar_types.hpp"

// 1 when rowwise/colwise and Attention spread their slices over OpenMP threads (compiled with
// OpenMP and SOFTMAXLAB_USE_OPENMP), 0 otherwise.
#if defined(_OPENMP) && defined(SOFTMAXLAB_USE_OPENMP)
#include <omp.h>
#define SOFTMAXLAB_PARALLEL_SLICES 1
#else
#define SOFTMAXLAB_PARALLEL_SLICES 0
#endif

namespace Eigen {
template <typename Derived, int AccessLevel>
class TensorBase;
}  // namespace Eigen

namespace softmaxlab {
namespace detail {

// Whether T is an Eigen tensor (Tensor, TensorMap, TensorRef, TensorFixedSize or an expression):
// every one derives from TensorBase<T, ReadOnlyAccessors>, complete or not.
template <class T>
inline constexpr bool is_tensor_v =
    std::is_base_of_v<Eigen::TensorBase<T, Eigen::ReadOnlyAccessors>, std::remove_cv_t<T>>;
template <class T>
using if_tensor_t =
    std::enable_if_t<is_tensor_v<std::remove_cv_t<std::remove_reference_t<T>>>, int>;

// The axis forms of every functor on tensors, defined by <softmaxlab/tensor.hpp>.
template <class T, class = void>
struct TensorAxisForms;
template <class T, class = void>
inline constexpr bool tensor_forms_included_v = false;
template <class T>
inline constexpr bool
    tensor_forms_included_v<T, std::void_t<decltype(sizeof(TensorAxisForms<T>))>> = true;
template <class T>
constexpr void static_check_tensor_forms() {
  static_assert(
      tensor_forms_included_v<T>,
      "softmaxlab: the axis forms on Eigen tensors need #include <softmaxlab/tensor.hpp>");
}

template <class Xpr>
inline constexpr bool has_direct_access_v = (int(Xpr::Flags) & Eigen::DirectAccessBit) != 0;

template <class Xpr>
inline constexpr bool is_writable_storage_v =
    has_direct_access_v<Xpr> && (int(Xpr::Flags) & Eigen::LvalueBit) != 0;

// Element i of a 1-D object with direct access, as a strided span.
template <class Scalar, class Xpr>
Span<Scalar> vector_span(Xpr& v) {
  const Index stride = v.rows() == 1 ? v.colStride() : v.rowStride();
  return {const_cast<Scalar*>(v.data()), v.size(), stride};
}

// Row i (or column i when `along_rows` is false) of a matrix with direct access.
template <class Scalar, class Xpr>
Span<Scalar> slice_span(Xpr& m, Index i, bool along_rows) {
  auto* base = const_cast<Scalar*>(m.data());
  if ((along_rows ? m.cols() : m.rows()) == 0)
    return {base, 0, 1};  // an empty slice of an empty matrix: base may be null, add no offset
  return along_rows ? Span<Scalar>{base + i * m.rowStride(), m.cols(), m.colStride()}
                    : Span<Scalar>{base + i * m.colStride(), m.rows(), m.rowStride()};
}

template <class Scalar>
bool partially_overlap(const Span<const Scalar>& a, const Span<Scalar>& b) {
  if (a.size == 0 || b.size == 0)
    return false;
  if (a.data == b.data && a.stride == b.stride)
    return false;  // exactly in place: allowed
  const Scalar* a_end = a.data + (a.size - 1) * a.stride;
  const Scalar* b_end = b.data + (b.size - 1) * b.stride;
  return !(std::less<const Scalar*>()(a_end, b.data) || std::less<const Scalar*>()(b_end, a.data));
}

template <class Scalar>
bool matrices_partially_overlap(const Scalar* x, const Scalar* x_last, const Scalar* y,
                                const Scalar* y_last, bool same_layout) {
  if (x == y && same_layout)
    return false;
  return !(std::less<const Scalar*>()(x_last, y) || std::less<const Scalar*>()(y_last, x));
}

// Writes the expression x into the storage of y (viewed with x's shape), without allocating. For
// vectors only the element stride matters, so a column may be written into a row and vice versa.
template <class XprX, class XprY>
void evaluate_into(const Eigen::DenseBase<XprX>& x, XprY& y) {
  using Plain = typename XprX::PlainObject;
  using Strides = Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>;
  constexpr bool row_major = (int(Plain::Flags) & Eigen::RowMajorBit) != 0;
  const bool is_vector = x.rows() == 1 || x.cols() == 1;
  const Index element_stride = y.rows() == 1 ? y.colStride() : y.rowStride();
  // A vector's elements step along Plain's inner dimension (a column of a column-major Plain, a
  // row of a row-major one) or along its outer one (a 1 x n column-major Plain: a dynamic
  // matrix's single row).
  const bool along_inner = row_major ? x.rows() == 1 : x.cols() == 1;
  const Index spread = element_stride * y.size();
  const Index outer = is_vector ? (along_inner ? spread : element_stride)
                                : (row_major ? y.rowStride() : y.colStride());
  const Index inner = is_vector ? (along_inner ? element_stride : spread)
                                : (row_major ? y.colStride() : y.rowStride());
  Eigen::Map<Plain, Eigen::Unaligned, Strides>(y.data(), x.rows(), x.cols(),
                                               Strides(outer, inner)) = x.derived();
}

// Outputs are taken by forwarding reference (Out&&): temporaries such as Y.row(i) bind, and the
// constness of a named output stays visible, so writing into a const Matrix or Array (whose
// storage is const) is refused at compile time. A const view (a const Map, Ref or Block, or the
// `const MatrixBase<Derived>&` of Eigen's "Writing Functions Taking Eigen Types" idiom) refers to
// storage that may be writable and is accepted, as Eigen's own documentation does.
template <class T>
inline constexpr bool is_plain_object_v = std::is_base_of_v<Eigen::PlainObjectBase<T>, T>;

template <class Out>
constexpr void static_check_output() {
  using T = std::remove_reference_t<Out>;
  static_assert(!(std::is_const_v<T> && is_plain_object_v<std::remove_cv_t<T>>),
                "softmaxlab: the output is a const Matrix/Array and cannot be written: pass a "
                "non-const object, or a writable view (Map, Ref, or a block such as Y.row(i))");
}

// The Eigen type behind a forwarded output argument Out&&.
template <class Out>
using output_xpr_t = std::remove_cv_t<std::remove_reference_t<Out>>;

// Constrains Out&& to Eigen objects, for overload sets in which another form takes something else
// at the output's position (a RowOutputs, a generator, a workspace).
template <class Out>
using if_output_t =
    std::enable_if_t<std::is_base_of_v<Eigen::DenseBase<output_xpr_t<Out>>, output_xpr_t<Out>>,
                     int>;

// Every public output of softmaxlab goes through here (or static_check_output, when it is handed
// on to a `const DenseBase&` implementation): refuses a const Matrix/Array at compile time and
// returns the object to write. A const view refers to writable storage, so writing through it is
// sound (Eigen's const MatrixBase<Derived>& idiom).
template <class Out>
output_xpr_t<Out>& writable_output(Out&& y) {
  static_check_output<Out>();
  return const_cast<output_xpr_t<Out>&>(static_cast<const output_xpr_t<Out>&>(y));
}

// Smallest batch (elements) worth spreading over threads.
inline constexpr Index kParallelMinElements = Index(1) << 15;

// Whether rowwise/colwise of this build may use OpenMP threads.
inline constexpr bool kParallelSlices = SOFTMAXLAB_PARALLEL_SLICES != 0;

// Runs fn(i) for i in [0, count): on OpenMP threads (static schedule) when kParallel and the batch
// is large enough, else in order. fn must not throw (checks happen before) and must touch only
// slice i's data.
template <bool kParallel, class Fn>
void for_each_slice(Index count, Index slice_size, const Fn& fn) {
#if SOFTMAXLAB_PARALLEL_SLICES
  if constexpr (kParallel) {
    // One available thread: no parallel region at all (its setup would be pure overhead).
    if (count > 1 && count * slice_size >= kParallelMinElements && !omp_in_parallel()
        && omp_get_max_threads() > 1) {
#pragma omp parallel for schedule(guided)
      for (Index i = 0; i < count; ++i)
        fn(i);
      return;
    }
  }
#else
  EIGEN_UNUSED_VARIABLE(slice_size);
#endif
  for (Index i = 0; i < count; ++i)
    fn(i);
}

// The flags a variant may set, with their defaults, in one traits struct. A variant that sets any
// declares a public nested `struct Traits : detail::VariantTraits { ... };` overriding them; the
// bases read them through traits_t<Variant> (the one detection of a variant's flags).
struct VariantTraits {
  // The backward reads x (false: x is shape-checked only and an empty span is passed).
  static constexpr bool backward_reads_input = true;
  // A batch kernel for contiguous slices, a private compute_rows(x, ldx, y, ldy, count, size):
  // batches whose slices are contiguous then go to it in blocks of rows instead of one compute
  // call per row.
  static constexpr bool contiguous_rows_kernel = false;
  // Long rows of 16-bit or mixed scalars are streamed by the variant's compute_streamed (see
  // compute_mixed).
  static constexpr bool streams_long_rows = false;
  // compute_streamed also takes the rows that fit the stage, converting inside its own passes.
  static constexpr bool fuses_conversions = false;
  // Contiguous 16-bit (or mixed float and 16-bit) rows of at most rows_mixed entries (at most
  // kRowsBlockElements) go to the variant's compute_rows_mixed(x, ldx, y, ldy, count, size), which
  // converts in registers (AVX-512 builds only); 0: none.
  static constexpr Index rows_mixed = 0;
};
template <class V, class = void>
struct traits_of {
  using type = VariantTraits;
};
template <class V>
struct traits_of<V, std::void_t<typename V::Traits>> {
  using type = typename V::Traits;
};
template <class V>
using traits_t = typename traits_of<V>::type;

template <class D>
inline constexpr bool has_contiguous_rows_kernel_v = traits_t<D>::contiguous_rows_kernel;

// Elements per block of rows given to a batch kernel (and the unit of work of a thread).
inline constexpr Index kRowsBlockElements = Index(1) << 12;

// Address of the last coefficient of a matrix with direct access.
template <class Xpr>
const typename Xpr::Scalar* last_coefficient(const Xpr& m) {
  return m.data() + (m.rows() - 1) * m.rowStride() + (m.cols() - 1) * m.colStride();
}

template <class Derived>
struct streams_long_rows : std::bool_constant<traits_t<Derived>::streams_long_rows> {};
template <class Derived>
struct fuses_conversions : std::bool_constant<traits_t<Derived>::fuses_conversions> {};

template <class Derived>
class DistributionFunctor {
 public:
  // y = f(x) for a 1-D x; returns a plain object of x's shape and scalar.
  template <class XprX>
  typename XprX::PlainObject operator()(const Eigen::DenseBase<XprX>& x) const {
    require_vector(Derived::name, x.rows(), x.cols());
    typename XprX::PlainObject y(x.rows(), x.cols());
    apply_impl(x, y);
    return y;
  }

  // Writes f(x) into y (same length; either orientation); allocation-free; y may be x.
  template <class XprX, class Out>
  void apply(const Eigen::DenseBase<XprX>& x, Out&& y) const {
    static_check_output<Out>();
    apply_impl(x, y);
  }

  // Each row of X is one distribution.
  template <class XprX>
  typename XprX::PlainObject rowwise(const Eigen::DenseBase<XprX>& x) const {
    typename XprX::PlainObject y(x.rows(), x.cols());
    slices_impl(x, y, true);
    return y;
  }
  template <class XprX, class Out>
  void rowwise(const Eigen::DenseBase<XprX>& x, Out&& y) const {
    static_check_output<Out>();
    slices_impl(x, y, true);
  }

  // Each column of X is one distribution.
  template <class XprX>
  typename XprX::PlainObject colwise(const Eigen::DenseBase<XprX>& x) const {
    typename XprX::PlainObject y(x.rows(), x.cols());
    slices_impl(x, y, false);
    return y;
  }
  template <class XprX, class Out>
  void colwise(const Eigen::DenseBase<XprX>& x, Out&& y) const {
    static_check_output<Out>();
    slices_impl(x, y, false);
  }

  // Each 1-D slice along `axis` of the tensor t is one distribution (tensor.hpp): returns a
  // Tensor of t's shape, layout and scalar; apply writes into y (a Tensor or TensorMap of t's
  // shape) without allocating.
  template <class T, if_tensor_t<T> = 0>
  auto operator()(const T& t, Index axis) const {
    static_check_tensor_forms<T>();
    return TensorAxisForms<T>::along(self(), t, axis);
  }
  template <class T, class Out, if_tensor_t<T> = 0>
  void apply(const T& t, Index axis, Out&& y) const {
    static_check_tensor_forms<T>();
    TensorAxisForms<T>::apply(self(), t, axis, std::forward<Out>(y));
  }

 protected:
  template <class XprX, class XprY>
  static void static_check_io() {
    static_check_storage_scalars<typename XprX::Scalar, typename XprY::Scalar>();
    static_assert(is_writable_storage_v<XprY>,
                  "softmaxlab: the output must be writable storage (Matrix, Array, Map, Ref or a "
                  "Block of one), not an expression");
  }

  // Same-type float/double calls run the variant's compute on the data in place; every other
  // pair of scalar types goes through the staged path (compute_mixed).
  template <class XprX, class XprY, class... Extra>
  void apply_impl(const Eigen::DenseBase<XprX>& x, const Eigen::DenseBase<XprY>& y,
                  Extra&... extra) const {
    static_check_io<XprX, XprY>();
    if constexpr (is_mixed_v<typename XprX::Scalar, typename XprY::Scalar>) {
      apply_mixed(x, y, extra...);
    } else {
      apply_same(x, y, extra...);
    }
  }

  template <class XprX, class XprY, class... Extra>
  void slices_impl(const Eigen::DenseBase<XprX>& x, const Eigen::DenseBase<XprY>& y,
                   bool along_rows, Extra&... extra) const {
    static_check_io<XprX, XprY>();
    if constexpr (is_mixed_v<typename XprX::Scalar, typename XprY::Scalar>) {
      slices_mixed(x, y, along_rows, extra...);
    } else {
      slices_same(x, y, along_rows, extra...);
    }
  }

  template <class XprX, class XprY, class... Extra>
  void apply_same(const Eigen::DenseBase<XprX>& x, const Eigen::DenseBase<XprY>& y_const,
                  Extra&... extra) const {
    using Scalar = typename XprX::Scalar;
    auto& y = const_cast<Eigen::DenseBase<XprY>&>(y_const).derived();
    if (!check_vector_io(Derived::name, x, y))
      return;
    const Span<Scalar> ys = vector_span<Scalar>(y);
    if constexpr (has_direct_access_v<XprX>) {
      const Span<const Scalar> xs = vector_span<const Scalar>(x.derived());
      if (partially_overlap(xs, ys)) {
        fail(Derived::name,
             ": output partially overlaps the input (only exact in-place is allowed)");
      }
      self().template compute<Scalar>(xs, ys, extra...);
    } else {
      evaluate_into(x, y);
      self().template compute<Scalar>(Span<const Scalar>{ys.data, ys.size, ys.stride}, ys,
                                      extra...);
    }
  }

  template <class XprX, class XprY, class... Extra>
  void slices_same(const Eigen::DenseBase<XprX>& x, const Eigen::DenseBase<XprY>& y_const,
                   bool along_rows, Extra&... extra) const {
    using Scalar = typename XprX::Scalar;
    auto& y = const_cast<Eigen::DenseBase<XprY>&>(y_const).derived();
    require_same_size(along_rows ? "rowwise" : "colwise", x.rows(), x.cols(), y.rows(), y.cols());
    if (x.size() == 0)
      return;
    const Index count = along_rows ? x.rows() : x.cols();
    const Index size = along_rows ? x.cols() : x.rows();
    // Extra per-call arguments (a random generator) are shared state: those batches stay in order.
    constexpr bool kParallel = kParallelSlices && sizeof...(Extra) == 0;
    if constexpr (has_direct_access_v<XprX>) {
      const auto& xd = x.derived();
      const Scalar* x_last = last_coefficient(xd);
      const Scalar* y_last = last_coefficient(y);
      const bool same_layout = xd.rowStride() == y.rowStride() && xd.colStride() == y.colStride();
      if (matrices_partially_overlap<Scalar>(xd.data(), x_last, y.data(), y_last, same_layout)) {
        fail(Derived::name,
             ": output partially overlaps the input (only exact in-place is allowed)");
      }
      if constexpr (has_contiguous_rows_kernel_v<Derived> && sizeof...(Extra) == 0
                    && (std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>)) {
        if ((along_rows ? xd.colStride() : xd.rowStride()) == 1
            && (along_rows ? y.colStride() : y.rowStride()) == 1) {
          const Index ldx = along_rows ? xd.rowStride() : xd.colStride();
          const Index ldy = along_rows ? y.rowStride() : y.colStride();
          const Index per_block = std::max<Index>(1, kRowsBlockElements / size);
          const Index blocks = (count + per_block - 1) / per_block;
          for_each_slice<kParallel>(blocks, per_block * size, [&](Index b) {
            const Index first = b * per_block;
            self().template compute_rows<Scalar>(xd.data() + first * ldx, ldx,
                                                 y.data() + first * ldy, ldy,
                                                 std::min(per_block, count - first), size);
          });
          return;
        }
      }
      for_each_slice<kParallel>(count, size, [&](Index i) {
        self().template compute<Scalar>(slice_span<const Scalar>(xd, i, along_rows),
                                        slice_span<Scalar>(y, i, along_rows), extra...);
      });
    } else {
      evaluate_into(x, y);
      for_each_slice<kParallel>(count, size, [&](Index i) {
        const Span<Scalar> ys = slice_span<Scalar>(y, i, along_rows);
        self().template compute<Scalar>(Span<const Scalar>{ys.data, ys.size, ys.stride}, ys,
                                        extra...);
      });
    }
  }

  // Mixed or 16-bit scalars (scalar_types.hpp): the math runs in C = compute_scalar_t<In, Out>.
  // A row of up to kStageElements<C> entries is converted into a stack buffer, computed there by
  // the variant's own compute<C> and rounded once into y (Softmax fuses the conversions into its
  // own passes instead, see fuses_conversions). Longer rows: a variant that defines
  // compute_streamed<C>(Span<const In>, Span<Out>) streams them in converted chunks (Softmax,
  // LogSoftmax, SinglePassSoftmax); otherwise, when Out is C, x is converted into y and computed
  // there; only the remaining case (a row longer than the stage, written to a 16-bit output, by a
  // variant without a streamed form) uses a heap workspace.
  template <class In, class Out, class... Extra>
  void compute_mixed(const Span<const In>& x, const Span<Out>& y, Extra&... extra) const {
    using C = compute_scalar_t<In, Out>;
    constexpr Index kCap = kStageElements<C>;
    if constexpr (fuses_conversions<Derived>::value) {
      self().template compute_streamed<C>(x, y, extra...);  // every length (Softmax)
    } else if (x.size <= kCap) {
      alignas(64) C stage[kCap];
      load_as(x, stage);
      self().template compute<C>(Span<const C>{stage, x.size, 1}, Span<C>{stage, x.size, 1},
                                 extra...);
      store_as(static_cast<const C*>(stage), y);
    } else if constexpr (streams_long_rows<Derived>::value) {
      self().template compute_streamed<C>(x, y, extra...);
    } else if constexpr (std::is_same_v<Out, C>) {
      convert_strided(x.data, x.stride, y.data, y.stride, x.size);
      self().template compute<C>(Span<const C>{y.data, y.size, y.stride}, y, extra...);
    } else {
      Eigen::Matrix<C, Eigen::Dynamic, 1> work(x.size);
      load_as(x, work.data());
      const Span<C> ws{work.data(), x.size, 1};
      self().template compute<C>(Span<const C>{ws.data, ws.size, 1}, ws, extra...);
      store_as(static_cast<const C*>(work.data()), y);
    }
  }

  template <class XprX, class XprY, class... Extra>
  void apply_mixed(const Eigen::DenseBase<XprX>& x, const Eigen::DenseBase<XprY>& y_const,
                   Extra&... extra) const {
    using In = typename XprX::Scalar;
    using Out = typename XprY::Scalar;
    auto& y = const_cast<Eigen::DenseBase<XprY>&>(y_const).derived();
    if (!check_vector_io(Derived::name, x, y))
      return;
    if constexpr (has_direct_access_v<XprX>) {
      compute_mixed(vector_span<const In>(x.derived()), vector_span<Out>(y), extra...);
    } else {
      // An expression: its plain value first (Eigen may allocate it), then as above.
      const typename XprX::PlainObject plain = x.derived();
      compute_mixed(vector_span<const In>(plain), vector_span<Out>(y), extra...);
    }
  }

  template <class XprX, class XprY, class... Extra>
  void slices_mixed(const Eigen::DenseBase<XprX>& x, const Eigen::DenseBase<XprY>& y_const,
                    bool along_rows, Extra&... extra) const {
    using In = typename XprX::Scalar;
    using Out = typename XprY::Scalar;
    auto& y = const_cast<Eigen::DenseBase<XprY>&>(y_const).derived();
    require_same_size(along_rows ? "rowwise" : "colwise", x.rows(), x.cols(), y.rows(), y.cols());
    if (x.size() == 0)
      return;
    if constexpr (has_direct_access_v<XprX>) {
      constexpr bool kParallel = kParallelSlices && sizeof...(Extra) == 0;
      const auto& xd = x.derived();
      const Index count = along_rows ? x.rows() : x.cols();
      const Index size = along_rows ? x.cols() : x.rows();
      if constexpr (has_contiguous_rows_kernel_v<Derived> && sizeof...(Extra) == 0) {
        // Short contiguous slices: a block of them converted into one stage, the float batch
        // kernel over the block (several rows per iteration), one rounding back. The per-row
        // path below would pay its dispatch on every short row.
        if (size <= kRowsBlockElements && (along_rows ? xd.colStride() : xd.rowStride()) == 1
            && (along_rows ? y.colStride() : y.rowStride()) == 1) {
          using C = compute_scalar_t<In, Out>;
          const Index ldx = along_rows ? xd.rowStride() : xd.colStride();
          const Index ldy = along_rows ? y.rowStride() : y.colStride();
          const Index per_block = kRowsBlockElements / size;
          const Index blocks = (count + per_block - 1) / per_block;
#if SOFTMAXLAB_AVX512_CONVERT
          if constexpr (std::is_same_v<C, float> && traits_t<Derived>::rows_mixed > 0) {
            if (size <= traits_t<Derived>::rows_mixed) {
              for_each_slice<kParallel>(blocks, per_block * size, [&](Index b) {
                const Index first = b * per_block;
                self().compute_rows_mixed(xd.data() + first * ldx, ldx, y.data() + first * ldy, ldy,
                                          std::min(per_block, count - first), size);
              });
              return;
            }
          }
#endif
          for_each_slice<kParallel>(blocks, per_block * size, [&](Index b) {
            alignas(64) C stage[kRowsBlockElements];
            const Index first = b * per_block;
            const Index rows = std::min(per_block, count - first);
            for (Index r = 0; r < rows; ++r)
              convert_contiguous(xd.data() + (first + r) * ldx, stage + r * size, size);
            self().template compute_rows<C>(stage, size, stage, size, rows, size);
            for (Index r = 0; r < rows; ++r) {
              convert_contiguous(static_cast<const C*>(stage + r * size),
                                 y.data() + (first + r) * ldy, size);
            }
          });
          return;
        }
      }
      for_each_slice<kParallel>(count, size, [&](Index i) {
        compute_mixed(slice_span<const In>(xd, i, along_rows), slice_span<Out>(y, i, along_rows),
                      extra...);
      });
    } else {
      const typename XprX::PlainObject plain = x.derived();
      slices_mixed(plain, y, along_rows, extra...);
    }
  }

 private:
  const Derived& self() const {
    return static_cast<const Derived&>(*this);
  }
};

}  // namespace detail
}  // namespace softmaxlab
