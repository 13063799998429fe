# Cross build for AArch64 with Debian's g++-aarch64-linux-gnu; binaries run under
# qemu-aarch64 (binfmt_misc is not available in containers, so the emulator is explicit).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
# NIBBLE_CROSS_COMPILER=clang compiles with clang-14 --target=aarch64-linux-gnu instead,
# against the same GNU cross sysroot and libstdc++ (Clang finds them in /usr/lib/gcc-cross).
if(NIBBLE_CROSS_COMPILER STREQUAL "clang")
  set(CMAKE_C_COMPILER clang-14)
  set(CMAKE_CXX_COMPILER clang++-14)
  set(CMAKE_C_COMPILER_TARGET aarch64-linux-gnu)
  set(CMAKE_CXX_COMPILER_TARGET aarch64-linux-gnu)
else()
  set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
  set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
endif()
# try_compile projects read this file again: hand them the same choices.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES NIBBLE_CROSS_COMPILER NIBBLE_QEMU_CPU)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
# NIBBLE_QEMU_CPU picks the emulated CPU: "max" has dotprod, "cortex-a53" has not.
if(NOT DEFINED NIBBLE_QEMU_CPU)
  set(NIBBLE_QEMU_CPU max)
endif()
set(CMAKE_CROSSCOMPILING_EMULATOR "qemu-aarch64;-cpu;${NIBBLE_QEMU_CPU};-L;/usr/aarch64-linux-gnu")
