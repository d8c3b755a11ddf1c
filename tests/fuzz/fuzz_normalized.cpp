// libFuzzer target: NormalizedSoftmax with arbitrary scale s and margin (kind and value), shapes of
// the embeddings E (N x D) and class weights W (C x D), labels (in and out of range), zero rows,
// rows with inf or NaN, and float/double bit patterns. Invalid parameters and labels must throw
// std::invalid_argument (and nothing else). normalized.hpp's contract, checked on every entry:
//   - logits: a row of E or W with inf or NaN makes every cosine it takes part in NaN; otherwise a
//     zero row gives logits exactly 0, and any other pair |s cos| <= s (1 + (D + 4) eps);
//   - probabilities: each row is Softmax of its logits row (check_row's rules);
//   - labels: the margin changes only the target logit, never raises it, and keeps it in the
//     margin's range (CosFace [s (-1 - m), s (1 - m)], ArcFace [s (-1 - m sin m), s],
//     SphereFace [s (1 - 2m), s]);
//   - backward: {dE, dW} have E's and W's shapes; a zero row gets exactly 0, a non-finite row NaN,
//     a finite row of moderate norm a finite gradient orthogonal to the row (without labels);
//   - prototypes: rows of norm 1 (or NaN), missing classes throw; classify: -1 exactly for rows
//     whose cosines are NaN, else an index in [0, C).
#include <softmaxlab/normalized.hpp>

#include "fuzz_common.hpp"

namespace {

using namespace softmaxlab_fuzz;
namespace sml = softmaxlab;

// Row i of M by coefficients (Eigen's row blocks of an N x 0 matrix are UB, so never form them).
template <class Mat>
bool row_zero(const Mat& m, Index i) {
  for (Index j = 0; j < m.cols(); ++j)
    if (m(i, j) != 0)
      return false;
  return true;
}
template <class Mat>
bool row_finite(const Mat& m, Index i) {
  for (Index j = 0; j < m.cols(); ++j)
    if (!std::isfinite(m(i, j)))
      return false;
  return true;
}
// The rows of M: several shapes of trouble chosen by the bytes.
template <class Mat>
void fill_rows(Bytes& bytes, Mat& m) {
  using Scalar = typename Mat::Scalar;
  for (Index i = 0; i < m.rows(); ++i) {
    const std::uint8_t how = bytes.take<std::uint8_t>();
    for (Index j = 0; j < m.cols(); ++j) {
      switch (how % 4) {
        case 0:  // zero row
          m(i, j) = 0;
          break;
        case 1:  // small integers
          m(i, j) = static_cast<Scalar>(bytes.take<std::int8_t>());
          break;
        default:  // raw bits and edge values
          m(i, j) = bytes.scalar<Scalar>();
      }
    }
  }
}

template <class Scalar>
void run(const sml::NormalizedSoftmax& ns, Bytes& bytes) {
  using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  const double eps = std::numeric_limits<Scalar>::epsilon();
  const double s = ns.scale();
  const Index n = bytes.take<std::uint8_t>() % 6;
  const Index c = bytes.take<std::uint8_t>() % 9;
  const Index d = bytes.take<std::uint8_t>() % 70;
  Mat e(n, d), w(c, d);
  fill_rows(bytes, e);
  fill_rows(bytes, w);
  const std::uint8_t options = bytes.take<std::uint8_t>();

  // Logits without labels.
  const auto z = ns.logits(e, w);
  expect(z.rows() == n && z.cols() == c, "logits shape");
  const bool s_fits = s * (1 + (d + 4) * eps) < 0.5 * std::numeric_limits<Scalar>::max();
  std::vector<char> e_finite(n), w_finite(c), e_zero(n), w_zero(c);
  for (Index i = 0; i < n; ++i) {
    e_finite[i] = row_finite(e, i);
    e_zero[i] = row_zero(e, i);
  }
  for (Index k = 0; k < c; ++k) {
    w_finite[k] = row_finite(w, k);
    w_zero[k] = row_zero(w, k);
  }
  for (Index i = 0; i < n; ++i) {
    for (Index k = 0; k < c; ++k) {
      const double v = z(i, k);
      if (!e_finite[i] || !w_finite[k]) {
        expect(std::isnan(v), "a cosine with a non-finite row is NaN", i * c + k, v);
      } else if (e_zero[i] || w_zero[k]) {
        expect(v == 0, "a cosine with a zero row is 0", i * c + k, v);
      } else if (s_fits) {
        const double bound =
            s * (1 + (d + 4) * eps) + (d + 2) * std::numeric_limits<Scalar>::denorm_min();
        expect(std::isfinite(v) && std::fabs(v) <= bound, "|logit| <= s", i * c + k, v);
      }
    }
  }

  // Probabilities: Softmax of each logits row.
  const auto p = ns(e, w);
  expect(p.rows() == n && p.cols() == c, "probabilities shape");
  for (Index i = 0; i < n && c > 0; ++i)
    check_row(Vec(z.row(i).transpose()), Vec(p.row(i).transpose()), Rules(Output::Probabilities));

  // Labels: out of range or of the wrong length must throw, and only std::invalid_argument.
  const Index label_count = (options & 0x80) ? n + 1 - (bytes.take<std::uint8_t>() % 3) : n;
  Eigen::VectorXi labels(label_count);
  bool labels_ok = label_count == n;
  for (Index i = 0; i < label_count; ++i) {
    const std::uint8_t raw = bytes.take<std::uint8_t>();
    labels(i) = (raw & 0x80) ? static_cast<int>(static_cast<std::int8_t>(raw))
                             : (c > 0 ? raw % static_cast<int>(c) : 0);
    labels_ok &= labels(i) >= 0 && labels(i) < c;
  }
  std::optional<typename sml::NormalizedSoftmax::RowMatrix<Scalar>> zl;
  const bool accepted = construct([&] { zl.emplace(ns.logits(e, w, labels)); });
  expect(accepted == labels_ok, "labels outside [0, C) or of the wrong length throw, others not");
  if (accepted) {
    const sml::Margin& margin = ns.margin();
    const double m = margin.m;
    double lo = -1, hi = 1;
    switch (margin.kind) {
      case sml::Margin::Kind::None:
        break;
      case sml::Margin::Kind::CosFace:
        lo = -1 - m;
        hi = 1 - m;
        break;
      case sml::Margin::Kind::ArcFace:
        lo = -1 - m * std::sin(m);
        break;
      case sml::Margin::Kind::SphereFace:
        lo = 1 - 2 * m;
        break;
    }
    const double tol = s * (d + 8) * eps * 8;
    for (Index i = 0; i < n; ++i) {
      for (Index k = 0; k < c; ++k) {
        const double plain = z(i, k), v = (*zl)(i, k);
        if (k != labels(i) || margin.kind == sml::Margin::Kind::None) {
          expect(v == plain || (std::isnan(v) && std::isnan(plain)),
                 "the margin changes only the target logit", i * c + k, v);
          continue;
        }
        if (std::isnan(plain)) {
          expect(std::isnan(v), "a NaN cosine stays NaN under the margin", i, v);
          continue;
        }
        if (!s_fits)
          continue;
        expect(v <= plain + tol, "the margin never raises the target logit", i, v);
        expect(v >= s * lo - tol && v <= s * hi + tol, "target logit in the margin's range", i, v);
      }
    }
    const auto pl = ns(e, w, labels);
    for (Index i = 0; i < n && c > 0; ++i)
      check_row(Vec(zl->row(i).transpose()), Vec(pl.row(i).transpose()),
                Rules(Output::Probabilities));
  }

  // Backward with a fuzzed upstream gradient dZ (bounded, or raw bits).
  Mat dz(n, c);
  const bool raw_dz = (options & 0x40) != 0;
  for (Index i = 0; i < n; ++i)
    for (Index k = 0; k < c; ++k)
      dz(i, k) = raw_dz ? bytes.scalar<Scalar>()
                        : static_cast<Scalar>(bytes.take<std::int8_t>()) / Scalar(16);
  const bool with_labels = accepted && (options & 0x20) != 0;
  const auto grads =
      with_labels ? ns.logits_backward(e, w, labels, dz) : ns.logits_backward(e, w, dz);
  const Mat& de = grads.first;
  const Mat& dw = grads.second;
  expect(de.rows() == n && de.cols() == d && dw.rows() == c && dw.cols() == d,
         "gradient shapes are E's and W's");
  bool all_finite = dz.allFinite();
  for (Index k = 0; k < c; ++k)
    all_finite &= w_finite[k] != 0;
  for (Index i = 0; i < n; ++i)
    all_finite &= e_finite[i] != 0;
  // Finite gradients are promised where nothing can overflow: moderate norms, scale and dZ.
  auto moderate = [&](const Mat& m, Index i) {
    const double norm = row_norm(m, i);
    return norm == 0 || (norm >= 1e-6 && norm <= 1e6);
  };
  bool moderate_all = !raw_dz && s <= 1e4;
  for (Index i = 0; i < n; ++i)
    moderate_all &= moderate(e, i);
  for (Index k = 0; k < c; ++k)
    moderate_all &= moderate(w, k);
  const auto wn = sml::NormalizedSoftmax::normalized_rows(w);
  const auto en = sml::NormalizedSoftmax::normalized_rows(e);
  for (Index i = 0; i < n; ++i) {
    for (Index j = 0; j < d; ++j) {
      const double v = de(i, j);
      if (!e_finite[i]) {
        expect(std::isnan(v), "a non-finite embedding gets a NaN gradient", i, v);
      } else if (e_zero[i]) {
        expect(v == 0, "a zero embedding gets a zero gradient", i, v);
      } else if (all_finite && moderate_all && !with_labels) {
        expect(std::isfinite(v), "finite embedding gradient", i, v);
      }
    }
    if (all_finite && moderate_all && !with_labels && !e_zero[i] && d > 0 && c > 0) {
      // Scale invariance: dE_n is orthogonal to e_n.
      const Eigen::VectorXd dhat =
          s * (dz.row(i).template cast<double>() * wn.template cast<double>()).transpose();
      const double norm = row_norm(e, i);
      const double dot = de.row(i).template cast<double>().dot(en.row(i).template cast<double>());
      expect(std::fabs(dot) <= 4 * (d + 8) * eps * dhat.norm() / norm + 1e-300,
             "dE_n is orthogonal to e_n", i, dot);
    }
  }
  for (Index k = 0; k < c; ++k) {
    for (Index j = 0; j < d; ++j) {
      const double v = dw(k, j);
      if (!w_finite[k]) {
        expect(std::isnan(v), "a non-finite class weight gets a NaN gradient", k, v);
      } else if (w_zero[k]) {
        expect(v == 0, "a zero class weight gets a zero gradient", k, v);
      } else if (all_finite && moderate_all && !with_labels) {
        expect(std::isfinite(v), "finite class weight gradient", k, v);
      }
    }
  }
  // The probability form goes through the softmax backward first: shapes only.
  const auto gp = ns.backward(e, w, p, dz);
  expect(gp.first.rows() == n && gp.first.cols() == d && gp.second.rows() == c
             && gp.second.cols() == d,
         "backward(E, W, P, dP) shapes");

  // Prototypes and classification.
  if (labels_ok) {
    const Index classes = c > 0 ? c : static_cast<Index>(options & 3);
    std::vector<char> seen(static_cast<std::size_t>(std::max<Index>(classes, 0)), 0);
    bool valid = classes >= 1;
    for (Index i = 0; i < n && valid; ++i)
      valid &= labels(i) < classes;
    for (Index i = 0; i < n && valid; ++i)
      seen[static_cast<std::size_t>(labels(i))] = 1;
    for (Index k = 0; k < classes && valid; ++k)
      valid &= seen[static_cast<std::size_t>(k)] != 0;
    std::optional<Mat> protos;
    const bool made =
        construct([&] { protos.emplace(sml::NormalizedSoftmax::prototypes(e, labels, classes)); });
    expect(made == valid, "prototypes throw exactly for a class without embeddings");
    if (made) {
      expect(protos->rows() == classes && protos->cols() == d, "prototypes shape");
      for (Index k = 0; k < classes; ++k) {
        if (!row_finite(*protos, k))
          continue;  // a class holding a non-finite embedding
        const double norm = row_norm(*protos, k);
        expect(norm == 0 || std::fabs(norm - 1) <= (d + 8) * eps * 4,
               "a prototype has norm 1 (or 0)", k, norm);
      }
    }
  }
  const auto cls = sml::NormalizedSoftmax::classify(e, w);
  expect(cls.size() == n, "classify length");
  for (Index i = 0; i < n; ++i) {
    bool nan = false;
    for (Index k = 0; k < c; ++k)
      nan |= !e_finite[i] || !w_finite[k];
    if (nan || c == 0) {
      expect(cls(i) == -1, "classify gives -1 for a row of NaN cosines", i, cls(i));
    } else {
      expect(cls(i) >= 0 && cls(i) < c, "classify gives a class index", i, cls(i));
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Bytes bytes(data, size);
  const double scale = bytes.parameter(20.0);
  const std::uint8_t kind = bytes.take<std::uint8_t>();
  const double m = bytes.parameter(0.25 * (kind >> 4));
  const sml::Margin margin = margin_from(kind, m);
  std::optional<sml::NormalizedSoftmax> ns;
  if (!construct([&] { ns.emplace(scale, margin); }))
    return 0;
  if (bytes.take<std::uint8_t>() & 1) {
    run<double>(*ns, bytes);
  } else {
    run<float>(*ns, bytes);
  }
  return 0;
}
