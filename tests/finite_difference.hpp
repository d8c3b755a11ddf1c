// Forwarding header: finite differences moved to tests/support/finite_difference.hpp.
#pragma once

#include "support/finite_difference.hpp"
