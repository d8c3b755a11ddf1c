// softmaxlab: training losses with their gradients. Rows are samples: logits and outputs are
// N x C (N samples, C classes), labels have N entries.
//
// An umbrella: each loss has its own header, and this one includes them all (every name that
// compiled through <softmaxlab/loss.hpp> still does):
//   cross_entropy.hpp    CrossEntropyLoss
//   svm_loss.hpp         L2SvmLoss, argmax_rows
//   normalized_loss.hpp  NormalizedSoftmaxLoss
//   gumbel_loss.hpp      SparseCbmGumbelLoss
//   detail/loss_base.hpp Reduction, RowOutputs (and the shared base)
// The doc block of each loss is in its header; what they share follows.
//
// Accuracy: every log-probability of a loss is computed in double (the difference z_i - max from
// the logits, the log of the sum from its long double value), so for float logits it is exact but
// for the sum's rounding and never overflows (CrossEntropyLoss of the float row [FLT_MAX, -FLT_MAX]
// with label 1 is the finite 2 FLT_MAX); double logits get LogSoftmax's rules (4 eps (1 + |log p|),
// and a difference beyond DBL_MAX is +inf: the loss 2 DBL_MAX is beyond the double it is returned
// in). Every probability in a gradient is Softmax's; the losses are accumulated in double, so a
// loss's relative error is that of its terms plus about N C double roundings (a sum whose terms
// are near DBL_MAX, from logits near DBL_MAX in double, may become +inf before the Mean divides
// it).
// The gradients are checked against fourth-order finite differences in double
// (tests/test_loss.cpp, tests/test_backward_gumbel_normalized.cpp: relative error < 1e-6,
// measured ~1e-11).
//
// Outputs (grad, dW, db, dE, d_o, RowOutputs): a const Matrix does not compile; pass a view/block.
// Errors (std::invalid_argument naming the parameter and value or the shapes, nothing else is
// thrown): a reduction, label_smoothing, penalty or tau out of range (constructors); labels of the
// wrong length or outside [0, C) (other than ignore_index); targets, gradients or parameters of
// the wrong shape; a gradient that partially overlaps the logits or targets (exact in-place on
// the logits is allowed). Non-finite logits are not errors: see each loss for its result.
#pragma once

#include "cross_entropy.hpp"
#include "detail/loss_base.hpp"
#include "gumbel_loss.hpp"
#include "normalized_loss.hpp"
#include "svm_loss.hpp"
