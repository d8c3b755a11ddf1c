// softmaxlab: build configuration checks, included first by every public header.
//
// -ffast-math (also -Ofast, -ffinite-math-only): refused with #error. The kernels rely on IEEE
// semantics the flag gives away: NaN and infinity tests (`x != x`, comparisons with +-inf) that
// the compiler may fold to constants under -ffinite-math-only, so a NaN input would yield a
// plausible distribution instead of a NaN row; and the exact rounding of the magic-number add
// (x * log2e + 1.5 * 2^23) that the exp kernels use to round to an integer, which
// -fassociative-math may cancel, giving entries off by up to a factor 2. A wrong answer without a
// diagnostic is worse than no build: compile the translation units that include softmaxlab with
// -fno-fast-math (or without -ffast-math / -ffinite-math-only).
//
// Exceptions: SOFTMAXLAB_HAS_EXCEPTIONS is 1 when the compiler has C++ exceptions on (the
// __cpp_exceptions / __EXCEPTIONS / _CPPUNWIND macros) and SOFTMAXLAB_NO_EXCEPTIONS is not
// defined; otherwise 0, and every error the policy would throw calls the installable error handler
// instead (see softmaxlab::set_error_handler in detail/checks.hpp).
//
// GCC before 13 with AVX-512 (GCC bug 105593): the self-initialized `_mm512_undefined_*` of its
// own avx512fintrin.h raise -Wuninitialized and -Wmaybe-uninitialized wherever packet code inlines
// them, so a -Werror build fails on code that is correct. The immintrin.h include below silences
// exactly those two warnings inside GCC's intrinsic headers (a diagnostic pragma applies by source
// location); every other file keeps them. It takes effect when this header precedes the first
// include of immintrin.h (Eigen includes it): softmaxlab's headers include this one before Eigen,
// and softmaxlab's own targets force-include it (cmake/softmaxlabFlags.cmake).
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13 && defined(__AVX512F__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

#if defined(__FAST_MATH__)
#error \
    "softmaxlab: -ffast-math (or -Ofast) is not supported: it lets the compiler fold the NaN/inf checks and the exp kernels' rounding, which gives silently wrong probabilities. Compile the files that include softmaxlab with -fno-fast-math."
#elif defined(__FINITE_MATH_ONLY__) && __FINITE_MATH_ONLY__ > 0
#error \
    "softmaxlab: -ffinite-math-only is not supported: the NaN and infinity policy (NaN rows, -inf masks, +inf entries) relies on IEEE comparisons the flag lets the compiler fold. Compile the files that include softmaxlab with -fno-finite-math-only."
#endif

// 1 when errors are thrown as std::invalid_argument; 0 in -fno-exceptions builds (or with
// SOFTMAXLAB_NO_EXCEPTIONS), where they go to the error handler (checks.hpp).
#if !defined(SOFTMAXLAB_NO_EXCEPTIONS) \
    && (defined(__cpp_exceptions) || defined(__EXCEPTIONS) || defined(_CPPUNWIND))
#define SOFTMAXLAB_HAS_EXCEPTIONS 1
#else
#define SOFTMAXLAB_HAS_EXCEPTIONS 0
#endif
