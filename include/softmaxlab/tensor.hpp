// softmaxlab: every distribution functor over any axis of an N-d Eigen tensor (PyTorch's dim=,
// ONNX's and oneDNN's axis).
//
//   #include <softmaxlab/tensor.hpp>   // not part of <softmaxlab/softmaxlab.hpp>: it pulls in
//                                      // Eigen's Tensor module (unsupported/Eigen/CXX11/Tensor)
//   sml::Softmax f;
//   Eigen::Tensor<float, 4> y = f(t, axis);        // t: Tensor, TensorMap or TensorRef, rank 1..8
//   f.apply(t, axis, y);                           // y: Tensor or TensorMap of t's shape
//   dx = f.backward(x, y, dy, axis);  f.backward(x, y, dy, axis, dx);
//   sml::along_axis(f, t, axis, extra...) / sml::apply_along_axis(f, t, axis, y, extra...)
//                                      // the same, with a functor's extra arguments: the
//                                      // generator of GumbelSoftmax (also g(t, axis, gen),
//                                      // g.apply(t, axis, y, gen))
//   sml::apply_masked_along_axis(f, t, mask, axis, y)   // f.apply_masked per slice: mask a rank-1
//   sml::masked_along_axis(f, t, mask, axis)            // tensor of the axis length (broadcast
//                                      // over the other axes) or a tensor of t's shape; mask
//                                      // scalars as f.apply_masked takes them (AttentionSoftmax:
//                                      // t's scalar, added; Softmax/LogSoftmax: bool, kept)
//   sml::logsumexp_along_axis(lse, t, axis[, out])      // reduces the axis: out has rank R - 1
//                                      // (t's dimensions without the axis, t's layout)
//
// Shapes: t of rank R in 1..8, ColMajor or RowMajor, scalar float, double, Eigen::half or
// Eigen::bfloat16 (the functor's own scalar rules: 16-bit and mixed pairs are computed in float or
// double and rounded once). axis in [-R, R): a negative axis counts from the last (PyTorch's
// convention), so -1 is the last dimension in either layout. Each 1-D slice along the axis (all
// other indices fixed) is one distribution, exactly as if it were given to f(x) alone: results,
// accuracy and special values are the functor's (see its header): the tests compare every axis
// with the rowwise result on a permuted copy. y may be t (in place) but must not otherwise overlap
// it; y must have t's layout, rank and dimensions.
//
// How the data reaches the kernels (no element-by-element gathers for Softmax and LogSoftmax):
//   - the contiguous axis (axis 0 of a ColMajor tensor, R-1 of a RowMajor one) is a batch of
//     contiguous rows: f.rowwise on a Map of the data, the row kernels, no copy;
//   - any other axis views the data as [outer][n][inner] (n the axis length, inner the product of
//     the faster dimensions). Softmax and LogSoftmax run softmax_lanes: tiles of up to 4 packets of
//     adjacent slices, one slice per SIMD lane, whose max, exp-sum and scale passes read the n rows
//     of the tile with contiguous packet loads (the same exp kernel, Kahan sums per lane and one
//     reciprocal, or log of the sum, per slice as the row kernels). A tile holding a slice with
//     a NaN or infinite max (LogSoftmax with T != 1: also a max >= 2^103 in float) gives each
//     of its slices to the functor's exact row path. Every other functor runs its rowwise on a
//     strided Map of each [n][inner] block (its strided row path, staged through stack buffers by
//     the kernels).
//
// Errors (std::invalid_argument): an axis outside [-R, R) ("axis must be in [-4, 4) for a tensor
// of rank 4, but got 5"); an output, dy, dx or mask whose dimensions differ; an output that
// partially overlaps the input; a TensorRef without storage (an expression) given as a mixed-type
// input, y, dy or a mask. An output that cannot be written (a const Tensor, a map of one, a
// TensorRef) does not compile. apply does not allocate (tests/test_tensor_axis.cpp checks it).
// Accuracy: the functor's stated bound, unchanged (checked per axis in tests/test_tensor_axis.cpp
// against the functor's rowwise on a permuted copy, and for Softmax against long double).
// Reference: torch.softmax(x, dim), ONNX Softmax-13 (axis), oneDNN softmax primitive (axis).
#pragma once

#include <array>
#include <limits>
#include <type_traits>
#include <utility>

#include <unsupported/Eigen/CXX11/Tensor>

#include "detail/backward_base.hpp"
#include "detail/checks.hpp"
#include "detail/functor_base.hpp"
#include "detail/kernels.hpp"
#include "logsumexp.hpp"
#include "softmax.hpp"

namespace softmaxlab {
namespace detail {

template <class T>
using tensor_scalar_t = std::remove_const_t<typename T::Scalar>;

template <class T>
inline constexpr int tensor_rank_v = static_cast<int>(T::NumIndices);

// A tensor's data viewed as [outer][n][inner]: the slices along the axis have n entries, stride
// inner; slice (o, i) starts at o n inner + i.
struct AxisGeometry {
  Index outer = 1, n = 1, inner = 1;
  Index size() const { return outer * n * inner; }
};

// The geometry of `axis` (negative: from the last) for a tensor of dimensions dims and layout;
// throws naming the axis and the rank.
template <int kLayout, class Dims>
AxisGeometry axis_geometry(const char* function, const Dims& dims, int rank, Index axis) {
  if (axis < -rank || axis >= rank) {
    fail(function, ": axis must be in [", -rank, ", ", rank, ") for a tensor of rank ", rank,
         ", but got ", axis);
  }
  const int a = static_cast<int>(axis < 0 ? axis + rank : axis);
  AxisGeometry g;
  g.n = dims[a];
  for (int d = 0; d < rank; ++d) {
    // ColMajor: the dimensions before the axis are the faster ones; RowMajor: those after it.
    const bool faster = kLayout == Eigen::ColMajor ? d < a : d > a;
    if (d != a)
      (faster ? g.inner : g.outer) *= dims[d];
  }
  return g;
}

template <class A, class B>
void require_same_dimensions(const char* function, const char* what, const A& a, const B& b) {
  static_assert(tensor_rank_v<A> == tensor_rank_v<B>,
                "softmaxlab: the tensors of an axis form must have one rank");
  static_assert(int(A::Layout) == int(B::Layout),
                "softmaxlab: the tensors of an axis form must have one layout (ColMajor or "
                "RowMajor)");
  for (int d = 0; d < tensor_rank_v<A>; ++d) {
    if (a.dimensions()[d] != b.dimensions()[d]) {
      std::ostringstream shape_a, shape_b;
      for (int k = 0; k < tensor_rank_v<A>; ++k) {
        shape_a << (k ? " x " : "") << a.dimensions()[k];
        shape_b << (k ? " x " : "") << b.dimensions()[k];
      }
      fail(function, ": ", what, " must have the input's dimensions ", shape_a.str(), ", but got ",
           shape_b.str());
    }
  }
}

// Refuses, at compile time, an output that cannot be written: a const Tensor, a TensorMap of a
// const Tensor, a TensorRef (whose data() is read-only).
template <class Out>
constexpr void static_check_tensor_output() {
  using Pointer = decltype(std::declval<std::remove_reference_t<Out>&>().data());
  static_assert(!std::is_const_v<std::remove_pointer_t<Pointer>>,
                "softmaxlab: the output of an axis form must be a writable Tensor or TensorMap "
                "(not const, not a TensorRef)");
}

// The storage of a tensor argument; a TensorRef of an expression has none (nullptr).
template <class T>
tensor_scalar_t<T>* tensor_storage(const T& t) {
  return const_cast<tensor_scalar_t<T>*>(t.data());
}

template <class T>
tensor_scalar_t<T>* require_storage(const char* function, const char* what, const T& t) {
  auto* p = tensor_storage(t);
  if (p == nullptr && t.size() != 0)
    fail(function, ": ", what, " must have storage (a Tensor, TensorMap, or a TensorRef of one)");
  return p;
}

// Maps of matrices and strided vectors over storage of Scalar (const Scalar: a read-only Map).
template <class Scalar, class Plain>
using MapOf = std::conditional_t<std::is_const_v<Scalar>, const Plain, Plain>;
template <class Scalar, int kOrder>
using MatrixMap = Eigen::Map<MapOf<
    Scalar, Eigen::Matrix<std::remove_const_t<Scalar>, Eigen::Dynamic, Eigen::Dynamic, kOrder>>>;
template <class Scalar>
using LineMap =
    Eigen::Map<MapOf<Scalar, Eigen::Matrix<std::remove_const_t<Scalar>, Eigen::Dynamic, 1>>, 0,
               Eigen::InnerStride<>>;

// Runs fn(rows) on the data of one tensor argument block by block, where rows is a matrix Map
// whose rows are the slices along the axis: the whole tensor as an [outer x n] row-major matrix
// when the axis is contiguous (inner == 1), else block o as an [inner x n] column-major matrix
// (rows of stride inner).
template <class Scalar, class Fn>
void for_each_axis_block(Scalar* data, const AxisGeometry& g, const Fn& fn) {
  if (g.inner == 1) {
    fn(MatrixMap<Scalar, Eigen::RowMajor>(data, g.outer, g.n), Index(0));
    return;
  }
  for (Index o = 0; o < g.outer; ++o)
    fn(MatrixMap<Scalar, Eigen::ColMajor>(data + o * g.n * g.inner, g.inner, g.n), o);
}

// Softmax (kLog: log-softmax) of the `inner` slices of one [n][inner] block side by side, one
// slice per SIMD lane: tiles of NP packets (the last lanes of a tile of width w < NP P are
// padding, never stored). The max pass is NaN-propagating; a tile with a NaN or infinite max in
// any lane (or, for the scaled log form, a max whose shift may overflow: see
// log_softmax_last_pass) leaves the vector path and gives each of its slices to line(i), the
// functor's exact path.
template <int NP, bool kLog, bool kScaled, class Scalar, class Line>
EIGEN_STRONG_INLINE void softmax_lane_tile(const Scalar* x, Scalar* y, Index n, Index inner,
                                           Index w, Scalar s, Index column, const Line& line) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = kPacketSize<Scalar>;
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const bool partial = w < NP * P;  // only for NP == 1
  Packet m[NP];
  for (int j = 0; j < NP; ++j)
    m[j] = pset1<Packet>(-inf);
  for (Index k = 0; k < n; ++k) {
    const Scalar* xk = x + k * inner;
    if (partial) {
      m[0] = pmax<Eigen::PropagateNaN>(m[0], load_partial<Packet>(xk, w, -inf));
    } else {
      for (int j = 0; j < NP; ++j)
        m[j] = pmax<Eigen::PropagateNaN>(m[j], ploadu<Packet>(xk + j * P));
      // The next tile's lines of this row, while the arithmetic of this one runs from cache.
      for (std::uintptr_t b = 0; b < NP * P * sizeof(Scalar); b += 64)
        prefetch_read(xk, NP * P * sizeof(Scalar) + b);
    }
  }
  alignas(64) Scalar lanes[NP * P];
  for (int j = 0; j < NP; ++j)
    pstore(lanes + j * P, m[j]);
  for (Index l = 0; l < w; ++l) {
    if (!(lanes[l] > -inf && lanes[l] < inf) || (kLog && kScaled && shift_may_overflow(lanes[l]))) {
      for (Index i = 0; i < w; ++i)
        line(column + i);
      return;
    }
  }
  const Packet ps = pset1<Packet>(s);
  CompensatedSum<Scalar> sum[NP];
  for (Index k = 0; k < n; ++k) {
    const Scalar* xk = x + k * inner;
    Scalar* yk = y + k * inner;
    if (partial) {
      const Packet e =
          pexp_nonpositive_scaled(shifted<kScaled>(load_partial<Packet>(xk, w, -inf), m[0], ps));
      if constexpr (!kLog)
        store_partial(yk, w, e);
      sum[0].add(e);
    } else {
      for (int j = 0; j < NP; ++j) {
        const Packet e =
            pexp_nonpositive_scaled(shifted<kScaled>(ploadu<Packet>(xk + j * P), m[j], ps));
        if constexpr (!kLog)
          pstoreu(yk + j * P, e);
        sum[j].add(e);
      }
    }
  }
  // Per slice, from the lane's compensated total (sum - carry) in Wide: one reciprocal, as
  // inverse_total does for a row, or (kLog) log(total 2^-64) in long double, as LogSoftmax does.
  using Wide = typename CompensatedSum<Scalar>::Wide;
  Packet factor[NP];
  for (int j = 0; j < NP; ++j) {
    alignas(64) Scalar total[P], carry[P];
    pstore(total, sum[j].sum);
    pstore(carry, sum[j].carry);
    for (int l = 0; l < P; ++l) {
      const Wide t = Wide(total[l]) - Wide(carry[l]);
      total[l] = kLog ? static_cast<Scalar>(
                     std::log(std::ldexp(static_cast<long double>(t), -kExpScaleLog2<Scalar>)))
                      : static_cast<Scalar>(Wide(1) / t);
    }
    factor[j] = pload<Packet>(total);
  }
  if constexpr (kLog) {
    // y = (x - m) s - log(sum), from x again (in cache: the exp pass just read it).
    for (Index k = 0; k < n; ++k) {
      const Scalar* xk = x + k * inner;
      Scalar* yk = y + k * inner;
      if (partial) {
        store_partial(
            yk, w,
            psub(shifted<kScaled>(load_partial<Packet>(xk, w, Scalar(0)), m[0], ps), factor[0]));
      } else {
        for (int j = 0; j < NP; ++j)
          pstoreu(yk + j * P,
                  psub(shifted<kScaled>(ploadu<Packet>(xk + j * P), m[j], ps), factor[j]));
      }
    }
    return;
  }
  const Packet* inverse = factor;
  for (Index k = 0; k < n; ++k) {
    Scalar* yk = y + k * inner;
    if (partial) {
      store_partial(yk, w, pmul(load_partial<Packet>(yk, w, Scalar(0)), inverse[0]));
    } else {
      for (int j = 0; j < NP; ++j)
        pstoreu(yk + j * P, pmul(ploadu<Packet>(yk + j * P), inverse[j]));
    }
  }
}

// Softmax (kLog: log-softmax) over the middle axis of [n][inner] blocks (inner > 1): tiles of 4
// packets, then single packets, then one partial packet. y may be x (each tile reads its slices
// before it writes them).
template <bool kLog, bool kScaled, class Scalar, class Line>
void softmax_lanes(const Scalar* x, Scalar* y, Index n, Index inner, Scalar s, const Line& line) {
  constexpr int P = kPacketSize<Scalar>;
  Index c = 0;
  for (; c + 4 * P <= inner; c += 4 * P)
    softmax_lane_tile<4, kLog, kScaled>(x + c, y + c, n, inner, 4 * P, s, c, line);
  for (; c + P <= inner; c += P)
    softmax_lane_tile<1, kLog, kScaled>(x + c, y + c, n, inner, P, s, c, line);
  if (c < inner)
    softmax_lane_tile<1, kLog, kScaled>(x + c, y + c, n, inner, inner - c, s, c, line);
}

// Whether [a, a + n) and [b, b + n) overlap other than being the same storage.
template <class Scalar>
bool tensors_partially_overlap(const Scalar* a, const Scalar* b, Index n) {
  if (n == 0 || a == b)
    return false;
  return !(std::less<const Scalar*>()(a + (n - 1), b)
           || std::less<const Scalar*>()(b + (n - 1), a));
}

// The axis forms' implementation for any functor f: apply, backward, masked.
template <class F, class TX, class TY, class... Extra>
void apply_along_axis_impl(const F& f, const TX& x, Index axis, const TY& y_out, Extra&... extra) {
  using In = tensor_scalar_t<TX>;
  using Out = tensor_scalar_t<TY>;
  static_assert(tensor_rank_v<TX> >= 1 && tensor_rank_v<TX> <= 8,
                "softmaxlab: the axis forms take tensors of rank 1 to 8");
  const char* name = F::name;
  require_same_dimensions(name, "the output", x, y_out);
  const AxisGeometry g =
      axis_geometry<int(TX::Layout)>(name, x.dimensions(), tensor_rank_v<TX>, axis);
  if (g.size() == 0)
    return;
  Out* y = require_storage(name, "the output", y_out);
  const In* xp = tensor_storage(x);
  if constexpr (std::is_same_v<In, Out>) {
    if (xp == nullptr) {
      // A TensorRef of an expression: evaluated into y, then computed there in place.
      Eigen::TensorMap<Eigen::Tensor<Out, tensor_rank_v<TX>, int(TX::Layout), Index>> ym(
          y, x.dimensions());
      ym = x;
      xp = y;
    } else if (tensors_partially_overlap(xp, static_cast<const In*>(y), g.size())) {
      fail(name, ": output partially overlaps the input (only exact in-place is allowed)");
    }
  } else {
    xp = require_storage(name, "a mixed-type input", x);
  }
  // Softmax and LogSoftmax of float or double: the lane kernel for the outer axes.
  constexpr bool kLog = std::is_same_v<F, LogSoftmax>;
  constexpr bool kLanes =
      (std::is_same_v<F, Softmax> || kLog)
      && std::is_same_v<In, Out> && (std::is_same_v<In, float> || std::is_same_v<In, double>);
  if constexpr (kLanes) {
    if (g.inner > 1) {
      const In s = static_cast<In>(1.0 / f.temperature());
      for (Index o = 0; o < g.outer; ++o) {
        const In* xo = xp + o * g.n * g.inner;
        Out* yo = y + o * g.n * g.inner;
        const auto line = [&](Index i) {
          f.apply(LineMap<const In>(xo + i, g.n, Eigen::InnerStride<>(g.inner)),
                  LineMap<Out>(yo + i, g.n, Eigen::InnerStride<>(g.inner)));
        };
        if (f.temperature() != 1.0) {
          softmax_lanes<kLog, true>(xo, yo, g.n, g.inner, s, line);
        } else {
          softmax_lanes<kLog, false>(xo, yo, g.n, g.inner, s, line);
        }
      }
      return;
    }
  }
  for_each_axis_block(const_cast<In*>(xp), g, [&](const auto& xm, Index o) {
    using Map = std::decay_t<decltype(xm)>;
    constexpr int kOrder =
        (int(Map::Flags) & Eigen::RowMajorBit) ? Eigen::RowMajor : Eigen::ColMajor;
    MatrixMap<Out, kOrder> ym(y + o * g.n * g.inner, xm.rows(), xm.cols());
    f.rowwise(xm, ym, extra...);
  });
}

template <class F, class TX, class... Extra>
auto along_axis_impl(const F& f, const TX& x, Index axis, Extra&... extra) {
  Eigen::Tensor<tensor_scalar_t<TX>, tensor_rank_v<TX>, int(TX::Layout), Index> y(x.dimensions());
  apply_along_axis_impl(f, x, axis, y, extra...);
  return y;
}

template <class F, class TX, class TY, class TDy, class TDx>
void backward_along_axis_impl(const F& f, const TX& x, const TY& y, const TDy& dy, Index axis,
                              const TDx& dx_out) {
  const char* name = F::name;
  require_same_dimensions(name, "y", x, y);
  require_same_dimensions(name, "dy", x, dy);
  require_same_dimensions(name, "dx", x, dx_out);
  const AxisGeometry g =
      axis_geometry<int(TX::Layout)>(name, x.dimensions(), tensor_rank_v<TX>, axis);
  if (g.size() == 0)
    return;
  auto* yp = require_storage(name, "y", y);
  auto* dyp = require_storage(name, "dy", dy);
  auto* dxp = require_storage(name, "dx", dx_out);
  // x is only shape-checked by functors whose gradient does not read it: any storage of its
  // scalar type stands in for a TensorRef without one.
  auto* xp = tensor_storage(x);
  if constexpr (!backward_reads_input<F>::value) {
    if (xp == nullptr) {
      if constexpr (std::is_same_v<tensor_scalar_t<TX>, tensor_scalar_t<TY>>)
        xp = yp;
    }
  }
  if (xp == nullptr)
    fail(name, ": x must have storage (a Tensor, TensorMap, or a TensorRef of one)");
  for_each_axis_block(xp, g, [&](const auto& xm, Index o) {
    using Map = std::decay_t<decltype(xm)>;
    constexpr int kOrder =
        (int(Map::Flags) & Eigen::RowMajorBit) ? Eigen::RowMajor : Eigen::ColMajor;
    const Index offset = o * g.n * g.inner;
    const Index rows = xm.rows(), cols = xm.cols();
    using SY = std::remove_pointer_t<decltype(yp)>;
    using SDy = std::remove_pointer_t<decltype(dyp)>;
    using SDx = std::remove_pointer_t<decltype(dxp)>;
    f.rowwise_backward(xm, MatrixMap<const SY, kOrder>(yp + offset, rows, cols),
                       MatrixMap<const SDy, kOrder>(dyp + offset, rows, cols),
                       MatrixMap<SDx, kOrder>(dxp + offset, rows, cols));
  });
}

template <class F, class TX, class TY, class TDy>
auto backward_along_axis_impl(const F& f, const TX& x, const TY& y, const TDy& dy, Index axis) {
  Eigen::Tensor<tensor_scalar_t<TX>, tensor_rank_v<TX>, int(TX::Layout), Index> dx(x.dimensions());
  backward_along_axis_impl(f, x, y, dy, axis, dx);
  return dx;
}

template <class T, class>
struct TensorAxisForms {
  template <class F, class... Extra>
  static auto along(const F& f, const T& t, Index axis, Extra&... extra) {
    return along_axis_impl(f, t, axis, extra...);
  }
  template <class F, class Out, class... Extra>
  static void apply(const F& f, const T& t, Index axis, Out&& y, Extra&... extra) {
    static_check_tensor_output<Out>();
    apply_along_axis_impl(f, t, axis, y, extra...);
  }
  template <class F, class TY, class TDy>
  static auto backward(const F& f, const T& x, const TY& y, const TDy& dy, Index axis) {
    return backward_along_axis_impl(f, x, y, dy, axis);
  }
  template <class F, class TY, class TDy, class Out>
  static void apply_backward(const F& f, const T& x, const TY& y, const TDy& dy, Index axis,
                             Out&& dx) {
    static_check_tensor_output<Out>();
    backward_along_axis_impl(f, x, y, dy, axis, dx);
  }
};

}  // namespace detail

// f over every 1-D slice along `axis` of t (see the header's doc block); extra: the functor's
// per-call arguments (GumbelSoftmax's generator, which draws the slices in the order (o, i) of
// the [outer][n][inner] view, i fastest). Returns a Tensor of t's shape, layout and scalar.
template <class F, class T, class... Extra, detail::if_tensor_t<T> = 0>
auto along_axis(const F& f, const T& t, Index axis, Extra&... extra) {
  return detail::along_axis_impl(f, t, axis, extra...);
}

// The same into y (a Tensor or TensorMap of t's shape; y may be t); allocation-free.
template <class F, class T, class Out, class... Extra, detail::if_tensor_t<T> = 0>
void apply_along_axis(const F& f, const T& t, Index axis, Out&& y, Extra&... extra) {
  detail::static_check_tensor_output<Out>();
  detail::apply_along_axis_impl(f, t, axis, y, extra...);
}

// The backward (vector-Jacobian product) of f along `axis`: x, y = f(x), dy of one shape.
template <class F, class T, class TY, class TDy, detail::if_tensor_t<T> = 0>
auto backward_along_axis(const F& f, const T& x, const TY& y, const TDy& dy, Index axis) {
  return detail::backward_along_axis_impl(f, x, y, dy, axis);
}
// The backward of f along axis of the tensor x into dx (x's shape): see the header's doc block.
template <class F, class T, class TY, class TDy, class Out, detail::if_tensor_t<T> = 0>
void backward_along_axis(const F& f, const T& x, const TY& y, const TDy& dy, Index axis, Out&& dx) {
  detail::static_check_tensor_output<Out>();
  detail::backward_along_axis_impl(f, x, y, dy, axis, dx);
}

// f.apply_masked(slice, mask slice, y slice) for every slice along `axis`: mask is a rank-1
// tensor of the axis length (the same mask for every slice) or a tensor of t's shape and layout.
// Allocation-free when f.apply_masked is.
template <class F, class T, class TM, class Out, detail::if_tensor_t<T> = 0>
void apply_masked_along_axis(const F& f, const T& t, const TM& mask, Index axis, Out&& y_out) {
  detail::static_check_tensor_output<Out>();
  using In = detail::tensor_scalar_t<T>;
  using M = detail::tensor_scalar_t<TM>;
  using O = detail::tensor_scalar_t<std::decay_t<Out>>;
  const char* name = F::name;
  detail::require_same_dimensions(name, "the output", t, y_out);
  const detail::AxisGeometry g =
      detail::axis_geometry<int(T::Layout)>(name, t.dimensions(), detail::tensor_rank_v<T>, axis);
  bool full = false;
  if constexpr (detail::tensor_rank_v<TM> == detail::tensor_rank_v<T>) {
    detail::require_same_dimensions(name, "the mask", t, mask);
    full = true;
  }
  if (!full && !(detail::tensor_rank_v<TM> == 1 && mask.size() == g.n)) {
    detail::fail(name, ": the mask must be a rank-1 tensor of the axis length ", g.n,
                 " or have the input's dimensions, but got rank ", detail::tensor_rank_v<TM>,
                 " with ", mask.size(), " entries");
  }
  if (g.size() == 0)
    return;
  const In* xp = detail::require_storage(name, "the input", t);
  const M* mp = detail::require_storage(name, "the mask", mask);
  O* yp = detail::require_storage(name, "the output", y_out);
  if constexpr (std::is_same_v<In, O>) {
    if (detail::tensors_partially_overlap(xp, static_cast<const In*>(yp), g.size()))
      detail::fail(name, ": output partially overlaps the input (only exact in-place is allowed)");
  }
  const Eigen::InnerStride<> stride(g.inner);
  for (Index o = 0; o < g.outer; ++o) {
    for (Index i = 0; i < g.inner; ++i) {
      const Index start = o * g.n * g.inner + i;
      f.apply_masked(detail::LineMap<const In>(xp + start, g.n, stride),
                     full ? detail::LineMap<const M>(mp + start, g.n, stride)
                          : detail::LineMap<const M>(mp, g.n, Eigen::InnerStride<>(1)),
                     detail::LineMap<O>(yp + start, g.n, stride));
    }
  }
}
// f with a mask of t's shape along axis of the tensor t: see the header's doc block.
template <class F, class T, class TM, detail::if_tensor_t<T> = 0>
auto masked_along_axis(const F& f, const T& t, const TM& mask, Index axis) {
  Eigen::Tensor<detail::tensor_scalar_t<T>, detail::tensor_rank_v<T>, int(T::Layout), Index> y(
      t.dimensions());
  apply_masked_along_axis(f, t, mask, axis, y);
  return y;
}

// LogSumExp over `axis`, reducing it: out has t's dimensions without the axis (rank R - 1; a
// rank-0 tensor for a rank-1 t), t's layout; float or double. Allocation-free.
template <class T, class Out, detail::if_tensor_t<T> = 0>
void logsumexp_along_axis(const LogSumExp& lse, const T& t, Index axis, Out&& out) {
  detail::static_check_tensor_output<Out>();
  using S = detail::tensor_scalar_t<T>;
  using O = detail::tensor_scalar_t<std::decay_t<Out>>;
  constexpr int R = detail::tensor_rank_v<T>;
  static_assert(detail::tensor_rank_v<std::decay_t<Out>> == R - 1,
                "softmaxlab: logsumexp_along_axis's output has rank R - 1 (the axis removed)");
  static_assert(std::is_same_v<S, O>, "softmaxlab: the output must have the input's scalar");
  const char* name = LogSumExp::name;
  const detail::AxisGeometry g =
      detail::axis_geometry<int(T::Layout)>(name, t.dimensions(), R, axis);
  const int a = static_cast<int>(axis < 0 ? axis + R : axis);
  for (int k = 0; k < R - 1; ++k) {
    const int d = k < a ? k : k + 1;  // the input dimension of output dimension k
    if (out.dimensions()[k] != t.dimensions()[d]) {
      detail::fail(name, ": the output must have the input's dimensions without axis ", a,
                   "; dimension ", k, " is ", out.dimensions()[k], ", expected ",
                   t.dimensions()[d]);
    }
  }
  if (g.outer * g.inner == 0)
    return;
  O* op = detail::require_storage(name, "the output", out);
  const S* xp = detail::require_storage(name, "the input", t);
  // Output entry (o, i) is at o inner + i in either layout.
  detail::for_each_axis_block(const_cast<S*>(xp), g, [&](const auto& xm, Index o) {
    Eigen::Map<Eigen::Matrix<O, Eigen::Dynamic, 1>> r(op + o * g.inner, xm.rows());
    lse.rowwise(xm, r);
  });
}
// The log-sum-exp of each slice along axis of the tensor t (t's shape without that axis).
template <class T, detail::if_tensor_t<T> = 0>
auto logsumexp_along_axis(const LogSumExp& lse, const T& t, Index axis) {
  constexpr int R = detail::tensor_rank_v<T>;
  const detail::AxisGeometry g =
      detail::axis_geometry<int(T::Layout)>(LogSumExp::name, t.dimensions(), R, axis);
  EIGEN_UNUSED_VARIABLE(g);
  const int a = static_cast<int>(axis < 0 ? axis + R : axis);
  Eigen::array<Index, R - 1> dims;
  for (int k = 0; k < R - 1; ++k)
    dims[k] = t.dimensions()[k < a ? k : k + 1];
  Eigen::Tensor<detail::tensor_scalar_t<T>, R - 1, int(T::Layout), Index> out(dims);
  logsumexp_along_axis(lse, t, axis, out);
  return out;
}

}  // namespace softmaxlab
