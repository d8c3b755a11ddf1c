// softmaxlab: AttentionWeight<W>, the trait that says which weights Attention<W> accepts and how
// each forms its rows (see flash_attention.hpp's doc block for the three weights' semantics).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "attention_options.hpp"
#include "detail/checks.hpp"
#include "polynomial.hpp"
#include "power.hpp"
#include "softmax.hpp"

namespace softmaxlab {

// Which flash forward forms the rows of a weight (AttentionWeight<W>::kind).
enum class AttentionWeightKind {
  Softmax,    // exact softmax: online max, sum and accumulator; lse, backward and sink
  Power,      // PowerSoftmax (Stable form): power-of-two running scale, no lse, no backward
  Polynomial  // PolynomialSoftmax with a public bound: no max, no lse, no backward
};

// The weights Attention<W> accepts, as one trait: supported (a static_assert in Attention names
// the three otherwise), kind, and check(name, options, weight), which throws
// std::invalid_argument naming the value when the weight's own parameters or the options do not
// fit it. Tested in tests/test_attention.cpp (the weights' cases and their errors).
template <class Weight>
struct AttentionWeight {
  static constexpr bool supported = false;  // not an attention weight
};

// Softmax: temperature 1 only (fold a temperature into the scale).
template <>
struct AttentionWeight<Softmax> {
  static constexpr bool supported = true;                                    // accepted
  static constexpr AttentionWeightKind kind = AttentionWeightKind::Softmax;  // its forward
  // Throws unless the temperature is 1.
  static void check(const char* name, const AttentionOptions& /*options*/, const Softmax& weight) {
    if (weight.temperature() != 1.0) {
      detail::fail(
          name, ": the Softmax weight's temperature must be 1 (fold it into the scale), but got ",
          weight.temperature());
    }
  }
};

// PowerSoftmax: the Stable form, no sink.
template <>
struct AttentionWeight<PowerSoftmax> {
  static constexpr bool supported = true;                                  // accepted
  static constexpr AttentionWeightKind kind = AttentionWeightKind::Power;  // its forward
  // Throws unless the form is Stable and no sink is set.
  static void check(const char* name, const AttentionOptions& options, const PowerSoftmax& weight) {
    if (weight.form() != PowerForm::Stable)
      detail::fail(name, ": the PowerSoftmax weight must have the Stable form, but got form ",
                   static_cast<int>(weight.form()));
    if (options.has_sink())
      detail::fail(name, ": a sink needs the Softmax weight, but got sink ", options.sink(),
                   " with PowerSoftmax");
  }
};

// PolynomialSoftmax: the public-bound shift (online, no max), no sink.
template <>
struct AttentionWeight<PolynomialSoftmax> {
  static constexpr bool supported = true;                                       // accepted
  static constexpr AttentionWeightKind kind = AttentionWeightKind::Polynomial;  // its forward
  // Throws unless the shift is Shift::PublicBound and no sink is set.
  static void check(const char* name, const AttentionOptions& options,
                    const PolynomialSoftmax& weight) {
    if (weight.options().shift != Shift::PublicBound)
      detail::fail(name,
                   ": the PolynomialSoftmax weight must use Shift::PublicBound (online, no max), "
                   "but got Shift::RowMax");
    if (options.has_sink())
      detail::fail(name, ": a sink needs the Softmax weight, but got sink ", options.sink(),
                   " with PolynomialSoftmax");
  }
};

}  // namespace softmaxlab
