#pragma once

#define NIBBLE_VERSION_MAJOR 0
#define NIBBLE_VERSION_MINOR 1
#define NIBBLE_VERSION_PATCH 0

namespace nibble {
inline constexpr const char* version_string() { return "0.1.0"; }
}  // namespace nibble
