// softmaxlab: header-only softmax variants for Eigen 3.4.
//
// One include for the whole library:
//   Softmax, LogSoftmax          softmax.hpp      exact reference, temperature
//   PowerSoftmax                 power.hpp        x^p / sum x^p (Power-Softmax), HE-friendly
//   PolynomialSoftmax            polynomial.hpp   only + - * after the shift; cost report
//   GumbelSoftmax                gumbel.hpp       differentiable sampling (Gumbel noise, tau, hard)
//   NormalizedSoftmax, Margin    normalized.hpp   cosine logits with CosFace/ArcFace/SphereFace
//                                                 margins; prototypes for novel classes
//   Philox4x32                   random.hpp       counter-based UniformRandomBitGenerator
//   Sampler, SamplerOptions,     sampling.hpp     llama.cpp's sampler chain (penalties, DRY,
//     top_k_log_softmax                           top-k, top-p, min-p, ...) without a sort; exact
//                                                 speculative verify; top-k log-probabilities
//                                                 (parts: sampler.hpp, sampler_options.hpp,
//                                                 top_k_log_softmax.hpp)
//   LinearHeadSampler            sampling/linear_head.hpp  next tokens from H and W with the
//                                                 Sampler's options, no N x V logits
//   SinglePassSoftmax,           single_pass.hpp  one read for the normalizer, one to write;
//     OnlineNormalizer<Scalar>                    mergeable [max, sum] state for chunked rows
//   LogSumExp                    logsumexp.hpp    log sum exp, weighted/signed (SciPy b=), backward
//   CrossEntropyLoss, L2SvmLoss, loss.hpp         training losses with their gradients (parts:
//     NormalizedSoftmaxLoss,                      cross_entropy.hpp, svm_loss.hpp,
//     SparseCbmGumbelLoss                         normalized_loss.hpp, gumbel_loss.hpp)
//   LinearCrossEntropy,          linear_cross_entropy.hpp  the output layer's loss from H and W
//     TokenOutputs                                without the N x V logits (Cut Cross-Entropy)
//   SampledSoftmaxLoss, NceLoss, sampled_softmax.hpp  TensorFlow's sampled softmax and NCE with
//     SampledGradients                            the log Q correction and accidental hits
//   CandidateSampler,            candidate_sampler.hpp  log-uniform, uniform and unigram^0.75
//     CandidateSample                             candidates, unique, expected counts (Philox)
//   AdaptiveLogSoftmax           adaptive_softmax.hpp  PyTorch's AdaptiveLogSoftmaxWithLoss
//                                                 (Grave et al. 2017): head + tail clusters
//   HierarchicalSoftmax          hierarchical_softmax.hpp  fastText's Huffman-tree softmax:
//                                                 path loss, exact top-k tree search
//   HardFusion, SoftFusion       fusion.hpp       SurfaceFusion of two logit sources
//   Sparsemax, Entmax15, Entmax, entmax.hpp       sparse distributions (sparsemax, 1.5- and
//     SparsemaxLoss, EntmaxLoss                   alpha-entmax) and their Fenchel-Young losses
//                                                 (parts: entmax_maps.hpp, entmax_loss.hpp)
//   mpi::VocabParallelSoftmax,   mpi.hpp          the vocabulary split across MPI ranks; needs
//     ...CrossEntropy, sample                     MPI, so not included here: include it and
//                                                 link softmaxlab::mpi
//   mpi::VocabParallel-          mpi_linear_cross_entropy.hpp  LinearCrossEntropy with W
//     LinearCrossEntropy                          sharded by rows over MPI ranks; needs MPI, so
//                                                 not included here (as mpi.hpp)
//   AttentionSoftmax, Attention, attention.hpp    fused score softmax (scale, softcap, mask x
//     merge_attention                             ALiBi slope, sink); flash-style attention
//                                                 (parts: attention_options.hpp,
//                                                 attention_softmax.hpp, flash_attention.hpp,
//                                                 attention_weights.hpp)
//   MultiHeadAttention           multi_head_attention.hpp  every head in one call: GQA/MQA,
//                                                 windows and ALiBi from positions, 16-bit KV
//   f(t, axis), along_axis,      tensor.hpp       every functor over any axis of an Eigen::Tensor;
//     logsumexp_along_axis                        needs Eigen's Tensor module, so not included
//                                                 here: include it where tensors are used
//
// Every functor maps each 1-D slice of its input to a distribution of the same length:
//   f(x), f.apply(x, y), f.rowwise(X), f.rowwise(X, Y), f.colwise(X), f.colwise(X, Y).
// and its gradient (vector-Jacobian product): f.backward(x, y, dy), f.backward(x, y, dy, dx),
//   f.rowwise_backward(X, Y, dY[, dX]), f.colwise_backward(X, Y, dY[, dX]).
// See docs/numerical-policy.md for the numerical policy and each header's doc block for its accuracy.
#pragma once

#include "adaptive_softmax.hpp"
#include "attention.hpp"
#include "candidate_sampler.hpp"
#include "entmax.hpp"
#include "fusion.hpp"
#include "gumbel.hpp"
#include "hierarchical_softmax.hpp"
#include "linear_cross_entropy.hpp"
#include "logsumexp.hpp"
#include "loss.hpp"
#include "multi_head_attention.hpp"
#include "normalized.hpp"
#include "polynomial.hpp"
#include "power.hpp"
#include "random.hpp"
#include "sampled_softmax.hpp"
#include "sampling.hpp"
#include "single_pass.hpp"
#include "softmax.hpp"
