"""Independent check of nibble's GGUF decoders with the PyPI package gguf (gguf-py).

The reverse of check.py: here Python writes (or is given) the GGUF file and nibble reads
it. tests/interop/decode_gguf.cpp decodes every tensor with nibble and streams the float32
values; they must equal gguf-py's own `gguf.quants.dequantize` bit for bit (compared as
uint32 patterns, so -0.0 and NaN payloads count). With a real model file, each Q4_1
tensor imported into a QuantizedMatrix must also dequantize to within the documented
rounding bound |diff| <= 2^-22 * (15|d| + |m|) of the file's values.

    python check_decode.py DECODER generated WORK_DIR
    python check_decode.py DECODER real FILE.gguf
"""
import struct
import subprocess
import sys
import time

import numpy as np
import gguf
from gguf.quants import dequantize, quantize

T = gguf.GGMLQuantizationType
failures = []


def check(name, ok, detail=""):
    print(("ok    " if ok else "FAIL  ") + name + (("  " + detail) if detail else ""), flush=True)
    if not ok:
        failures.append(name)


def records(decoder, path, *flags):
    """Yields (name, kind, float32 array) from decode_gguf's stream, one tensor at a time."""
    proc = subprocess.Popen([decoder, path, *flags], stdout=subprocess.PIPE)
    out = proc.stdout

    def read(n):
        buf = out.read(n)
        if len(buf) != n:
            raise EOFError(f"decode_gguf stream ended early ({len(buf)} of {n} bytes)")
        return buf

    while True:
        head = out.read(4)
        if not head:
            break
        if len(head) < 4:
            head += read(4 - len(head))
        (n,) = struct.unpack("<I", head)
        name = read(n).decode()
        kind, count = struct.unpack("<IQ", read(12))
        yield name, kind, np.frombuffer(read(4 * count), dtype=np.float32)
    if proc.wait() != 0:
        check(f"decode_gguf {path} exit status", False, f"exit code {proc.returncode}")


def bit_equal(name, got, want):
    want = np.ascontiguousarray(want, dtype=np.float32).reshape(-1)
    if got.shape != want.shape:
        check(name, False, f"{got.size} values, gguf-py has {want.size}")
        return
    differ = np.count_nonzero(got.view(np.uint32) != want.view(np.uint32))
    with np.errstate(invalid="ignore"):
        diff = np.nanmax(np.abs(got - want)) if got.size else 0.0
    check(name, differ == 0, f"{got.size} values, {differ} differ (max |diff| {diff:.3g})")


def f16_field(rng, n, lo, hi):
    """n finite f16 values with magnitudes in [lo, hi) and random signs, as raw bytes."""
    v = rng.uniform(lo, hi, n) * rng.choice([-1.0, 1.0], n)
    return v.astype(np.float16).view(np.uint8).reshape(n, 2)


# Byte offsets of the f16 fields of the block types gguf-py cannot quantize; raw random
# bytes elsewhere are valid codes / 6-bit scales / int8 scales for every bit pattern.
F16_FIELDS = {T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208], T.IQ4_NL: [0], T.Q4_0: [0], T.Q4_1: [0, 2],
              T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0]}
TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL]


def generated(decoder, work):
    rng = np.random.default_rng(2026)
    path = f"{work}/types.gguf"
    w = gguf.GGUFWriter(path, "llama")
    made = {}
    for qt in TYPES:
        block, tsize = gguf.GGML_QUANT_SIZES[qt]
        rows, cols = 7, (3 * block if block > 1 else 96)  # odd rows, several blocks per row
        x = (rng.standard_normal((rows, cols)) * 0.05 + rng.uniform(-0.02, 0.02, (rows, 1))).astype(np.float32)
        try:
            raw = np.ascontiguousarray(quantize(x, qt)).view(np.uint8).reshape(rows, -1)
            how = "gguf-py quantize"
        except NotImplementedError:
            raw = rng.integers(0, 256, (rows * cols // block, tsize), dtype=np.uint8)
            for off in F16_FIELDS[qt]:
                raw[:, off:off + 2] = f16_field(rng, raw.shape[0], 1e-4, 0.1)
            raw = raw.reshape(rows, -1)
            how = "random bytes"
        name = f"t.{qt.name}"
        w.add_tensor(name, raw, raw_dtype=qt)
        made[name] = how
        # A second, raw-bytes tensor for each block type gguf-py can quantize, so that code
        # patterns its quantizer never emits (and both signs of every scale) are decoded too.
        if how != "random bytes" and qt in F16_FIELDS:
            rb = rng.integers(0, 256, (rows * cols // block, tsize), dtype=np.uint8)
            for off in F16_FIELDS[qt]:
                rb[:, off:off + 2] = f16_field(rng, rb.shape[0], 1e-4, 0.1)
            w.add_tensor(f"raw.{qt.name}", rb.reshape(rows, -1), raw_dtype=qt)
            made[f"raw.{qt.name}"] = "random bytes"
    w.add_tensor("norm.F32", rng.standard_normal(96).astype(np.float32))  # 1-D
    made["norm.F32"] = "1-D"
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    reader = gguf.GGUFReader(path)
    want = {t.name: (t.tensor_type, dequantize(t.data, t.tensor_type)) for t in reader.tensors}
    seen = set()
    for name, kind, got in records(decoder, path):
        qt, ref = want[name]
        bit_equal(f"generated {name} ({qt.name}, {made[name]}) == gguf-py dequantize", got, ref)
        seen.add(name)
    check("generated: every tensor decoded", seen == set(want), f"{len(seen)} of {len(want)}")
    check("generated: every type covered", {want[n][0] for n in seen} == set(TYPES))


def real(decoder, path):
    t0 = time.time()
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    per_type = {}
    q41_worst = {"abs": 0.0, "rel": 0.0, "n": 0, "exact": 0, "tensors": 0}
    seen = set()
    for name, kind, got in records(decoder, path, "--import-q4_1"):
        t = tensors[name]
        qt = t.tensor_type
        if kind == 0:
            ref = dequantize(t.data, qt).astype(np.float32, copy=False).reshape(-1)
            differ = np.count_nonzero(got.view(np.uint32) != ref.view(np.uint32)) if got.size == ref.size else -1
            s = per_type.setdefault(qt.name, [0, 0, 0])
            s[0] += 1
            s[1] += got.size
            if differ != 0:
                check(f"real {name} ({qt.name}) == gguf-py dequantize", False,
                      f"{differ} of {got.size} values differ" if differ > 0 else f"{got.size} vs {ref.size} values")
                s[2] += max(differ, 1)
            seen.add(name)
        else:
            ref = dequantize(t.data, qt).astype(np.float32, copy=False).reshape(-1)
            blocks = np.asarray(t.data).view(np.uint8).reshape(-1, 20)
            d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32).reshape(-1)
            m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32).reshape(-1)
            bound = np.repeat(np.ldexp(15 * np.abs(d) + np.abs(m), -22), 32)
            diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
            ok = got.size == ref.size and bool(np.all(diff <= bound))
            if not ok:
                check(f"real {name} Q4_1 import within 2^-22*(15|d|+|m|)", False,
                      f"max diff {diff.max():.3g}, {np.count_nonzero(diff > bound)} values over the bound")
            q41_worst["abs"] = max(q41_worst["abs"], float(diff.max()))
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = np.where(bound > 0, diff / bound, 0.0)
            q41_worst["rel"] = max(q41_worst["rel"], float(rel.max()))
            q41_worst["n"] += diff.size
            q41_worst["exact"] += int(np.count_nonzero(diff == 0))
            q41_worst["tensors"] += 1
    check("real: every tensor decoded", seen == set(tensors), f"{len(seen)} of {len(tensors)}")
    for tn, (count, values, bad) in sorted(per_type.items()):
        check(f"real {tn}: {count} tensors, {values} values bit-identical to gguf-py", bad == 0,
              f"{bad} values differ" if bad else "")
    n_q41 = sum(1 for t in tensors.values() if t.tensor_type == T.Q4_1 and len(t.shape) == 2)
    check(f"real Q4_1 import: {q41_worst['tensors']} tensors, {q41_worst['n']} values within the bound",
          q41_worst["tensors"] == n_q41 and q41_worst["tensors"] > 0,
          f"max |diff| {q41_worst['abs']:.3g}, max diff/bound {q41_worst['rel']:.3f}, "
          f"{q41_worst['exact'] / max(q41_worst['n'], 1):.1%} exactly equal")
    print(f"real file checked in {time.time() - t0:.1f}s")


def main():
    decoder, mode, arg = sys.argv[1:4]
    if mode == "generated":
        generated(decoder, arg)
    else:
        real(decoder, arg)
    if failures:
        print(f"check_decode: {len(failures)} FAILED", file=sys.stderr)
        sys.exit(1)
    print("check_decode: all OK")


if __name__ == "__main__":
    main()
