"""nibble's CodeFit::bitsandbytes against bitsandbytes itself (PyPI bitsandbytes + torch, CPU).

    check_bnb.py DIR     DIR holds cases.safetensors (tests/interop/bnb_fixtures.cpp),
                         cli_bnb_nf4.safetensors (nibble-quant --format bnb-nf4 --double-quant),
                         its nibble dequantization cli_deq.safetensors and model.safetensors.

Every case runs bitsandbytes.functional.quantize_4bit on nibble's input and requires equal
packed codes, absmax, scale codes, second-level absmax, offset and dequantized values
(dequantize_4bit on bitsandbytes' own output). Exits non-zero on any difference.
"""
import json
import sys

import numpy as np
import torch
import bitsandbytes
import bitsandbytes.functional as F
from safetensors.numpy import load_file
from safetensors import safe_open

failures = 0


def report(name, what, got, want, by_value=False):
    """Counts differing entries: bitwise for floats, or by value (-0.0 == 0.0) if by_value."""
    global failures
    got = np.ascontiguousarray(got).reshape(-1)
    want = np.ascontiguousarray(want).reshape(-1)
    if got.shape != want.shape:
        failures += 1
        print(f"FAIL {name}: {what} has {got.size} entries, bitsandbytes {want.size}")
        return 1
    if got.dtype == np.float32 and by_value:
        differ = int(np.count_nonzero(got != want))
        if differ:
            failures += 1
            i = int(np.flatnonzero(got != want)[0])
            print(f"FAIL {name}: {what}: {differ} / {got.size} differ (first at {i}: nibble {got[i]!r}, bitsandbytes {want[i]!r})")
        return differ
    if got.dtype == np.float32:
        differ = int(np.count_nonzero(got.view(np.uint32) != want.view(np.uint32)))
    else:
        differ = int(np.count_nonzero(got != want))
    if differ:
        failures += 1
        i = int(np.flatnonzero(got.view(np.uint32) != want.view(np.uint32) if got.dtype == np.float32 else got != want)[0])
        print(f"FAIL {name}: {what}: {differ} / {got.size} differ (first at {i}: nibble {got[i]!r}, bitsandbytes {want[i]!r})")
    return differ


def check_case(c, t):
    name = c["name"]
    w = t[f"{name}.w"]
    rows, cols = w.shape
    n = rows * cols
    torch.set_num_threads(1 if c["one_thread"] else default_threads)
    packed, st = F.quantize_4bit(torch.from_numpy(w.copy()), blocksize=c["blocksize"],
                                 compress_statistics=c["dq"], quant_type=c["quant_type"])
    bnb_bytes = packed.numpy().reshape(-1)
    ours = t[f"{name}.codes"]
    counts = []
    if cols % 2 == 0:
        counts.append(report(name, "packed code bytes", ours, bnb_bytes))
    else:  # one odd row: compare the n real nibbles; bitsandbytes pads with the code of 0.0
        def nibbles(b):
            return np.stack([b >> 4, b & 15], axis=1).reshape(-1)[:n]
        counts.append(report(name, "codes (nibbles)", nibbles(ours), nibbles(bnb_bytes)))
    if c["dq"]:
        counts.append(report(name, "scale codes", t[f"{name}.qabsmax"], st.absmax.numpy()))
        counts.append(report(name, "second-level absmax", t[f"{name}.absmax2"], st.state2.absmax.numpy()))
        counts.append(report(name, "offset", t[f"{name}.offset"], np.array([st.offset.item()], np.float32)))
        absmax = (F.dequantize_blockwise(st.absmax, st.state2) + st.offset).numpy()
    else:
        absmax = st.absmax.numpy()
    counts.append(report(name, "absmax (decoded)", t[f"{name}.absmax"], absmax))
    deq = F.dequantize_4bit(packed, st).numpy()
    # bitsandbytes' FP4 table holds +0.0 for code 8 (get_4bit_type writes the integer -0),
    # nibble's -0.0: equal values, so values compare by value and the zero signs are counted.
    counts.append(report(name, "dequantized values", t[f"{name}.deq"], deq, by_value=True))
    zero_signs = int(np.count_nonzero(t[f"{name}.deq"].reshape(-1).view(np.uint32) != deq.reshape(-1).view(np.uint32)))
    status = "ok  " if not any(counts) else "FAIL"
    print(f"{status} {name:28s} {rows}x{cols} {c['quant_type']} g{c['blocksize']}{' dq' if c['dq'] else ''}: "
          f"{bnb_bytes.size} code bytes, {absmax.size} absmax, {n} values; differing: "
          + ", ".join(str(x) for x in counts) + (f" (zeros with the other sign bit: {zero_signs})" if zero_signs else ""))


def check_checkpoint(d):
    """A nibble-quant bnb-nf4 file: bitsandbytes dequantizes it to nibble's dequantize(), and
    its bytes are what bitsandbytes' own quantize_4bit writes for the input weights."""
    ours = load_file(f"{d}/cli_deq.safetensors")
    model = load_file(f"{d}/model.safetensors")
    ckpt = f"{d}/cli_bnb_nf4.safetensors"
    with safe_open(ckpt, "pt") as fh:
        keys = list(fh.keys())
        tensors = {k: fh.get_tensor(k) for k in keys}
    weights = sorted(k[: -len(".quant_state.bitsandbytes__nf4")] for k in keys
                     if k.endswith(".quant_state.bitsandbytes__nf4"))
    if not weights:
        global failures
        failures += 1
        print("FAIL checkpoint: no bitsandbytes nf4 tensors in", ckpt)
    for name in weights:
        qs = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
        state = F.QuantState.from_dict(qs, device=torch.device("cpu"))
        deq = F.dequantize_4bit(tensors[name], state).numpy()
        a = report(f"checkpoint {name}", "bitsandbytes dequantize_4bit vs nibble dequantize()", ours[name], deq,
                   by_value=True)
        packed, st = F.quantize_4bit(torch.from_numpy(model[name].copy()), blocksize=state.blocksize,
                                     compress_statistics=True, quant_type="nf4")
        b = report(f"checkpoint {name}", "file bytes vs bitsandbytes quantize_4bit", tensors[name].numpy(),
                   packed.numpy())
        e = report(f"checkpoint {name}", "file scale codes", qs["absmax"].numpy(), st.absmax.numpy())
        status = "ok  " if not (a or b or e) else "FAIL"
        print(f"{status} checkpoint {name} {tuple(state.shape)} blocksize {state.blocksize}: differing values {a}, "
              f"bytes {b}, scale codes {e}")


def main(d):
    print(f"bitsandbytes {bitsandbytes.__version__}, torch {torch.__version__}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, threads {default_threads}")
    with safe_open(f"{d}/cases.safetensors", "np") as fh:
        cases = json.loads(fh.metadata()["cases"])
    t = load_file(f"{d}/cases.safetensors")
    for c in cases:
        check_case(c, t)
    torch.set_num_threads(default_threads)
    check_checkpoint(d)
    if failures:
        print(f"bitsandbytes check: {failures} comparisons FAILED")
        return 1
    print(f"bitsandbytes check: {len(cases)} cases and the nibble-quant checkpoint are byte-identical")
    return 0


default_threads = torch.get_num_threads()
if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
