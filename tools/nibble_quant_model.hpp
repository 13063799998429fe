// nibble-quant's model mode (nibble_quant_model.cpp): MODEL.gguf in, a GGUF model out.
#pragma once

#include <string>

// True when `path` is a GGUF file or a directory: nibble-quant then quantizes a model.
bool is_model_input(const std::string& path);
// The model mode's whole command line (argv[1] is the model).
int quantize_model_file_main(int argc, char** argv);
