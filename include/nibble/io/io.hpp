// nibble's file formats in one include. Needs nlohmann/json.hpp on the include path:
// link the CMake target nibble::io (nibble::nibble alone depends on Eigen only, so
// <nibble/nibble.hpp> does not include this header).
#pragma once

#include "awq_checkpoint.hpp"
#include "binary.hpp"
#include "bnb_checkpoint.hpp"
#include "gguf.hpp"
#include "gguf_metadata.hpp"
#include "gptq_checkpoint.hpp"
#include "imatrix.hpp"
#include "nibble_file.hpp"
#include "safetensors.hpp"
