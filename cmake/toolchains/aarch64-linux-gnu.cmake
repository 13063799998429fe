# Cross build for AArch64 with Debian's g++-aarch64-linux-gnu; binaries run under
# qemu-aarch64 (binfmt_misc is not available in containers, so the emulator is explicit).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
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
