// softmaxlab: Philox4x32-10, a counter-based random bit generator (Salmon, Moraes, Dror and Shaw,
// "Parallel random numbers: as easy as 1, 2, 3", SC 2011; the Random123 library).
//
// Philox4x32-10 is a keyed bijection of 128-bit counters: block(counter, key) applies ten rounds of
//   (c0, c1, c2, c3) -> (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2), hi(M0 c0) ^ c3 ^ k1, lo(M0 c0)),
// M0 = 0xD2511F53, M1 = 0xCD9E8D57 (32 x 32 -> 64-bit products), bumping the key by the Weyl
// constants (0x9E3779B9, 0xBB67AE85) between rounds. Output word w of block c is word w of
// block(c, key). Nothing else enters the result, so
//   - the same seed, stream and position give the same words on every machine and compiler;
//   - skip-ahead is O(1) (discard(n) adds to the counter), and independent streams are disjoint
//     counter ranges: Philox4x32(seed, stream) starts at counter {0, 0, stream_lo, stream_hi}, so
//     every stream holds 2^64 blocks (2^66 words) before it could reach the next one.
// The ten-round variant passes the BigCrush battery (Salmon et al. 2011, table 2); the tests check
// block() against the Random123 known-answer vectors (tests/test_gumbel.cpp cites the files).
//
// Philox4x32 satisfies the C++ UniformRandomBitGenerator requirements (result_type std::uint32_t,
// min() = 0, max() = 2^32 - 1, operator()), so it works with every <random> distribution. fill()
// writes the next n words, exactly what n calls of operator() would return, computing many blocks
// at a time in registers: 32 with AVX-512 (two groups of sixteen lanes, vpmuludq on 512 bits for
// the 32 x 32 -> 64-bit products), 16 with AVX2 (two groups of eight), elsewhere eight in a
// structure-of-arrays loop; the known-answer and fill-versus-operator() tests cover each.
// GumbelSoftmax uses fill() when it is given a Philox4x32. Every seed, stream and discard count is
// valid (discard wraps around the 2^128-block counter); nothing here throws or allocates.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "detail/config.hpp"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace softmaxlab {

// Philox4x32-10 (Salmon et al. 2011): a counter-based generator of 32-bit words; see the header's
// doc block.
class Philox4x32 {
 public:
  // The type of one output word.
  using result_type = std::uint32_t;
  // The 128-bit counter, four words.
  using Counter = std::array<std::uint32_t, 4>;
  // The 64-bit key, two words.
  using Key = std::array<std::uint32_t, 2>;

  // Rounds per block (10, Philox4x32-10).
  static constexpr int rounds = 10;
  // The round multipliers of Philox4x32 (Salmon et al. 2011).
  static constexpr std::uint32_t kM0 = 0xD2511F53u;
  // The second round multiplier.
  static constexpr std::uint32_t kM1 = 0xCD9E8D57u;
  // The key increments (Weyl sequence) of Philox4x32.
  static constexpr std::uint32_t kW0 = 0x9E3779B9u;
  // The second key increment.
  static constexpr std::uint32_t kW1 = 0xBB67AE85u;

  // The smallest output, 0.
  static constexpr result_type min() { return 0; }
  // The largest output, 2^32 - 1.
  static constexpr result_type max() { return 0xFFFFFFFFu; }

  // Key = the seed's two 32-bit halves (low first); counter = {0, 0, stream low, stream high}.
  explicit Philox4x32(std::uint64_t seed = 0, std::uint64_t stream = 0)
      : key_{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)},
        next_{0, 0, static_cast<std::uint32_t>(stream), static_cast<std::uint32_t>(stream >> 32)} {}

  // A generator positioned at word 0 of block `counter` under `key`.
  Philox4x32(const Counter& counter, const Key& key) : key_(key), next_(counter) {}

  // The bijection itself: ten rounds on one counter (the known-answer tests call this).
  static Counter block(Counter c, Key k) {
    for (int r = 0; r < rounds; ++r) {
      if (r > 0) {
        k[0] += kW0;
        k[1] += kW1;
      }
      const std::uint64_t p0 = std::uint64_t{kM0} * c[0];
      const std::uint64_t p1 = std::uint64_t{kM1} * c[2];
      c = {static_cast<std::uint32_t>(p1 >> 32) ^ c[1] ^ k[0], static_cast<std::uint32_t>(p1),
           static_cast<std::uint32_t>(p0 >> 32) ^ c[3] ^ k[1], static_cast<std::uint32_t>(p0)};
    }
    return c;
  }

  // The next 32-bit word.
  result_type operator()() {
    if (available_ == 0)
      refill();
    return buffer_[4 - available_--];
  }

  // Skips the next n words in O(1).
  void discard(unsigned long long n) {
    if (n <= static_cast<unsigned long long>(available_)) {
      available_ -= static_cast<int>(n);
      return;
    }
    n -= static_cast<unsigned long long>(available_);
    available_ = 0;
    advance(next_, n / 4);
    if (const int rest = static_cast<int>(n % 4); rest != 0) {
      refill();
      available_ = 4 - rest;
    }
  }

  // Writes the next n words into out: the same words, in the same order, as n calls of operator().
  void fill(std::uint32_t* out, std::size_t n) {
    while (n > 0 && available_ > 0) {
      *out++ = buffer_[4 - available_--];
      --n;
    }
    const std::size_t blocks = n / 4;
    blocks_into(next_, key_, blocks, out);
    advance(next_, blocks);
    out += 4 * blocks;
    for (std::size_t i = 0; i < n % 4; ++i)
      out[i] = (*this)();
  }

  // The key this object was built with.
  const Key& key() const { return key_; }
  // The counter of the next block to compute, and how many words of the current block are left.
  const Counter& next_counter() const { return next_; }
  // The buffered words this object was built with.
  int buffered_words() const { return available_; }

  friend bool operator==(const Philox4x32& a, const Philox4x32& b) {
    if (a.key_ != b.key_ || a.next_ != b.next_ || a.available_ != b.available_)
      return false;
    for (int i = 4 - a.available_; i < 4; ++i) {
      if (a.buffer_[i] != b.buffer_[i])
        return false;
    }
    return true;
  }
  friend bool operator!=(const Philox4x32& a, const Philox4x32& b) { return !(a == b); }

 private:
  // Adds n to the 128-bit counter (little-endian words), wrapping modulo 2^128.
  static void advance(Counter& c, unsigned long long n) {
    const std::uint64_t lo = (std::uint64_t{c[1]} << 32 | c[0]);
    const std::uint64_t sum = lo + n;
    std::uint64_t hi = (std::uint64_t{c[3]} << 32 | c[2]) + (sum < lo ? 1 : 0);
    c = {static_cast<std::uint32_t>(sum), static_cast<std::uint32_t>(sum >> 32),
         static_cast<std::uint32_t>(hi), static_cast<std::uint32_t>(hi >> 32)};
  }

  void refill() {
    buffer_ = block(next_, key_);
    advance(next_, 1);
    available_ = 4;
  }

  // Blocks counter, counter + 1, ..., counter + blocks - 1 into out (4 words each, in order).
  // Eight blocks at a time in structure-of-arrays form: each statement of the round is one loop
  // over the lanes, which GCC and Clang vectorize (vpmuludq on AVX2).
  static void blocks_into(Counter counter, const Key& key, std::size_t blocks, std::uint32_t* out) {
    constexpr int L = 8;
    std::size_t b = 0;
#if defined(__AVX512F__)
    // AVX-512: sixteen counters per register, two groups at a time while no carry leaves word 0.
    for (; b + 32 <= blocks && counter[0] <= 0xFFFFFFFFu - 31; b += 32) {
      blocks_avx512_wide<4>(counter, key, out);
      out += 128;
      advance(counter, 32);
    }
#endif
#if defined(__AVX2__)
    // AVX2: eight counters per register, word k of every lane in register k; two groups of
    // eight at a time while no carry leaves word 0.
    for (; b + 2 * L <= blocks && counter[0] <= 0xFFFFFFFFu - (2 * L - 1); b += 2 * L) {
      blocks_avx2<2>(counter, key, out);
      out += 8 * L;
      advance(counter, 2 * L);
    }
    for (; b + L <= blocks && counter[0] <= 0xFFFFFFFFu - (L - 1); b += L) {
      blocks_avx2<1>(counter, key, out);
      out += 4 * L;
      advance(counter, L);
    }
#endif
    for (; b + L <= blocks; b += L) {
      alignas(32) std::uint32_t c0[L], c1[L], c2[L], c3[L];
      for (int j = 0; j < L; ++j) {
        Counter c = counter;
        advance(c, static_cast<unsigned long long>(j));
        c0[j] = c[0];
        c1[j] = c[1];
        c2[j] = c[2];
        c3[j] = c[3];
      }
      std::uint32_t k0 = key[0], k1 = key[1];
      for (int r = 0; r < rounds; ++r) {
        if (r > 0) {
          k0 += kW0;
          k1 += kW1;
        }
        for (int j = 0; j < L; ++j) {
          const std::uint64_t p0 = std::uint64_t{kM0} * c0[j];
          const std::uint64_t p1 = std::uint64_t{kM1} * c2[j];
          const std::uint32_t n0 = static_cast<std::uint32_t>(p1 >> 32) ^ c1[j] ^ k0;
          const std::uint32_t n2 = static_cast<std::uint32_t>(p0 >> 32) ^ c3[j] ^ k1;
          c1[j] = static_cast<std::uint32_t>(p1);
          c3[j] = static_cast<std::uint32_t>(p0);
          c0[j] = n0;
          c2[j] = n2;
        }
      }
      for (int j = 0; j < L; ++j) {
        out[4 * j] = c0[j];
        out[4 * j + 1] = c1[j];
        out[4 * j + 2] = c2[j];
        out[4 * j + 3] = c3[j];
      }
      out += 4 * L;
      advance(counter, L);
    }
    for (; b < blocks; ++b) {
      const Counter r = block(counter, key);
      for (int w = 0; w < 4; ++w)
        out[w] = r[w];
      out += 4;
      advance(counter, 1);
    }
  }

#if defined(__AVX2__)
  // (hi, lo) of the 32 x 32-bit products a * m in the eight lanes: the even lanes from one
  // vpmuludq, the odd lanes from another on the shifted input, then interleaved.
  static void mulhilo8(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
    const __m256i even = _mm256_mul_epu32(a, m);
    const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
    hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  }

  // Blocks counter .. counter + 8G - 1 (no carry out of word 0 within them) into out[0..32G-1]:
  // G independent groups of eight lanes interleaved, so the multiply latency of one group hides
  // behind the others.
  template <int G>
  static void blocks_avx2(const Counter& counter, const Key& key, std::uint32_t* out) {
    __m256i c0[G], c1[G], c2[G], c3[G];
    for (int g = 0; g < G; ++g) {
      c0[g] = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(counter[0] + 8u * g)),
                               _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      c1[g] = _mm256_set1_epi32(static_cast<int>(counter[1]));
      c2[g] = _mm256_set1_epi32(static_cast<int>(counter[2]));
      c3[g] = _mm256_set1_epi32(static_cast<int>(counter[3]));
    }
    __m256i k0 = _mm256_set1_epi32(static_cast<int>(key[0]));
    __m256i k1 = _mm256_set1_epi32(static_cast<int>(key[1]));
    const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kM0));
    const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kM1));
    const __m256i w0 = _mm256_set1_epi32(static_cast<int>(kW0));
    const __m256i w1 = _mm256_set1_epi32(static_cast<int>(kW1));
    for (int r = 0; r < rounds; ++r) {
      if (r > 0) {
        k0 = _mm256_add_epi32(k0, w0);
        k1 = _mm256_add_epi32(k1, w1);
      }
      for (int g = 0; g < G; ++g) {
        __m256i hi0, lo0, hi1, lo1;
        mulhilo8(c0[g], m0, hi0, lo0);
        mulhilo8(c2[g], m1, hi1, lo1);
        c0[g] = _mm256_xor_si256(_mm256_xor_si256(hi1, c1[g]), k0);
        c1[g] = lo1;
        c2[g] = _mm256_xor_si256(_mm256_xor_si256(hi0, c3[g]), k1);
        c3[g] = lo0;
      }
    }
    // Transpose to block order: out[4 j + w] = word w of block j.
    for (int g = 0; g < G; ++g) {
      const __m256i t0 = _mm256_unpacklo_epi32(c0[g], c1[g]);
      const __m256i t1 = _mm256_unpackhi_epi32(c0[g], c1[g]);
      const __m256i t2 = _mm256_unpacklo_epi32(c2[g], c3[g]);
      const __m256i t3 = _mm256_unpackhi_epi32(c2[g], c3[g]);
      const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
      const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
      auto* o = reinterpret_cast<__m256i*>(out + 32 * g);
      _mm256_storeu_si256(o, _mm256_permute2x128_si256(u0, u1, 0x20));
      _mm256_storeu_si256(o + 1, _mm256_permute2x128_si256(u2, u3, 0x20));
      _mm256_storeu_si256(o + 2, _mm256_permute2x128_si256(u0, u1, 0x31));
      _mm256_storeu_si256(o + 3, _mm256_permute2x128_si256(u2, u3, 0x31));
    }
  }
#endif

#if defined(__AVX512F__)
  // Blocks counter .. counter + 8G - 1 (no carry out of word 0 within them) into out[0..32G-1],
  // one block per 64-bit lane: a word lives in the low half of its lane, so vpmuludq's 64-bit
  // product already holds lo (low half) and hi (a shift away) of the next round, and the upper
  // halves (garbage after the xor) are never read by vpmuludq. Six instructions per round per
  // eight blocks, where a 32-bit-lane form needs sixteen per sixteen (the products' halves split
  // and blended back).
  template <int G>
  static void blocks_avx512_wide(const Counter& counter, const Key& key, std::uint32_t* out) {
    __m512i c0[G], c1[G], c2[G], c3[G];
    const __m512i lane = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
    for (int g = 0; g < G; ++g) {
      c0[g] =
          _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(counter[0] + 8u * g)), lane);
      c1[g] = _mm512_set1_epi64(static_cast<long long>(counter[1]));
      c2[g] = _mm512_set1_epi64(static_cast<long long>(counter[2]));
      c3[g] = _mm512_set1_epi64(static_cast<long long>(counter[3]));
    }
    __m512i k0 = _mm512_set1_epi32(static_cast<int>(key[0]));
    __m512i k1 = _mm512_set1_epi32(static_cast<int>(key[1]));
    const __m512i m0 = _mm512_set1_epi64(static_cast<long long>(kM0));
    const __m512i m1 = _mm512_set1_epi64(static_cast<long long>(kM1));
    const __m512i w0 = _mm512_set1_epi32(static_cast<int>(kW0));
    const __m512i w1 = _mm512_set1_epi32(static_cast<int>(kW1));
    for (int r = 0; r < rounds; ++r) {
      if (r > 0) {
        k0 = _mm512_add_epi32(k0, w0);
        k1 = _mm512_add_epi32(k1, w1);
      }
      for (int g = 0; g < G; ++g) {
        const __m512i p0 = _mm512_mul_epu32(c0[g], m0);
        const __m512i p1 = _mm512_mul_epu32(c2[g], m1);
        c0[g] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p1, 32), c1[g], k0, 0x96);
        c1[g] = p1;
        c2[g] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p0, 32), c3[g], k1, 0x96);
        c3[g] = p0;
      }
    }
    // Lane j of a = (word 0, word 1) of block j, of b = (word 2, word 3); the 64-bit unpacks give
    // blocks 0, 2, 4, 6 (lo) and 1, 3, 5, 7 (hi) per 128-bit chunk, two chunk shuffles order them.
    for (int g = 0; g < G; ++g) {
      const __m512i a = _mm512_mask_blend_epi32(0xAAAA, c0[g], _mm512_slli_epi64(c1[g], 32));
      const __m512i b = _mm512_mask_blend_epi32(0xAAAA, c2[g], _mm512_slli_epi64(c3[g], 32));
      const __m512i lo = _mm512_unpacklo_epi64(a, b);
      const __m512i hi = _mm512_unpackhi_epi64(a, b);
      const __m512i first = _mm512_shuffle_i32x4(lo, hi, 0x44);   // lo0 lo1 hi0 hi1
      const __m512i second = _mm512_shuffle_i32x4(lo, hi, 0xEE);  // lo2 lo3 hi2 hi3
      std::uint32_t* o = out + 32 * g;
      _mm512_storeu_si512(o, _mm512_shuffle_i32x4(first, first, 0xD8));
      _mm512_storeu_si512(o + 16, _mm512_shuffle_i32x4(second, second, 0xD8));
    }
  }
#endif

  Key key_;
  Counter next_;
  Counter buffer_{};
  int available_ = 0;
};

}  // namespace softmaxlab
