#!/usr/bin/env python3
"""Compares what nibble's imatrix reader (imatrix_dump) reads from llama-imatrix's output
with the same files read independently here: the GGUF form with gguf-py (mean =
in_sum2 / counts in float32, count 0 -> 1.0 as llama-quantize does), the legacy
imatrix.dat with struct/numpy from its documented layout (mean = value / ncall).
Values must match bit for bit; the two formats of the same run must agree to float
rounding.

  check_imatrix.py IMATRIX_DUMP FILE.gguf FILE.dat
"""
import struct
import subprocess
import sys

import numpy as np
from gguf import GGUFReader


def dump(tool, path):
    out = subprocess.run([tool, path], check=True, capture_output=True, text=True).stdout.splitlines()
    head = out[0].split(" ", 7)
    meta = {"format": head[1], "chunks": int(head[3]), "chunk_size": int(head[5]),
            "datasets": head[7].split("|") if head[7] else []}
    entries = {}
    for line in out[1:]:
        f = line.split(" ")
        entries[f[0]] = (int(f[1]), int(f[2]), [int(c) for c in f[3].split(",")],
                         np.array([float(v) for v in f[4:]], dtype=np.float32))
    return meta, entries


def read_gguf(path):
    r = GGUFReader(path)

    def field(name):
        f = r.fields[name]
        return f.parts[f.data[0]]

    meta = {"chunks": int(field("imatrix.chunk_count")[0]), "chunk_size": int(field("imatrix.chunk_size")[0]),
            "datasets": [bytes(r.fields["imatrix.datasets"].parts[i]).decode() for i in r.fields["imatrix.datasets"].data]}
    assert bytes(field("general.type")).decode() == "imatrix"
    sums, counts = {}, {}
    for t in r.tensors:
        if t.name.endswith(".in_sum2"):
            sums[t.name[:-8]] = np.array(t.data, dtype=np.float32)
        elif t.name.endswith(".counts"):
            counts[t.name[:-7]] = np.array(t.data, dtype=np.float32).reshape(-1)
        else:
            raise SystemExit(f"unexpected tensor {t.name}")
    assert sums.keys() == counts.keys()
    entries = {}
    for name, s in sums.items():
        s = s.reshape(len(counts[name]), -1)
        mean = np.empty_like(s)
        for k, c in enumerate(counts[name]):
            mean[k] = s[k] / np.float32(c) if c > 0 else np.float32(1.0)
        entries[name] = (s.shape[1], s.shape[0], [int(c) for c in counts[name]], mean.reshape(-1))
    return meta, entries


def read_dat(path):
    b = open(path, "rb").read()
    pos = 0

    def i32():
        nonlocal pos
        v = struct.unpack_from("<i", b, pos)[0]
        pos += 4
        return v

    entries = {}
    for _ in range(i32()):
        n = i32()
        name = b[pos:pos + n].decode()
        pos += n
        ncall, nval = i32(), i32()
        v = np.frombuffer(b, dtype="<f4", count=nval, offset=pos)
        pos += 4 * nval
        entries[name] = (nval, 1, [ncall], (v / np.float32(ncall)).astype(np.float32))
    meta = {"chunks": i32()}
    n = i32()
    meta["datasets"] = [b[pos:pos + n].decode()] if n else []
    assert pos + n == len(b), "trailing bytes"
    return meta, entries


def compare(label, ours, ref):
    (om, oe), (rm, re) = ours, ref
    for k, v in rm.items():
        if om[k] != v:
            raise SystemExit(f"{label}: {k} is {om[k]}, expected {v}")
    if oe.keys() != re.keys():
        raise SystemExit(f"{label}: entry names differ: {sorted(oe.keys() ^ re.keys())[:5]}")
    for name, (cols, mats, counts, vals) in re.items():
        o = oe[name]
        if (o[0], o[1], o[2]) != (cols, mats, counts):
            raise SystemExit(f"{label}: {name} shape/counts {o[:3]} != {(cols, mats, counts)}")
        if not np.array_equal(o[3].view(np.uint32), vals.view(np.uint32)):
            i = int(np.argmax(o[3] != vals))
            raise SystemExit(f"{label}: {name} value {i}: nibble {o[3][i]!r}, reference {vals[i]!r}")
    print(f"{label}: {len(re)} entries, {sum(len(v[3]) for v in re.values())} values identical; "
          f"chunks {rm['chunks']}, datasets {rm['datasets']}")


def main():
    tool, gguf_path, dat_path = sys.argv[1:4]
    g_ours, g_ref = dump(tool, gguf_path), read_gguf(gguf_path)
    d_ours, d_ref = dump(tool, dat_path), read_dat(dat_path)
    compare("gguf", g_ours, g_ref)
    compare("dat", d_ours, d_ref)
    # Same collection run written both ways: the legacy form went through (sum/count)·ncall/ncall.
    worst = 0.0
    for name, (_, _, _, g) in g_ours[1].items():
        d = d_ours[1][name][3]
        worst = max(worst, float(np.max(np.abs(g - d) / np.maximum(np.abs(g), 1e-30))))
    if worst > 1e-5:
        raise SystemExit(f"gguf and dat disagree: worst relative difference {worst:.3g}")
    print(f"gguf vs dat: same {len(g_ours[1])} entries, worst relative difference {worst:.2e}")


if __name__ == "__main__":
    main()
