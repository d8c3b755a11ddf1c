// Test support shared by every test file, one header per concern under tests/support/: allocation
// counting (allocation.hpp; hooks in main.cpp), error measures in units of eps and worst-case
// tracking (error_measures.hpp), random and chosen inputs (random_inputs.hpp), long-double softmax
// references (softmax_reference.hpp), the attention reference (attention_reference.hpp) and finite
// differences (finite_difference.hpp). The mpmath table checks are in support/reference_check.hpp.
// CMake includes eigen_prelude.hpp before anything else in every test file.
#pragma once

#include "support/allocation.hpp"
#include "support/attention_reference.hpp"
#include "support/error_measures.hpp"
#include "support/finite_difference.hpp"
#include "support/random_inputs.hpp"
#include "support/softmax_reference.hpp"
