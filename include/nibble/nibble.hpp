// nibble: header-only 4-bit weight quantization. Include this one header.
#pragma once

#include "core/error.hpp"
#include "core/half.hpp"
#include "core/version.hpp"
#include "format/codebook.hpp"
#include "format/dynamic_map.hpp"
#include "format/packing.hpp"
#include "format/quantized_matrix.hpp"
#include "format/scales.hpp"
#include "kernels/cpu.hpp"
#include "kernels/gemv.hpp"
#include "kernels/packed_matrix.hpp"
#include "quant/group_quantizer.hpp"
#include "quant/metrics.hpp"
#include "quant/rtn.hpp"
