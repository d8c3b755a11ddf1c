// The SurfaceFusion targets (fuzz_hard_fusion, fuzz_soft_fusion): HardFusion or SoftFusion with an
// arbitrary lambda / tau, shapes, forms (vector, rowwise, colwise, in place, expression input) and
// float/double bit patterns for tgt, src and dy. Invalid parameters must throw
// std::invalid_argument (and nothing else). fusion.hpp's contract, per row:
//   Hard: y = lambda log_softmax(tgt) + (1 - lambda) log_softmax(src), a weight of exactly 0
//   dropping
//     its term: NaN in a weighted input -> all NaN; a -inf entry of a weighted input -> -inf;
//     otherwise y within 4 eps (1 + |terms|) of that sum of LogSoftmax rows, y <= 0, and
//     sum exp(y) <= 1 (= 1 when lambda is 0 or 1);
//   Soft: y = log_softmax(tgt + log_softmax(tau src)) follows check_row's log rules on the row
//     z = tgt + LogSoftmax(1/tau)(src) (normalized), where a -inf entry of either input masks that
//     entry (-inf), also against a +inf entry of the other;
//   backward: shapes; a masked input entry (-inf) gets gradient exactly 0; with finite inputs and
//     bounded dy the gradients are finite and dtgt sums to ~0 over the row.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include <softmaxlab/fusion.hpp>

#include "fuzz_common.hpp"

namespace softmaxlab_fuzz {

// log_softmax(scale v) in long double where the row max is finite and no entry is NaN: the
// library scales a shifted difference that overflows before forming it, so every value that fits
// is finite. Elsewhere (NaN, all -inf, +inf) LogSoftmax's rules.
template <class Vec>
std::vector<long double> exact_log_softmax(const Vec& v, double scale) {
  const Vec fallback = softmaxlab::LogSoftmax(1.0 / scale)(v);
  const Index n = v.size();
  std::vector<long double> out(static_cast<std::size_t>(n));
  long double m = -INFINITY;
  bool nan = false;
  for (Index i = 0; i < n; ++i) {
    nan |= std::isnan(v(i));
    m = std::max<long double>(m, v(i));
  }
  long double sum = 0;
  if (!nan && std::isfinite(m)) {
    for (Index i = 0; i < n; ++i)
      sum += std::exp((static_cast<long double>(v(i)) - m) * scale);
  }
  for (Index i = 0; i < n; ++i) {
    out[static_cast<std::size_t>(i)] =
        !nan && std::isfinite(m) && std::isfinite(v(i))
            ? (static_cast<long double>(v(i)) - m) * scale - std::log(sum)
            : static_cast<long double>(fallback(i));
  }
  return out;
}

// The factor on src inside the fusion (SoftFusion's tau; 1 for HardFusion).
inline double src_scale(const softmaxlab::HardFusion&) {
  return 1.0;
}
inline double src_scale(const softmaxlab::SoftFusion& f) {
  return f.tau();
}

template <class Vec>
void check_fusion_row(const softmaxlab::HardFusion& f, const Vec& t, const Vec& s, const Vec& y) {
  using Scalar = typename Vec::Scalar;
  const double eps = std::numeric_limits<Scalar>::epsilon();
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const Index n = t.size();
  const double lt = static_cast<Scalar>(f.lambda()), ls = static_cast<Scalar>(1.0 - f.lambda());
  const bool use_t = lt != 0, use_s = ls != 0;
  bool nan = false;
  for (Index i = 0; i < n; ++i)
    nan |= (use_t && std::isnan(t(i))) || (use_s && std::isnan(s(i)));
  if (nan) {
    for (Index i = 0; i < n; ++i)
      expect(std::isnan(y(i)), "NaN in a weighted input makes the row NaN", i, y(i));
    return;
  }
  const auto rt = exact_log_softmax(t, 1.0), rs = exact_log_softmax(s, 1.0);
  long double mass = 0;
  for (Index i = 0; i < n; ++i) {
    const auto k = static_cast<std::size_t>(i);
    const long double a_exact = use_t ? lt * rt[k] : 0.0L, b_exact = use_s ? ls * rs[k] : 0.0L;
    const double a = static_cast<double>(a_exact), b = static_cast<double>(b_exact);
    const long double exact = a_exact + b_exact;
    if ((use_t && t(i) == -inf) || (use_s && s(i) == -inf))
      expect(y(i) == -inf, "a -inf entry of a weighted input masks the output", i, y(i));
    if (std::isinf(exact)) {
      expect(y(i) == static_cast<double>(exact), "infinite entries as in LogSoftmax", i, y(i));
      continue;
    }
    const long double bound = 12 * eps * (1 + std::fabs(a) + std::fabs(b));
    if (std::isinf(y(i))) {  // only a value at the edge of the range or beyond may round to -inf
      expect(y(i) < 0 && -exact >= std::numeric_limits<Scalar>::max() - bound,
             "only values beyond the range are infinite", i, y(i));
      continue;
    }
    expect(std::fabs(y(i) - exact) <= bound,
           "y = lambda log_softmax(tgt) + (1 - lambda) log_softmax(src)", i, y(i));
    expect(y(i) <= 4 * eps, "y <= 0", i, y(i));
    mass += std::exp(static_cast<long double>(y(i)));
  }
  const double tol = std::is_same_v<Scalar, float> ? 2e-6 : 1e-12;
  bool regular = true;  // the weighted rows have finite mass (not all masked)
  bool all_masked_t = true, all_masked_s = true;
  for (Index i = 0; i < n; ++i) {
    all_masked_t &= t(i) == -inf;
    all_masked_s &= s(i) == -inf;
  }
  regular = n > 0 && !(use_t && all_masked_t) && !(use_s && all_masked_s);
  expect(static_cast<double>(mass) <= 1 + tol, "exp(y) sums to at most 1", -1,
         static_cast<double>(mass));
  if (regular && (!use_t || !use_s))
    expect(std::fabs(static_cast<double>(mass) - 1) <= tol, "one weight of 0: normalized", -1,
           static_cast<double>(mass));
}

template <class Vec>
void check_fusion_row(const softmaxlab::SoftFusion& f, const Vec& t, const Vec& s, const Vec& y) {
  using Scalar = typename Vec::Scalar;
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const Vec ls = softmaxlab::LogSoftmax(1.0 / f.tau())(s);
  const auto ls_exact = exact_log_softmax(s, f.tau());
  Vec z = t + ls;
  bool nan = false, overflow = false;
  for (Index i = 0; i < t.size(); ++i)
    nan |= std::isnan(t(i)) || std::isnan(s(i));
  for (Index i = 0; i < t.size() && !nan; ++i) {
    const long double lse = ls_exact[static_cast<std::size_t>(i)];
    // Masked: src gives probability 0 in exact arithmetic (-inf, or beside a +inf), whatever tgt
    // holds; not where log_softmax(tau src) merely leaves the scalar's range.
    const bool masked = t(i) == -inf || s(i) == -inf || lse == -INFINITY;
    // A log-probability of src, or tgt + log_softmax(tau src), beyond the scalar's range: the
    // library takes its exact form, and the exact long double row is the reference.
    overflow |= !masked && std::isfinite(lse)
                && (ls(i) == -inf || (std::isfinite(static_cast<double>(t(i))) && z(i) == -inf));
    if (masked)
      z(i) = -inf;
  }
  if (!overflow || nan) {  // (+inf entries take the mass by check_row's rules)
    check_row(z, y, Rules(Output::LogProbabilities));
    return;
  }
  // Rows where a difference or tgt + log_softmax(tau src) overflows take fusion.hpp's exact
  // form: with a regular src (finite max) y = log_softmax(tgt + tau (src - max src)), every value
  // checked against long double (within the roundings of each input's magnitude; a value beyond
  // the range, or at its edge, may be -inf); otherwise (src with +inf) the halved path, checked
  // for normalization and no NaN here and against long double on chosen cases by
  // tests/test_replayed_faults.cpp.
  const double eps = std::numeric_limits<Scalar>::epsilon();
  long double ms = -INFINITY;
  for (Index i = 0; i < s.size(); ++i)
    ms = std::max<long double>(ms, s(i));
  if (std::isfinite(ms)) {
    const long double tau = static_cast<Scalar>(f.tau());
    std::vector<long double> z(static_cast<std::size_t>(t.size()));
    long double mz = -INFINITY;
    for (Index i = 0; i < t.size(); ++i) {
      const auto k = static_cast<std::size_t>(i);
      z[k] = s(i) == -inf || t(i) == -inf ? -INFINITY : t(i) + tau * (s(i) - ms);
      mz = std::max(mz, z[k]);
    }
    if (std::isfinite(mz)) {
      // Each z_j is rounded relative to its operands, d_j = |t_j| + tau (|s_j| + |max s|) + |z_j|
      // (the inputs may cancel: t = DBL_MAX, s = -DBL_MAX), and the normalizer carries the
      // roundings of the largest terms into every entry: y_i within 8 eps (1 + d_i + max_j d_j).
      long double sum = 0, d_max = 0;
      std::vector<long double> d(z.size(), 0.0L);
      for (Index i = 0; i < t.size(); ++i) {
        const auto k = static_cast<std::size_t>(i);
        if (z[k] == -INFINITY)
          continue;
        sum += std::exp(z[k] - mz);
        d[k] = std::fabs(t(i)) + tau * (std::fabs(s(i)) + std::fabs(ms)) + std::fabs(z[k]);
        d_max = std::max(d_max, d[k]);
      }
      for (Index i = 0; i < t.size(); ++i) {
        const auto k = static_cast<std::size_t>(i);
        const long double exact = z[k] - mz - std::log(sum);
        if (z[k] == -INFINITY) {
          expect(y(i) == -inf, "SoftFusion: a masked entry is -inf", i, y(i));
          continue;
        }
        const long double bound = 8 * eps * (1 + d[k] + d_max);
        if (std::isinf(y(i))) {
          expect(y(i) < 0 && -exact >= std::numeric_limits<Scalar>::max() - bound,
                 "SoftFusion: only values beyond the range are infinite", i, y(i));
          continue;
        }
        expect(std::fabs(y(i) - exact) <= bound,
               "SoftFusion: y = log_softmax(tgt + tau (src - max src))", i, y(i));
      }
    }
  }
  long double mass = 0;
  for (Index i = 0; i < t.size(); ++i) {
    expect(!std::isnan(y(i)), "SoftFusion: an overflowing row has no NaN", i, y(i));
    expect(y(i) <= 4 * eps, "SoftFusion: y <= 0", i, y(i));
    mass += std::exp(static_cast<long double>(y(i)));
  }
  const double tol = std::is_same_v<Scalar, float> ? 2e-6 : 1e-12;
  expect(std::fabs(static_cast<double>(mass) - 1) <= tol + 8 * (t.size() + 4) * eps,
         "SoftFusion: an overflowing row is normalized", -1, static_cast<double>(mass));
}

// A bounded upstream gradient, or (rarely) raw bits.
template <class Scalar>
Scalar upstream(Bytes& bytes, bool raw) {
  return raw ? bytes.scalar<Scalar>() : static_cast<Scalar>(bytes.take<std::int8_t>()) / Scalar(8);
}

template <class F, class Vec>
void check_backward_row(const F& f, const Vec& t, const Vec& s, const Vec& dy, const Vec& dt,
                        const Vec& ds, bool bounded) {
  using Scalar = typename Vec::Scalar;
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const double eps = std::numeric_limits<Scalar>::epsilon();
  const Index n = t.size();
  bool finite = bounded && n > 0, nan = false;
  for (Index i = 0; i < n; ++i)
    nan |= std::isnan(t(i)) || std::isnan(s(i));
  for (Index i = 0; i < n && !nan; ++i) {  // (a NaN row's gradient may be NaN throughout)
    expect(t(i) != -inf || dt(i) == 0, "a masked tgt entry gets gradient 0", i, dt(i));
    expect(s(i) != -inf || ds(i) == 0, "a masked src entry gets gradient 0", i, ds(i));
    finite &= std::isfinite(t(i)) && std::isfinite(s(i));
  }
  if (!finite || nan)
    return;
  double sum = 0, scale = 0;
  for (Index i = 0; i < n; ++i) {
    expect(std::isfinite(dt(i)) && std::isfinite(ds(i)), "finite inputs: finite gradients", i,
           dt(i));
    sum += dt(i);
    scale += std::fabs(dy(i));
  }
  // sum dtgt = sum dy' (1 - sum p): the policy's tolerance on sum p, plus the roundings.
  const double tol = (std::is_same_v<Scalar, float> ? 2e-6 : 1e-12) + 8 * (n + 4) * eps;
  expect(std::fabs(sum) <= tol * scale * (1 + src_scale(f)) + 1e-300, "dtgt sums to 0", -1, sum);
}

template <class F, class Scalar>
void exercise_fusion(const F& f, Bytes& bytes) {
  using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using RowMajor = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  const std::uint8_t form = bytes.take<std::uint8_t>();
  const Index rows = bytes.take<std::uint8_t>() % 4;
  const Index cols = bytes.take<std::uint16_t>() % 300;
  Mat t(rows, cols), s(rows, cols), dy(rows, cols);
  fill(bytes, t);
  fill(bytes, s);
  const bool raw_dy = (form & 0x80) != 0;
  for (Index j = 0; j < cols; ++j)
    for (Index i = 0; i < rows; ++i)
      dy(i, j) = upstream<Scalar>(bytes, raw_dy);
  if (t.size() == 0) {  // empty in, empty out (no row blocks of an empty matrix)
    expect(f.rowwise(t, s).size() == 0, "empty output");
    return;
  }
  const bool bounded = !raw_dy && src_scale(f) <= 1e6;
  auto row = [](const auto& m, Index i) {
    return Vec(m.row(i).transpose());
  };
  switch (form % 5) {
    case 0: {  // rowwise, and the rowwise backward into given matrices
      const Mat y = f.rowwise(t, s);
      Mat dt(rows, cols), ds(rows, cols);
      f.rowwise_backward(t, s, y, dy, dt, ds);
      for (Index i = 0; i < rows; ++i) {
        check_fusion_row(f, row(t, i), row(s, i), row(y, i));
        check_backward_row(f, row(t, i), row(s, i), row(dy, i), row(dt, i), row(ds, i), bounded);
      }
      break;
    }
    case 1: {  // colwise on row-major (strided columns), backward returning the gradients
      const RowMajor tr = t.transpose(), sr = s.transpose(), dyr = dy.transpose();
      const RowMajor y = f.colwise(tr, sr);
      const auto g = f.colwise_backward(tr, sr, y, dyr);
      for (Index i = 0; i < rows; ++i) {
        check_fusion_row(f, Vec(tr.col(i)), Vec(sr.col(i)), Vec(y.col(i)));
        check_backward_row(f, Vec(tr.col(i)), Vec(sr.col(i)), Vec(dyr.col(i)), Vec(g.first.col(i)),
                           Vec(g.second.col(i)), bounded);
      }
      break;
    }
    case 2: {  // each row as a vector, in place into tgt (and into src), same results
      for (Index i = 0; i < rows; ++i) {
        const Vec tv = row(t, i), sv = row(s, i);
        const Vec y = f(tv, sv);
        check_fusion_row(f, tv, sv, y);
        Vec a = tv, b = sv;
        f.apply(a, sv, a);
        f.apply(tv, b, b);
        for (Index j = 0; j < cols; ++j) {
          expect(a(j) == y(j) || (std::isnan(a(j)) && std::isnan(y(j))), "in place (tgt)", j, a(j));
          expect(b(j) == y(j) || (std::isnan(b(j)) && std::isnan(y(j))), "in place (src)", j, b(j));
        }
        const auto g = f.backward(tv, sv, y, row(dy, i));
        check_backward_row(f, tv, sv, row(dy, i), g.first, g.second, bounded);
      }
      break;
    }
    case 3: {  // an expression input evaluated into y (strided rows), same as the plain form
      const Mat y = f.rowwise(t, s);
      Mat y2(rows, cols);
      for (Index i = 0; i < rows; ++i) {
        f.apply(t.row(i) * Scalar(1), s.row(i), y2.row(i));
        for (Index j = 0; j < cols; ++j)
          expect(y2(i, j) == y(i, j) || (std::isnan(y2(i, j)) && std::isnan(y(i, j))),
                 "expression input", j, y2(i, j));
      }
      break;
    }
    default: {  // the whole matrix as one long row
      const Vec tv = Eigen::Map<const Vec>(t.data(), t.size());
      const Vec sv = Eigen::Map<const Vec>(s.data(), s.size());
      const Vec dv = Eigen::Map<const Vec>(dy.data(), dy.size());
      const Vec y = f(tv, sv);
      check_fusion_row(f, tv, sv, y);
      Vec dt(tv.size()), ds(tv.size());
      f.backward(tv, sv, y, dv, dt, ds);
      check_backward_row(f, tv, sv, dv, dt, ds, bounded);
      break;
    }
  }
  // Mismatched shapes throw std::invalid_argument.
  const Mat wrong(rows, cols + 1);
  expect(!construct([&] { (void)f.rowwise(t, wrong); }), "src of another shape throws");
}

template <class F>
int run_fusion_target(const std::uint8_t* data, std::size_t size, double usual_parameter) {
  Bytes bytes(data, size);
  const double parameter = bytes.parameter(usual_parameter);
  std::optional<F> f;
  if (!construct([&] { f.emplace(parameter); }))
    return 0;
  if (bytes.take<std::uint8_t>() & 1) {
    exercise_fusion<F, double>(*f, bytes);
  } else {
    exercise_fusion<F, float>(*f, bytes);
  }
  return 0;
}

}  // namespace softmaxlab_fuzz
