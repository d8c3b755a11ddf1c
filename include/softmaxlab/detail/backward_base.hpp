// softmaxlab: how backward passes reach a variant's math, written once (the counterpart of
// functor_base.hpp for gradients).
//
// A variant that derives from BackwardFunctor<Variant> (and befriends it) implements, privately,
//     template <class Scalar>
//     void compute_backward(Span<const Scalar> x, Span<const Scalar> y, Span<const Scalar> dy,
//                           Span<Scalar> dx, Extra&... extra) const;
// the vector-Jacobian product dx = J_f(x)^T dy for one distribution y = f(x). It must finish every
// reduction over the inputs before it writes dx, and write dx[i] only after its last read of
// x[i], y[i] and dy[i]: then dx may be exactly any of x, y, dy (in place). A variant whose
// gradient does not read x sets backward_reads_input = false in its Traits (functor_base.hpp's
// VariantTraits; x is then shape-checked only and an empty span is passed).
//
// The base provides the public forms:
//     dx = f.backward(x, y, dy);           f.backward(x, y, dy, dx);          // 1-D
//     dX = f.rowwise_backward(X, Y, dY);   f.rowwise_backward(X, Y, dY, dX);  // each row
//     dX = f.colwise_backward(X, Y, dY);   f.colwise_backward(X, Y, dY, dX);  // each column
// Inputs are any dense Eigen expressions of one scalar type. The forms writing into dx never
// allocate: inputs with storage are read in place, and at most one input may be an expression,
// which is evaluated into dx's storage first (a compile-time error says so otherwise). The forms
// returning dx evaluate any number of expression inputs into temporaries.
#pragma once

#include <type_traits>

#include "checks.hpp"
#include "common.hpp"
#include "functor_base.hpp"
#include "scalar_types.hpp"

namespace softmaxlab {
namespace detail {

template <class Derived>
struct backward_reads_input : std::bool_constant<traits_t<Derived>::backward_reads_input> {};

// Calls fn with x itself when it has storage, otherwise with a plain temporary holding it.
template <class Xpr, class Fn>
decltype(auto) with_storage(const Eigen::DenseBase<Xpr>& x, Fn&& fn) {
  if constexpr (has_direct_access_v<Xpr>) {
    return fn(x.derived());
  } else {
    const typename Xpr::PlainObject plain = x.derived();
    return fn(plain);
  }
}

// A span over slice i of m: the whole vector (mode Vector), row i (Rows) or column i (Cols).
enum class SliceMode { Vector, Rows, Cols };

template <class Scalar, class Xpr>
Span<Scalar> slice_of(Xpr& m, Index i, SliceMode mode) {
  if (mode == SliceMode::Vector)
    return vector_span<Scalar>(m);
  return slice_span<Scalar>(m, i, mode == SliceMode::Rows);
}

// Whether two matrices with direct access overlap in memory other than being exactly the same
// storage with the same layout.
template <class A, class B>
bool storage_partially_overlaps(const A& a, const B& b) {
  if (a.size() == 0 || b.size() == 0)
    return false;
  const bool same_layout = a.rowStride() == b.rowStride() && a.colStride() == b.colStride()
                           && a.rows() == b.rows() && a.cols() == b.cols();
  const bool same_vector_layout = (a.rows() == 1 || a.cols() == 1)
                                  && (b.rows() == 1 || b.cols() == 1) && a.size() == b.size()
                                  && (a.rows() == 1 ? a.colStride() : a.rowStride())
                                         == (b.rows() == 1 ? b.colStride() : b.rowStride());
  return matrices_partially_overlap<typename A::Scalar>(a.data(), last_coefficient(a), b.data(),
                                                        last_coefficient(b),
                                                        same_layout || same_vector_layout);
}

template <class A, class B>
bool storage_overlaps(const A& a, const B& b) {
  if (a.size() == 0 || b.size() == 0)
    return false;
  return !(std::less<const typename A::Scalar*>()(last_coefficient(a), b.data())
           || std::less<const typename A::Scalar*>()(last_coefficient(b), a.data()));
}

// Shape check for `count` same-shaped arguments: 1-D of one length (Vector) or one shape.
inline void require_same_shape(const char* function, SliceMode mode, const char* what, Index rows,
                               Index cols, Index ref_rows, Index ref_cols) {
  if (mode == SliceMode::Vector) {
    require_vector(function, rows, cols);
    if (rows * cols != ref_rows * ref_cols) {
      fail(function, ": ", what, " must have the input's length ", ref_rows * ref_cols,
           ", but got ", rows, " x ", cols);
    }
  } else if (rows != ref_rows || cols != ref_cols) {
    fail(function, ": ", what, " must have the input's shape ", ref_rows, " x ", ref_cols,
         ", but got ", rows, " x ", cols);
  }
}

// The backward forms' checks: x 1-D (Vector) and y, dy, dx of x's length or shape. Returns
// whether there is work (false for an empty input).
template <class X, class Y, class Dy, class Dx>
bool check_backward_shapes(const char* function, SliceMode mode, const X& x, const Y& y,
                           const Dy& dy, const Dx& dx) {
  if (mode == SliceMode::Vector)
    require_vector(function, x.rows(), x.cols());
  require_same_shape(function, mode, "y", y.rows(), y.cols(), x.rows(), x.cols());
  require_same_shape(function, mode, "dy", dy.rows(), dy.cols(), x.rows(), x.cols());
  require_same_shape(function, mode, "dx", dx.rows(), dx.cols(), x.rows(), x.cols());
  return x.size() != 0;
}

template <class Derived>
class BackwardFunctor {
 public:
  // dx = J^T dy for one 1-D distribution y = f(x); returns a plain object of x's shape.
  template <class XprX, class XprY, class XprDy>
  typename XprX::PlainObject backward(const Eigen::DenseBase<XprX>& x,
                                      const Eigen::DenseBase<XprY>& y,
                                      const Eigen::DenseBase<XprDy>& dy) const {
    require_vector(Derived::name, x.rows(), x.cols());
    typename XprX::PlainObject dx(x.rows(), x.cols());
    backward_alloc_impl(x, y, dy, dx, SliceMode::Vector);
    return dx;
  }
  // Writes dx (same length, either orientation); allocation-free; dx may be x, y or dy.
  template <class XprX, class XprY, class XprDy, class Out>
  void backward(const Eigen::DenseBase<XprX>& x, const Eigen::DenseBase<XprY>& y,
                const Eigen::DenseBase<XprDy>& dy, Out&& dx) const {
    static_check_output<Out>();
    backward_impl(x, y, dy, dx, SliceMode::Vector);
  }

  // Each row is one distribution.
  template <class XprX, class XprY, class XprDy>
  typename XprX::PlainObject rowwise_backward(const Eigen::DenseBase<XprX>& x,
                                              const Eigen::DenseBase<XprY>& y,
                                              const Eigen::DenseBase<XprDy>& dy) const {
    typename XprX::PlainObject dx(x.rows(), x.cols());
    backward_alloc_impl(x, y, dy, dx, SliceMode::Rows);
    return dx;
  }
  template <class XprX, class XprY, class XprDy, class Out>
  void rowwise_backward(const Eigen::DenseBase<XprX>& x, const Eigen::DenseBase<XprY>& y,
                        const Eigen::DenseBase<XprDy>& dy, Out&& dx) const {
    static_check_output<Out>();
    backward_impl(x, y, dy, dx, SliceMode::Rows);
  }

  // Each column is one distribution.
  template <class XprX, class XprY, class XprDy>
  typename XprX::PlainObject colwise_backward(const Eigen::DenseBase<XprX>& x,
                                              const Eigen::DenseBase<XprY>& y,
                                              const Eigen::DenseBase<XprDy>& dy) const {
    typename XprX::PlainObject dx(x.rows(), x.cols());
    backward_alloc_impl(x, y, dy, dx, SliceMode::Cols);
    return dx;
  }
  template <class XprX, class XprY, class XprDy, class Out>
  void colwise_backward(const Eigen::DenseBase<XprX>& x, const Eigen::DenseBase<XprY>& y,
                        const Eigen::DenseBase<XprDy>& dy, Out&& dx) const {
    static_check_output<Out>();
    backward_impl(x, y, dy, dx, SliceMode::Cols);
  }

  // Each 1-D slice along `axis` of the tensors x, y, dy (one shape) is one distribution
  // (tensor.hpp): returns dx as a Tensor of x's shape, or writes it into a Tensor or TensorMap dx
  // without allocating (16-bit slices longer than the stage excepted, as in rowwise_backward).
  template <class T, class TY, class TDy, if_tensor_t<T> = 0>
  auto backward(const T& x, const TY& y, const TDy& dy, Index axis) const {
    static_check_tensor_forms<T>();
    return TensorAxisForms<T>::backward(self(), x, y, dy, axis);
  }
  template <class T, class TY, class TDy, class Out, if_tensor_t<T> = 0>
  void backward(const T& x, const TY& y, const TDy& dy, Index axis, Out&& dx) const {
    static_check_tensor_forms<T>();
    TensorAxisForms<T>::apply_backward(self(), x, y, dy, axis, std::forward<Out>(dx));
  }

 protected:
  // The allocating forms: expression inputs go to temporaries, then the output form runs.
  template <class XprX, class XprY, class XprDy, class XprDx, class... Extra>
  void backward_alloc_impl(const Eigen::DenseBase<XprX>& x, const Eigen::DenseBase<XprY>& y,
                           const Eigen::DenseBase<XprDy>& dy, XprDx& dx, SliceMode mode,
                           Extra&... extra) const {
    auto run_x = [&](const auto& xs) {
      with_storage(y, [&](const auto& ys) {
        with_storage(dy, [&](const auto& dys) { backward_impl(xs, ys, dys, dx, mode, extra...); });
      });
    };
    if constexpr (backward_reads_input<Derived>::value) {
      with_storage(x, run_x);
    } else {
      run_x(x.derived());  // only its shape is used
    }
  }

  // float/double with one scalar type throughout: the variant's compute_backward on the data in
  // place; any other combination of the four storage types: backward_mixed.
  template <class XprX, class XprY, class XprDy, class XprDx, class... Extra>
  void backward_impl(const Eigen::DenseBase<XprX>& x_in, const Eigen::DenseBase<XprY>& y_in,
                     const Eigen::DenseBase<XprDy>& dy_in, const Eigen::DenseBase<XprDx>& dx,
                     SliceMode mode, Extra&... extra) const {
    using S = typename XprX::Scalar;
    if constexpr (
        std::is_same_v<
            S,
            typename XprY::
                Scalar> && std::is_same_v<S, typename XprDy::Scalar> && std::is_same_v<S, typename XprDx::Scalar> && is_supported_scalar_v<S>) {
      backward_same(x_in, y_in, dy_in, dx, mode, extra...);
    } else {
      backward_mixed(x_in, y_in, dy_in, dx, mode, extra...);
    }
  }

  // Mixed or 16-bit scalars: each slice is converted into stack buffers of C (double when any
  // argument is double, else float; rows up to kStageElements<C> / 4 entries, heap workspaces
  // beyond), computed by compute_backward<C> and rounded once into dx.
  template <class XprX, class XprY, class XprDy, class XprDx, class... Extra>
  void backward_mixed(const Eigen::DenseBase<XprX>& x_in, const Eigen::DenseBase<XprY>& y_in,
                      const Eigen::DenseBase<XprDy>& dy_in, const Eigen::DenseBase<XprDx>& dx_const,
                      SliceMode mode, Extra&... extra) const {
    using SX = typename XprX::Scalar;
    using SY = typename XprY::Scalar;
    using SDy = typename XprDy::Scalar;
    using SDx = typename XprDx::Scalar;
    static_check_storage_scalars<SX, SDx>();
    static_check_storage_scalars<SY, SDy>();
    using C = std::conditional_t<
        std::is_same_v<compute_scalar_t<SX, SY>,
                       double> || std::is_same_v<compute_scalar_t<SDy, SDx>, double>,
        double, float>;
    constexpr bool reads_x = backward_reads_input<Derived>::value;
    static_assert(is_writable_storage_v<XprDx>,
                  "softmaxlab: dx must be writable storage (Matrix, Array, Map, Ref or a Block of "
                  "one), not an expression");
    static_assert(
        (!reads_x
         || has_direct_access_v<XprX>)&&has_direct_access_v<XprY> && has_direct_access_v<XprDy>,
        "softmaxlab: with mixed or 16-bit scalars the allocation-free backward forms "
        "need x, y and dy with storage; evaluate expressions first, or use the form "
        "that returns dx");
    const auto& x = x_in.derived();
    const auto& y = y_in.derived();
    const auto& dy = dy_in.derived();
    auto& dx = const_cast<Eigen::DenseBase<XprDx>&>(dx_const).derived();
    const char* name = Derived::name;
    if (!check_backward_shapes(name, mode, x, y, dy, dx))
      return;
    const Index count = mode == SliceMode::Vector ? 1
                        : mode == SliceMode::Rows ? x.rows()
                                                  : x.cols();
    constexpr Index kCap = kStageElements<C> / 4;
    for (Index i = 0; i < count; ++i) {
      const Span<const SY> ys = slice_of<const SY>(y, i, mode);
      const Index n = ys.size;
      auto run = [&](C* bx, C* by, C* bdy) {
        Span<const C> xs{nullptr, 0, 1};
        if constexpr (reads_x) {
          load_as(slice_of<const SX>(x, i, mode), bx);
          xs = {bx, n, 1};
        }
        load_as(ys, by);
        load_as(slice_of<const SDy>(dy, i, mode), bdy);
        self().template compute_backward<C>(xs, Span<const C>{by, n, 1}, Span<const C>{bdy, n, 1},
                                            Span<C>{bdy, n, 1}, extra...);
        store_as(static_cast<const C*>(bdy), slice_of<SDx>(dx, i, mode));
      };
      if (n <= kCap) {
        alignas(64) C bx[kCap], by[kCap], bdy[kCap];
        run(bx, by, bdy);
      } else {
        Eigen::Matrix<C, Eigen::Dynamic, 3> work(n, 3);
        run(work.col(0).data(), work.col(1).data(), work.col(2).data());
      }
    }
  }

  template <class XprX, class XprY, class XprDy, class XprDx, class... Extra>
  void backward_same(const Eigen::DenseBase<XprX>& x_in, const Eigen::DenseBase<XprY>& y_in,
                     const Eigen::DenseBase<XprDy>& dy_in, const Eigen::DenseBase<XprDx>& dx_const,
                     SliceMode mode, Extra&... extra) const {
    using Scalar = typename XprX::Scalar;
    static_check_scalar<Scalar>();
    static_assert(
        std::is_same_v<
            Scalar,
            typename XprY::
                Scalar> && std::is_same_v<Scalar, typename XprDy::Scalar> && std::is_same_v<Scalar, typename XprDx::Scalar>,
        "softmaxlab: x, y, dy and dx must have the same scalar type");
    static_assert(is_writable_storage_v<XprDx>,
                  "softmaxlab: dx must be writable storage (Matrix, Array, Map, Ref or a Block of "
                  "one), not an expression");
    constexpr bool reads_x = backward_reads_input<Derived>::value;
    constexpr int expressions = (reads_x && !has_direct_access_v<XprX> ? 1 : 0)
                                + (has_direct_access_v<XprY> ? 0 : 1)
                                + (has_direct_access_v<XprDy> ? 0 : 1);
    static_assert(expressions <= 1,
                  "softmaxlab: the allocation-free backward forms accept at most one expression "
                  "among x, y and dy (it is evaluated into dx); evaluate the others first, or "
                  "use the form that returns dx");
    const auto& x = x_in.derived();
    const auto& y = y_in.derived();
    const auto& dy = dy_in.derived();
    auto& dx = const_cast<Eigen::DenseBase<XprDx>&>(dx_const).derived();
    const char* name = Derived::name;
    if (!check_backward_shapes(name, mode, x, y, dy, dx))
      return;

    // Storage checks: dx may be exactly an input, never partially overlap one; an input
    // evaluated into dx must not share storage with the others.
    auto check_input = [&](const auto& in) {
      using In = std::decay_t<decltype(in)>;
      if constexpr (has_direct_access_v<In>) {
        if constexpr (expressions == 1) {
          if (storage_overlaps(in, dx))
            fail(name,
                 ": dx must not share storage with an input when another input is an "
                 "expression evaluated into dx");
        } else if (storage_partially_overlaps(in, dx)) {
          fail(name, ": dx partially overlaps an input (only exact in-place is allowed)");
        }
      }
    };
    if constexpr (reads_x)
      check_input(x);
    check_input(y);
    check_input(dy);

    // The one expression input, if any, lives in dx from here on.
    if constexpr (reads_x && !has_direct_access_v<XprX>) {
      evaluate_into(x, dx);
    } else if constexpr (!has_direct_access_v<XprY>) {
      evaluate_into(y, dx);
    } else if constexpr (!has_direct_access_v<XprDy>) {
      evaluate_into(dy, dx);
    }
    auto input_span = [&](const auto& in, Index i) -> Span<const Scalar> {
      using In = std::decay_t<decltype(in)>;
      if constexpr (has_direct_access_v<In>) {
        return slice_of<const Scalar>(in, i, mode);
      } else {
        const Span<Scalar> s = slice_of<Scalar>(dx, i, mode);
        return {s.data, s.size, s.stride};
      }
    };
    const Index count = mode == SliceMode::Vector ? 1
                        : mode == SliceMode::Rows ? x.rows()
                                                  : x.cols();
    for (Index i = 0; i < count; ++i) {
      Span<const Scalar> xs{nullptr, 0, 1};
      if constexpr (reads_x)
        xs = input_span(x, i);
      self().template compute_backward<Scalar>(xs, input_span(y, i), input_span(dy, i),
                                               slice_of<Scalar>(dx, i, mode), extra...);
    }
  }

 private:
  const Derived& self() const { return static_cast<const Derived&>(*this); }
};

// Strided 1-D array views of spans, for writing kernels with Eigen array expressions.
template <class Scalar>
using ConstStridedArray =
    Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>, 0, Eigen::InnerStride<>>;
template <class Scalar>
using StridedArray = Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>, 0, Eigen::InnerStride<>>;
template <class Scalar>
using ConstContiguousArray = Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>>;
template <class Scalar>
using ContiguousArray = Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>>;

template <class Scalar>
ConstStridedArray<Scalar> strided_array(const Span<const Scalar>& s) {
  return {s.data, s.size, Eigen::InnerStride<>(s.stride)};
}
template <class Scalar>
StridedArray<Scalar> strided_array(const Span<Scalar>& s) {
  return {s.data, s.size, Eigen::InnerStride<>(s.stride)};
}

template <class Scalar>
ConstContiguousArray<Scalar> as_contiguous_array(const Span<const Scalar>& s) {
  return {s.data, s.size};
}
template <class Scalar>
ContiguousArray<Scalar> as_contiguous_array(const Span<Scalar>& s) {
  return {s.data, s.size};
}

// Calls fn with Eigen array views of the spans: unit-stride maps (vectorized) when every span is
// contiguous, strided maps otherwise.
template <class Fn, class... Spans>
void with_arrays(Fn&& fn, const Spans&... spans) {
  if ((spans.contiguous() && ...)) {
    fn(as_contiguous_array(spans)...);
  } else {
    fn(strided_array(spans)...);
  }
}

}  // namespace detail
}  // namespace softmaxlab
