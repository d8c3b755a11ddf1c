// softmaxlab: sparse alternatives to softmax (sparsemax, 1.5-entmax, alpha-entmax) and their
// Fenchel-Young losses. An umbrella: the maps are in entmax_maps.hpp (Sparsemax, Entmax15,
// Entmax and their doc block), the losses in entmax_loss.hpp (EntmaxLoss, SparsemaxLoss).
#pragma once

#include "entmax_loss.hpp"
#include "entmax_maps.hpp"
