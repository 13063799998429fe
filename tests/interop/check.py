"""Independent check of nibble's exporters with the PyPI packages gguf, safetensors, numpy.

Every file written by write_fixtures is read with these packages and dequantized by
code that knows only the published layouts (gguf-py's own dequantize for GGUF; numpy
in packed_formats.py, written from reference/algorithms.md §1.6, §2.3, §3.3, for GPTQ/AWQ/bnb). The
result must equal nibble's dequantization bit for bit; Q4_0 bytes must also equal
gguf-py's own Q4_0 quantizer run on the original weights.

    python check.py FIXTURE_DIR
"""
import json
import sys

import numpy as np
import gguf
from gguf.quants import dequantize, quantize
from safetensors import safe_open
from safetensors.numpy import load_file

from packed_formats import dequant_awq, dequant_bnb, dequant_gptq

failures = []


def check(name, ok, detail=""):
    print(("ok    " if ok else "FAIL  ") + name + (("  " + detail) if detail else ""))
    if not ok:
        failures.append(name)


def same(name, got, want):
    got = np.asarray(got, dtype=np.float32)
    if got.shape != want.shape:
        check(name, False, f"shape {got.shape} != {want.shape}")
        return
    diff = np.abs(got - want)
    check(name, np.array_equal(got, want), f"max |diff| {diff.max():.3g}, {np.count_nonzero(diff)} of {diff.size} differ")


def main(d):
    exp = load_file(f"{d}/expected.safetensors")

    # ---- GGUF: gguf-py reader + gguf-py dequantize / quantize --------------------------
    reader = gguf.GGUFReader(f"{d}/model.gguf")
    fields = {f.name: f for f in reader.fields.values()}
    arch = fields["general.architecture"]
    check("gguf general.architecture", bytes(arch.parts[arch.data[0]]).decode() == "llama")
    for t in reader.tensors:
        key = f"model.gguf/{t.name}"
        rows, cols = exp[key + ".deq"].shape
        deq = dequantize(t.data, t.tensor_type).reshape(rows, cols)
        same(f"gguf {t.name} ({t.tensor_type.name}) dequantize", deq, exp[key + ".deq"])
        if t.tensor_type == gguf.GGMLQuantizationType.Q4_0:
            ref = quantize(exp[key + ".orig"].astype(np.float32), gguf.GGMLQuantizationType.Q4_0)
            ours = np.asarray(t.data).reshape(-1).view(np.uint8)
            check(f"gguf {t.name} Q4_0 bytes == gguf-py quantize", np.array_equal(ours, ref.reshape(-1).view(np.uint8)),
                  f"{np.count_nonzero(ours != ref.reshape(-1).view(np.uint8))} bytes differ")

    # ---- GPTQ: qweight packs 8 input rows per int32, qzeros 8 output columns -------------
    for fname, v1 in (("gptq_v1.safetensors", True), ("gptq_v2.safetensors", False)):
        f = load_file(f"{d}/{fname}")
        for layer in ("model.layers.0.mlp.up_proj", "model.layers.0.self_attn.q_proj",
                      "model.layers.0.self_attn.k_proj"):  # k_proj: act-order g_idx
            g_idx = f[layer + ".g_idx"]
            if layer.endswith("k_proj"):
                check(f"{fname} {layer} g_idx is an act-order layout", bool(np.any(np.diff(g_idx) < 0)))
            w = dequant_gptq(f[layer + ".qweight"], f[layer + ".qzeros"], f[layer + ".scales"], g_idx, v1, layer)
            same(f"{fname} {layer}", w, exp[f"{fname}/{layer}.deq"])
    with safe_open(f"{d}/gptq_v1.safetensors", "np") as fh:
        cfg = json.loads(fh.metadata()["quantize_config"])
        check("gptq quantize_config keys", cfg["bits"] == 4 and cfg["checkpoint_format"] == "gptq" and
              cfg["quant_method"] == "gptq")
    f = load_file(f"{d}/gptq_v1.safetensors")
    check("gptq v1 sym qzeros == 0x77777777",
          bool(np.all(f["model.layers.0.self_attn.q_proj.qzeros"].view(np.uint32) == 0x77777777)))

    # ---- AWQ GEMM: qweight [in, out/8], interleave [0,2,4,6,1,3,5,7] -----------------------
    f = load_file(f"{d}/awq.safetensors")
    layer = "model.layers.0.mlp.down_proj"
    w = dequant_awq(f[layer + ".qweight"], f[layer + ".qzeros"], f[layer + ".scales"], layer)
    same(f"awq {layer}", w, exp[f"awq.safetensors/{layer}.deq"])

    # ---- bitsandbytes: flat blocks, high nibble first, optional nested absmax -------------
    f = load_file(f"{d}/bnb.safetensors")
    for name in ("dq.weight", "plain.weight", "fp4.weight"):
        qt = "fp4" if name.startswith("fp4") else "nf4"
        w, state = dequant_bnb(lambda key: f.get(name + key), name, qt)
        same(f"bnb {name} ({qt}, {'double-quant' if 'nested_offset' in state else 'f32 absmax'})",
             w, exp[f"bnb.safetensors/{name}.deq"])

    print(f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
