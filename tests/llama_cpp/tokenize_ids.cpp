// Prints the token ids nibble's BpeTokenizer gives for a file, in llama-tokenize --ids
// format ("[1, 2, 3]"), for tests/llama_cpp/check_tokenizer.sh.
//
//   tokenize_ids MODEL.gguf FILE [--parse-special] [--add-special] [--words]
//   tokenize_ids MODEL.gguf FILE --bench       (prints tokens and seconds)
//
// --words prints the pre-tokenizer's words instead (one per line, C-escaped); --pieces
// prints "%6d -> '<piece>'" lines as llama-tokenize does without --ids (token_to_piece
// with special tokens rendered).
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include <nibble/io/binary.hpp>
#include <nibble/model/bpe_tokenizer.hpp>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL.gguf FILE [--parse-special] [--add-special] [--words|--pieces|--bench]\n",
                 argv[0]);
    return 2;
  }
  bool parse_special = false, add_special = false, words = false, bench = false, pieces = false;
  for (int i = 3; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--parse-special")) parse_special = true;
    else if (!std::strcmp(argv[i], "--add-special")) add_special = true;
    else if (!std::strcmp(argv[i], "--words")) words = true;
    else if (!std::strcmp(argv[i], "--bench")) bench = true;
    else if (!std::strcmp(argv[i], "--pieces")) pieces = true;
    else {
      std::fprintf(stderr, "unknown option %s\n", argv[i]);
      return 2;
    }
  }
  try {
    const auto reader = nibble::io::GgufReader::open(argv[1]);
    const auto tok = nibble::model::BpeTokenizer::from_gguf(reader);
    const auto file = nibble::io::FileBytes::open(argv[2]);
    const std::string text(reinterpret_cast<const char*>(file.view().data), file.view().size);
    if (words) {
      for (const auto& w : tok.pre_tokenize(text)) {
        for (unsigned char c : w) {
          if (c == '\\') std::printf("\\\\");
          else if (c < 0x20 || c == 0x7F) std::printf("\\x%02x", c);
          else std::putchar(c);
        }
        std::putchar('\n');
      }
      return 0;
    }
    const auto t0 = std::chrono::steady_clock::now();
    const auto ids = tok.encode(text, add_special, parse_special);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (bench) {
      std::printf("%zu bytes -> %zu tokens in %.3f s (%.1f MB/s)\n", text.size(), ids.size(), s, text.size() / s / 1e6);
      return 0;
    }
    if (pieces) {
      for (int id : ids) {
        const std::string p = tok.token_to_piece(id, true);
        std::printf("%6d -> '", id);
        std::printf("%s", p.c_str());  // as llama-tokenize prints it: a NUL byte ends the piece
        std::printf("'\n");
      }
      return 0;
    }
    std::printf("[");
    for (std::size_t i = 0; i < ids.size(); ++i) std::printf(i ? ", %d" : "%d", ids[i]);
    std::printf("]\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
