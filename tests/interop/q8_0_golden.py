"""Golden bytes for int8_matrix_test's QuantizeQ8_0.MatchesGgufPy: gguf-py's Q8_0
quantizer (bit-exact to llama.cpp's quantize_row_q8_0_ref, per its own comment) on a
3 x 96 matrix whose values both sides compute the same way. Prints the bytes as hex.

  build/pyenv/bin/python tests/interop/q8_0_golden.py   (venv of scripts/test-interop.sh)
"""
import numpy as np
from gguf import quants, GGMLQuantizationType

rows, cols = 3, 96
x = np.zeros((rows, cols), dtype=np.float32)
for r in range(rows):
    for c in range(cols):
        i = r * cols + c
        n = (i * 7919) % 2001 - 1000
        if r == 1 and c < 32:      # amax 127 -> d = 1: x*id are exact ties k + 0.5
            v = 127.0 if c == 0 else (c - 16) + 0.5
        elif r == 1 and c < 64:    # all-zero block
            v = 0.0
        elif r == 1 and c < 96:    # tiny block: the fp16 d rounds to 0
            v = 1e-30 * n
        else:
            v = n / 37.0
        x[r, c] = np.float32(v)
b = quants.quantize(x, GGMLQuantizationType.Q8_0)
print(b.tobytes().hex())
