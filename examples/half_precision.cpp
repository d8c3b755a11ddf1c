// half_precision: the same logits in float, Eigen::half and Eigen::bfloat16, each softmax's error
// against a double softmax, mixed input/output types, and the stall of a naive bfloat16 sum beside
// softmaxlab's result (which accumulates in float and rounds once).
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <random>

#include <softmaxlab/softmaxlab.hpp>

namespace sml = softmaxlab;
using H = Eigen::half;
using B = Eigen::bfloat16;

template <class S>
using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;

int main() {
  // 1000 logits, already representable in bfloat16 (hence in half and float too), so all three
  // softmaxes see the same input and differ only by their output rounding.
  const Eigen::Index n = 1000;
  std::mt19937 gen(2026);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  Vec<B> logits_bf16(n);
  for (Eigen::Index i = 0; i < n; ++i)
    logits_bf16[i] = static_cast<B>(normal(gen));
  const Vec<float> logits_f = logits_bf16.cast<float>();
  const Vec<H> logits_h = logits_f.cast<H>();  // exact: bf16 values of this size fit half

  const Vec<double> exact = sml::Softmax()(logits_f.cast<double>().eval());
  const Vec<float> p_f = sml::Softmax()(logits_f);
  const Vec<H> p_h = sml::Softmax()(logits_h);     // half in, half out, float inside
  const Vec<B> p_b = sml::Softmax()(logits_bf16);  // bf16 in, bf16 out, float inside

  // relative error in units of the output type's eps (2^-10 half, 2^-7 bf16, 2^-23 float)
  auto worst = [&](const auto& p, double eps) {
    double w = 0;
    for (Eigen::Index i = 0; i < n; ++i) {
      const double got = static_cast<double>(static_cast<float>(p[i]));
      if (exact[i] >= 6.1e-5)  // normal half range: relative error is meaningful
        w = std::max(w, std::fabs(got - exact[i]) / exact[i] / eps);
    }
    return w;
  };
  std::cout
      << "softmax of 1000 logits, worst relative error against double (in eps of the output):\n"
      << "  float    " << worst(p_f, 0x1p-23) << " eps\n"
      << "  half     " << worst(p_h, 0x1p-10) << " eps (0.5 would be correct rounding)\n"
      << "  bfloat16 " << worst(p_b, 0x1p-7) << " eps\n";

  // Mixed types, PyTorch's dtype= in C++ form: half logits, float probabilities, and back.
  Vec<float> p_hf(n);
  sml::Softmax().apply(logits_h, p_hf);
  Vec<B> log_b(n);
  sml::LogSoftmax().apply(logits_f, log_b);
  std::cout << "\nmixed: half in, float out: sum " << p_hf.sum()
            << "; float in, bf16 log out: " << static_cast<float>(log_b[0]) << " vs "
            << std::log(exact[0]) << " exact\n";

  // The bf16 stall: a uniform row of 512 entries. A bf16 running sum reaches 256 and stays there
  // (256 + 1 rounds back to 256 with 8 significand bits), so a naive bf16 softmax gives 1/256.
  const Vec<B> uniform = Vec<B>::Constant(512, static_cast<B>(0.0f));
  B naive_sum = static_cast<B>(0.0f);
  for (Eigen::Index i = 0; i < uniform.size(); ++i)
    naive_sum =
        static_cast<B>(static_cast<float>(naive_sum) + std::exp(static_cast<float>(uniform[i])));
  const float naive_p = 1.0f / static_cast<float>(naive_sum);
  const Vec<B> p_uniform = sml::Softmax()(uniform);
  std::cout << "\nuniform row of 512 bf16 logits:\n"
            << "  naive bf16 sum " << static_cast<float>(naive_sum) << " -> p = " << naive_p
            << " each (sum " << naive_p * 512 << ")\n"
            << "  softmaxlab      p = " << static_cast<float>(p_uniform[0])
            << " each = 2^-9 exactly\n";

  const bool ok = worst(p_h, 0x1p-10) <= 1.0 && worst(p_b, 0x1p-7) <= 1.0
                  && static_cast<float>(p_uniform[0]) == 0x1p-9f && naive_p == 0x1p-8f;
  return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
