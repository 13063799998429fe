#!/usr/bin/env bash
# Builds llama.cpp, the peer nibble is measured against, once, and reuses it.
#
# The source is the llama.cpp tree vendored in the PyPI sdist of llama-cpp-python 0.3.36
# (vendor/llama.cpp, llama.cpp commit 0c1e570 of 2026-10-01); PyPI is the only network
# used. Everything lands in build/peers/ (never in git): the sdist, its unpacked tree, and
# build/peers/llama.cpp-build/bin/ with llama-perplexity, llama-bench, llama-quantize,
# llama-imatrix, llama-simple and llama-tokenize (Release, CPU only, GGML_NATIVE, static).
#
# GGML_NATIVE binaries only run on CPUs like the one that built them, so the build is
# reused only when its stamp records the same sdist hash, CMake flags, compiler and host
# CPU (model, flags, what -march=native enables); anything else rebuilds. The build runs
# in llama.cpp-build.partial/ (an interrupted build resumes there) and is renamed to
# llama.cpp-build/ only when every binary is in place, so a half-done run never looks
# complete. Fails loudly when PyPI cannot be reached — callers decide whether to skip.
#
# Progress goes to stderr; stdout gets one line, the bin directory:
#   bin=$(scripts/build-llama-cpp.sh) && "$bin/llama-perplexity" -m MODEL -f TEXT -c 512
# With --source it is the llama.cpp source tree instead (for ggml's headers; the static
# libraries are under the bin directory's parent, ggml/src/).
# JOBS (default 2) sets the parallel compile jobs. On 2 cores (AMD EPYC Zen 5,
# AVX-512) a full build took 3 min 47 s with -j2, plus about 10 s for the download;
# a reuse takes well under a second.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
peers="$root/build/peers"
version=0.3.36
# The sdist the figures were measured with (the sha256 PyPI lists for it).
sdist_sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
sdist="$peers/llama_cpp_python-$version.tar.gz"
src="$peers/src-${sdist_sha256:0:12}/llama_cpp_python-$version/vendor/llama.cpp"
build="$peers/llama.cpp-build"
partial="$build.partial"
targets=(llama-perplexity llama-bench llama-quantize llama-imatrix llama-simple llama-tokenize)
cmake_flags=(-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF
             -DGGML_CPU=ON -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF
             -DGGML_CCACHE=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
             -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF
             -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=ON)
jobs=${JOBS:-2}
python=${PYTHON:-python3}
say() { echo "build-llama-cpp: $*" >&2; }
result() { if [ "${1:-}" = --source ]; then echo "$src"; else echo "$build/bin"; fi; }
die() { say "$*"; exit 1; }

mkdir -p "$peers"
# One run at a time: a second caller waits, then finds the build done.
exec 9>"$peers/.lock"
flock 9

# What decides whether a finished build can be reused on this host.
cpu_flags=$(grep -m1 -E '^(flags|Features)[[:space:]]*:' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | tr ' ' '\n' |
            sed '/^$/d' | sort | tr '\n' ' ')
cpu_model=$(grep -m1 -E '^model name[[:space:]]*:' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')
native=$(${CC:-cc} -march=native -dM -E -x c /dev/null 2>/dev/null | sort | sha256sum | cut -d' ' -f1)
stamp="llama-cpp-python $version sdist sha256 $sdist_sha256
cmake ${cmake_flags[*]}
targets ${targets[*]}
cc $(${CC:-cc} --version 2>/dev/null | head -1)
c++ $(${CXX:-c++} --version 2>/dev/null | head -1)
cpu ${cpu_model:-unknown} ($(uname -m))
cpu flags sha256 $(printf '%s' "$cpu_flags" | sha256sum | cut -d' ' -f1)
cc -march=native macros sha256 $native"

have_all() {
  local t
  for t in "${targets[@]}"; do [ -x "$1/bin/$t" ] || return 1; done
}
if [ -f "$build/stamp" ] && [ "$(cat "$build/stamp")" = "$stamp" ] && have_all "$build"; then
  say "reusing the build in $build ($(sed -n 's/^built in //p' "$build/build-info.txt" 2>/dev/null || echo '?'))"
  result "$@"
  exit 0
fi
[ -d "$build" ] && say "the build in $build was made for another sdist, flags or host CPU: rebuilding"

# 1. The sdist, downloaded with pip into a temporary directory and renamed into place.
if [ -f "$sdist" ] && [ "$(sha256sum "$sdist" | cut -d' ' -f1)" != "$sdist_sha256" ]; then
  say "removing $sdist: its sha256 is not the pinned one"
  rm -f "$sdist"
fi
if [ ! -f "$sdist" ]; then
  say "downloading the llama-cpp-python $version sdist from PyPI"
  dl=$(mktemp -d "$peers/.download.XXXXXX")
  trap 'rm -rf "$dl"' EXIT
  # pip prepares the sdist's metadata (scikit-build-core, in an isolated env) but compiles
  # nothing. Only this package is asked for as source: with --no-binary :all: pip also
  # built the metadata step's own dependencies from source, 5 minutes of CPU on 2 cores.
  if ! "$python" -m pip download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$version" -d "$dl" >&2; then
    die "FAILED to download llama-cpp-python==$version from PyPI (network?); llama.cpp cannot be built"
  fi
  got=$(sha256sum "$dl/llama_cpp_python-$version.tar.gz" | cut -d' ' -f1)
  [ "$got" = "$sdist_sha256" ] ||
    die "the downloaded llama_cpp_python-$version.tar.gz has sha256 $got, expected $sdist_sha256"
  mv "$dl/llama_cpp_python-$version.tar.gz" "$sdist"
  rm -rf "$dl"
  trap - EXIT
else
  sha=$(sha256sum "$sdist" | cut -d' ' -f1)
  [ "$sha" = "$sdist_sha256" ] || die "$sdist has sha256 $sha, expected $sdist_sha256"
fi

# 2. The unpacked tree (it carries llama.cpp's git metadata, so the binaries report its commit).
srcdir=$(dirname "$(dirname "$(dirname "$src")")")
if [ ! -f "$src/CMakeLists.txt" ]; then
  say "unpacking $sdist"
  rm -rf "$srcdir"
  ex=$(mktemp -d "$peers/.unpack.XXXXXX")
  trap 'rm -rf "$ex"' EXIT
  tar -xzf "$sdist" -C "$ex"
  [ -f "$ex/llama_cpp_python-$version/vendor/llama.cpp/CMakeLists.txt" ] ||
    die "the sdist has no vendor/llama.cpp/CMakeLists.txt; cannot build llama.cpp from it"
  chmod 755 "$ex"
  mv "$ex" "$srcdir"
  trap - EXIT
fi

# 3. Configure and build only the programs the checks run. A partial build made for the
# same stamp is resumed; any other is discarded.
if [ -d "$partial" ] && [ "$(cat "$partial/stamp.wanted" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$partial"
fi
mkdir -p "$partial"
printf '%s\n' "$stamp" >"$partial/stamp.wanted"
log="$partial/build.log"
say "building ${targets[*]} with -j$jobs into $partial (log: $log)"
start=$(date +%s)
if ! { cmake -S "$src" -B "$partial" "${cmake_flags[@]}" &&
       cmake --build "$partial" -j"$jobs" --target "${targets[@]}"; } >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  die "the llama.cpp build FAILED (full log: $log)"
fi
have_all "$partial" || die "the build finished but not every program is in $partial/bin (log: $log)"
secs=$(( $(date +%s) - start ))
printf 'built in %d s (%d:%02d) with -j%s on %s, %s\n' "$secs" $((secs / 60)) $((secs % 60)) "$jobs" \
  "${cpu_model:-unknown}" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$partial/build-info.txt"
printf '%s\n' "$stamp" >"$partial/stamp"
rm -f "$partial/stamp.wanted"
rm -rf "$build"
mv "$partial" "$build"
say "$(cat "$build/build-info.txt")"
result "$@"
