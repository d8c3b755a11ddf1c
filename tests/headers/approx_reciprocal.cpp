// <softmaxlab/approx/reciprocal.hpp> alone.
#include <softmaxlab/approx/reciprocal.hpp>

void softmaxlab_header_use_approx_reciprocal() {
  const softmaxlab::approx::ReciprocalRange range(0.25, 1.0);
  const double r = softmaxlab::approx::goldschmidt_reciprocal(0.5, range.z0, 6);
  const softmaxlab::ReciprocalMethod m = softmaxlab::ReciprocalMethod::Newton;
  (void)r;
  (void)m;
}
