// SinglePassSoftmax over the suite's lengths and cache cases (see common.hpp).
#include <softmaxlab/single_pass.hpp>

#include "common.hpp"

namespace {

namespace sml = softmaxlab;

const bool single_pass_registered =
    softmaxlab_bench::register_functor("single_pass", sml::SinglePassSoftmax());

}  // namespace
