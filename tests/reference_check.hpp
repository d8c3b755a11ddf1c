// Forwarding header: the mpmath table checks moved to tests/support/reference_check.hpp.
#pragma once

#include "support/reference_check.hpp"
