// Chat prompts. A GGUF or Hugging Face model carries a Jinja chat template; rather than
// a Jinja interpreter, nibble recognises the template family and formats the messages
// itself. Supported: ChatML (<|im_start|>role\ncontent<|im_end|>\n — SmolLM, Qwen2),
// including a default system message the template inserts when the conversation has
// none (SmolLM2's "You are a helpful AI assistant named SmolLM, ...").
#pragma once

#include <string>
#include <vector>

#include "../core/error.hpp"

namespace nibble::model {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

namespace chat_detail {

// The literal system message a ChatML template inserts when the first message is not a
// system one: the text between "<|im_start|>system\n" and "<|im_end|>" inside a quoted
// Jinja string, if the template has one.
inline std::string chatml_default_system(const std::string& tmpl) {
  const std::string open = "<|im_start|>system\n";
  const std::size_t a = tmpl.find(open);
  if (a == std::string::npos) return "";
  const std::size_t b = tmpl.find("<|im_end|>", a);
  if (b == std::string::npos) return "";
  return tmpl.substr(a + open.size(), b - a - open.size());
}

}  // namespace chat_detail

inline bool is_chatml_template(const std::string& tmpl) {
  return tmpl.find("<|im_start|>") != std::string::npos && tmpl.find("<|im_end|>") != std::string::npos;
}

// The prompt text for `messages`, ending with the assistant's turn opened
// (add_generation_prompt). Special-token texts in it are meant to be tokenized with
// special-token parsing on.
inline std::string apply_chat_template(const std::string& tmpl, const std::vector<ChatMessage>& messages) {
  detail::require(!tmpl.empty(), "the model has no chat template");
  detail::require(is_chatml_template(tmpl),
                  "the model's chat template is not ChatML; nibble formats ChatML (<|im_start|>) prompts only");
  std::string out;
  if (messages.empty() || messages.front().role != "system") {
    const std::string sys = chat_detail::chatml_default_system(tmpl);
    if (!sys.empty()) out += "<|im_start|>system\n" + sys + "<|im_end|>\n";
  }
  for (const ChatMessage& m : messages) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  out += "<|im_start|>assistant\n";
  return out;
}

}  // namespace nibble::model
