// <softmaxlab/sampler.hpp> alone: the chain, probabilities, kept_count and verify.
#include <softmaxlab/random.hpp>
#include <softmaxlab/sampler.hpp>

void softmaxlab_header_use_sampler() {
  const softmaxlab::Sampler s(softmaxlab::SamplerOptions().with_min_p(0.05).with_temperature(0.7));
  softmaxlab::Philox4x32 gen(1);
  softmaxlab::SamplingWorkspace ws;
  const Eigen::VectorXf logits = Eigen::VectorXf::LinSpaced(6, -1, 1);
  Eigen::VectorXf probs(6);
  s.probabilities(logits, probs, ws);
  const Eigen::Index kept = s.kept_count(logits, ws);
  const Eigen::MatrixXf target = Eigen::MatrixXf::Zero(2, 6),
                        draft = Eigen::MatrixXf::Constant(1, 6, 1.0f / 6);
  const Eigen::Matrix<Eigen::Index, Eigen::Dynamic, 1> tokens =
      Eigen::Matrix<Eigen::Index, 1, 1>(3);
  const softmaxlab::SpeculativeResult r = s.verify(target, draft, tokens, gen);
  (void)kept;
  (void)r;
}
