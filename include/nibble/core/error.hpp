// nibble::Error — the one exception type every library call throws on bad input.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace nibble {

// Every failure a caller can trigger with bad input (shapes, group sizes,
// non-finite values, malformed files) is reported with this type. The message
// names the problem and, where one exists, the expected value.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error("nibble: " + message) {}
};

namespace detail {

// Builds a message from streamable parts: throw_error("group_size ", g, " is odd").
template <class... Parts>
[[noreturn]] inline void throw_error(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  throw Error(out.str());
}

template <class... Parts>
inline void require(bool condition, Parts&&... parts) {
  if (!condition) throw_error(std::forward<Parts>(parts)...);
}

}  // namespace detail
}  // namespace nibble
