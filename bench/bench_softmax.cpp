// Softmax and LogSoftmax over the suite's lengths and cache cases (see common.hpp).
#include <softmaxlab/softmax.hpp>

#include "common.hpp"

namespace {

namespace sml = softmaxlab;

const bool softmax_registered = softmaxlab_bench::register_functor("softmax", sml::Softmax(), true);
const bool log_softmax_registered =
    softmaxlab_bench::register_functor("log_softmax", sml::LogSoftmax());

}  // namespace
