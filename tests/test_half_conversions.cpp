// The 16-bit conversions under the fused Softmax paths (detail/scalar_types.hpp): the vector forms
// (16 lanes with masked tails on AVX-512, F16C's 8 lanes, Eigen's packets, the scalar loop
// elsewhere) give exactly the scalar conversion of every element, subnormals, ties and overflow
// included, and a NaN for a NaN (F16C keeps a half NaN's payload, Eigen's scalar form does not);
// and a rowwise Softmax of 16-bit rows is the float Softmax of the widened rows rounded once,
// whatever the row length and the path it takes (blocks of short rows, the staged row, the streamed
// row).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <softmaxlab/softmax.hpp>

#include "support.hpp"

namespace sml = softmaxlab;
using H = Eigen::half;
using B = Eigen::bfloat16;
using Eigen::Index;

namespace {

float float_from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

template <class T>
std::uint16_t bits16(T v) {
  return Eigen::numext::bit_cast<std::uint16_t>(v);
}

std::uint32_t bits32(float v) {
  std::uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}

// Float bit patterns that exercise every rounding case of a narrowing: signed zeros, subnormals,
// the smallest and largest normals, infinities, quiet and signalling NaNs with payloads, values a
// half-ulp (a tie) either side of the 16-bit grid, overflow to infinity, and random bits.
std::vector<float> narrowing_inputs() {
  std::vector<std::uint32_t> u = {
      0x00000000u, 0x80000000u, 0x00000001u, 0x807FFFFFu, 0x00400000u, 0x00800000u, 0x7F7FFFFFu,
      0xFF7FFFFFu, 0x7F800000u, 0xFF800000u, 0x7FC00000u, 0xFFC00001u, 0x7F800001u, 0xFFA5A5A5u,
      0x3F808000u, 0x3F818000u, 0x3F807FFFu, 0x3F808001u, 0x477FF000u, 0x477FEFFFu, 0x38800000u,
      0x33800000u, 0x33000000u, 0x337FFFFFu, 0x3F801000u, 0x3F803000u, 0x7F7F8000u, 0x7F7F7FFFu};
  std::mt19937 gen(2026);
  for (int i = 0; i < 4000; ++i)
    u.push_back(static_cast<std::uint32_t>(gen()));
  std::vector<float> out;
  for (const std::uint32_t b : u)
    out.push_back(float_from_bits(b));
  return out;
}

// Equal bits, or both NaN: F16C's vcvtps2ph keeps a NaN's payload where Eigen's scalar conversion
// returns its canonical NaN; no result depends on a NaN's payload.
template <class T>
bool same16(T a, T b) {
  return bits16(a) == bits16(b)
         || (Eigen::numext::isnan(static_cast<float>(a))
             && Eigen::numext::isnan(static_cast<float>(b)));
}

template <class T>
void check_narrowing(const char* name) {
  const std::vector<float> in = narrowing_inputs();
  // Every offset and length up to 40 meets the full vectors and each tail length.
  for (Index offset = 0; offset < 3; ++offset) {
    for (Index n = 0; n <= 40; ++n) {
      std::vector<T> out(static_cast<std::size_t>(n + 2), T(7.0f));
      sml::detail::convert_contiguous(in.data() + offset, out.data() + 1, n);
      Index wrong = 0;
      for (Index k = 0; k < n; ++k) {
        const T expected = static_cast<T>(in[static_cast<std::size_t>(offset + k)]);
        if (!same16(out[static_cast<std::size_t>(k + 1)], expected)) {
          if (wrong++ == 0) {
            INFO(name << ": input bits " << std::hex << bits32(in[offset + k]) << " gave "
                      << bits16(out[k + 1]) << ", scalar " << bits16(expected));
            CHECK(false);
          }
        }
      }
      CHECK(wrong == 0);
      // Nothing outside [1, n + 1) is written (masked tails).
      CHECK(bits16(out.front()) == bits16(T(7.0f)));
      CHECK(bits16(out.back()) == bits16(T(7.0f)));
    }
  }
  // The long stretch: every input once.
  std::vector<T> out(in.size());
  sml::detail::convert_contiguous(in.data(), out.data(), static_cast<Index>(in.size()));
  Index wrong = 0;
  for (std::size_t k = 0; k < in.size(); ++k)
    wrong += !same16(out[k], static_cast<T>(in[k]));
  INFO(name << ": " << wrong << " of " << in.size() << " differ from the scalar conversion");
  CHECK(wrong == 0);
}

template <class T>
void check_widening(const char* name) {
  // All 65,536 bit patterns, then short lengths for the tails.
  std::vector<T> in(65536);
  for (std::uint32_t b = 0; b < 65536; ++b) {
    in[b] = Eigen::numext::bit_cast<T>(static_cast<std::uint16_t>(b));
  }
  std::vector<float> out(in.size());
  // The length through a volatile: with a constant, GCC 12 (-O2, AVX2) warns of a loop iteration it
  // cannot reach (-Waggressive-loop-optimizations) in the inlined tail loop.
  volatile Index all = 65536;
  sml::detail::convert_contiguous(in.data(), out.data(), Index(all));
  Index wrong = 0;
  for (std::size_t k = 0; k < in.size(); ++k)
    wrong += bits32(out[k]) != bits32(static_cast<float>(in[k]))
             && !(std::isnan(out[k]) && std::isnan(static_cast<float>(in[k])));
  INFO(name << ": " << wrong << " of 65536 patterns differ from the scalar widening");
  CHECK(wrong == 0);
  for (Index n = 0; n <= 33; ++n) {
    std::vector<float> o(static_cast<std::size_t>(n + 2), -3.0f);
    sml::detail::convert_contiguous(in.data() + 31000, o.data() + 1, n);
    for (Index k = 0; k < n; ++k)
      CHECK(bits32(o[k + 1]) == bits32(static_cast<float>(in[31000 + k])));  // no NaN here
    CHECK(o.front() == -3.0f);
    CHECK(o.back() == -3.0f);
  }
}

template <class T>
void check_scaled_narrowing(const char* name) {
  const std::vector<float> in = narrowing_inputs();
  for (const float factor : {1.0f, 0.75f, 3.0e-39f, 1.0e30f, 0.0f}) {
    for (Index n : {Index(0), Index(5), Index(16), Index(17), Index(1000)}) {
      std::vector<T> out(static_cast<std::size_t>(n));
      sml::detail::scale_convert_contiguous(in.data(), factor, out.data(), n);
      Index wrong = 0;
      for (Index k = 0; k < n; ++k)
        wrong += !same16(out[k], static_cast<T>(in[k] * factor));
      INFO(name << ": factor " << factor << ", n " << n << ": " << wrong << " differ");
      CHECK(wrong == 0);
    }
  }
}

// A rowwise Softmax of 16-bit rows against the float Softmax of the widened rows, rounded once.
template <class T>
void check_rowwise_rounded_once(Index rows, Index n, bool specials) {
  std::mt19937 gen(static_cast<unsigned>(n * 31 + rows));
  std::uniform_real_distribution<float> u(-12.0f, 12.0f);
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> x(rows, n), y(rows, n);
  for (Index i = 0; i < x.size(); ++i)
    x.data()[i] = static_cast<T>(u(gen));
  if (specials && rows >= 4 && n >= 2) {
    x(0, n / 2) = T(std::numeric_limits<float>::quiet_NaN());
    x(1, 0) = T(std::numeric_limits<float>::infinity());
    x.row(2).setConstant(T(-std::numeric_limits<float>::infinity()));
    x(3, n - 1) = T(60.0f);  // a max far above the rest: subnormal and zero probabilities
  }
  sml::Softmax().rowwise(x, y);
  const Eigen::MatrixXf xf = x.template cast<float>();
  Eigen::MatrixXf yf(rows, n);
  for (Index i = 0; i < rows; ++i) {
    const Eigen::RowVectorXf row = xf.row(i);
    Eigen::RowVectorXf out(n);
    sml::Softmax().apply(row, out);
    yf.row(i) = out;
  }
  Index wrong = 0;
  for (Index i = 0; i < rows; ++i) {
    for (Index j = 0; j < n; ++j) {
      const T expected = static_cast<T>(yf(i, j));
      wrong += !same16(y(i, j), expected);
    }
  }
  INFO(rows << " x " << n << (specials ? " with special values" : "") << ": " << wrong
            << " entries differ from the float result rounded once");
  CHECK(wrong == 0);
}

}  // namespace

TEST_CASE("16-bit conversions: vector forms equal the scalar conversion bit for bit",
          "[half][conversion]") {
  check_narrowing<H>("float -> half");
  check_narrowing<B>("float -> bfloat16");
  check_widening<H>("half -> float");
  check_widening<B>("bfloat16 -> float");
  check_scaled_narrowing<H>("scaled float -> half");
  check_scaled_narrowing<B>("scaled float -> bfloat16");
}

TEST_CASE("16-bit Softmax rows: the float result rounded once on every path", "[half]") {
  for (const Index n :
       {Index(1), Index(7), Index(16), Index(33), Index(64), Index(100), Index(1000), Index(4096),
        Index(4097), Index(32000), Index(32768), Index(40000)}) {
    const Index rows = n >= 4096 ? 4 : 37;
    check_rowwise_rounded_once<H>(rows, n, false);
    check_rowwise_rounded_once<B>(rows, n, false);
    check_rowwise_rounded_once<H>(rows, n, true);
    check_rowwise_rounded_once<B>(rows, n, true);
  }
}
