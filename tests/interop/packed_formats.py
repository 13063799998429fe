"""numpy dequantizers for the published 4-bit checkpoint layouts, shared by the interop checks.

Written from the format descriptions (reference/algorithms.md §1.6, §2.3, §3.3; AutoGPTQ /
GPTQModel, AutoAWQ WQLinear_GEMM, bitsandbytes QuantState.as_dict), not from nibble's code.
Every function takes the stored arrays as loaded by safetensors (framework "np") and returns
float32 [out_features, in_features] computed as the readers do: scale · (code − zero) for
GPTQ / AWQ, quant_map[code] · absmax for bitsandbytes, each a single float32 product.
Shapes and dtypes are checked; a malformed tensor raises FormatError.
"""
import json

import numpy as np

SHIFTS = np.arange(8, dtype=np.uint32) * 4
# AutoAWQ packs output column 8c + AWQ_ORDER[k] into nibble k of word c; AWQ_REVERSE
# gives, for column 8c + j, the nibble that holds it.
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_REVERSE = np.array([0, 4, 1, 5, 2, 6, 3, 7])

# bitsandbytes.functional.get_4bit_type: NF4 (QLoRA) and bitsandbytes' FP4 (e2m1, divided
# by its largest magnitude 12). Compared by value: bitsandbytes' FP4 code 8 is +0.0.
NF4_TABLE = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                      -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                      0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                      0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=np.float32)
FP4_TABLE = (np.array([0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0,
                       -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0], dtype=np.float32) / np.float32(12))


class FormatError(Exception):
    pass


def _require(ok, *msg):
    if not ok:
        raise FormatError("".join(str(m) for m in msg))


def _expect(name, a, dtype, shape):
    _require(a.dtype == dtype and tuple(a.shape) == tuple(shape),
             f"{name}: {a.dtype} {tuple(a.shape)}, expected {np.dtype(dtype)} {tuple(shape)}")


def unpack_rows(words):
    """int32 [r, c] -> uint32 [8r, c]: nibble j of word [r, c] is row 8r + j (GPTQ qweight)."""
    w = words.view(np.uint32)
    return ((w[:, None, :] >> SHIFTS[None, :, None]) & 15).reshape(-1, w.shape[1])


def unpack_cols(words):
    """int32 [r, c] -> uint32 [r, 8c]: nibble j of word [r, c] is column 8c + j (GPTQ qzeros)."""
    w = words.view(np.uint32)
    return ((w[:, :, None] >> SHIFTS[None, None, :]) & 15).reshape(w.shape[0], -1)


def unpack_awq(words):
    """int32 [r, c] -> uint32 [r, 8c] with AutoAWQ's interleave undone."""
    w = words.view(np.uint32)
    slots = (w[:, :, None] >> SHIFTS[None, None, :]) & 15
    return slots[:, :, AWQ_REVERSE].reshape(w.shape[0], -1)


def dequant_gptq(qweight, qzeros, scales, g_idx, v1, name="gptq"):
    """GPTQ: qweight int32 [in/8, out], qzeros int32 [G, out/8], scales f16 [G, out],
    g_idx int32 [in] (None: i // (in / G)); v1 stores zero − 1. Returns f32 [out, in]."""
    _require(qweight.ndim == 2 and qweight.dtype == np.int32, f"{name}.qweight must be 2-D int32, is "
             f"{qweight.dtype} {qweight.shape}")
    n_in, n_out = qweight.shape[0] * 8, qweight.shape[1]
    _require(scales.ndim == 2 and scales.shape[1] == n_out, f"{name}.scales {scales.shape} is not [G, {n_out}]")
    G = scales.shape[0]
    _expect(f"{name}.scales", scales, np.float16, (G, n_out))
    _require(n_out % 8 == 0, f"{name}: out_features {n_out} is not a multiple of 8")
    _expect(f"{name}.qzeros", qzeros, np.int32, (G, n_out // 8))
    if g_idx is None:
        _require(n_in % G == 0, f"{name}: no g_idx and in {n_in} not divisible by {G} groups")
        g_idx = np.arange(n_in, dtype=np.int32) // (n_in // G)
    _expect(f"{name}.g_idx", g_idx, np.int32, (n_in,))
    _require(g_idx.min() >= 0 and g_idx.max() < G, f"{name}.g_idx outside 0..{G - 1}")
    q = unpack_rows(qweight)                      # [in, out]
    z = unpack_cols(qzeros)                       # [G, out]
    if v1:
        z = z + 1
    w = scales.astype(np.float32)[g_idx] * (q.astype(np.float32) - z[g_idx].astype(np.float32))  # [in, out]
    return np.ascontiguousarray(w.T)


def dequant_awq(qweight, qzeros, scales, name="awq"):
    """AutoAWQ GEMM: qweight int32 [in, out/8], qzeros int32 [G, out/8], scales f16 [G, out],
    both interleaved, groups contiguous along in. Returns f32 [out, in]."""
    _require(qweight.ndim == 2 and qweight.dtype == np.int32, f"{name}.qweight must be 2-D int32, is "
             f"{qweight.dtype} {qweight.shape}")
    n_in, n_out = qweight.shape[0], qweight.shape[1] * 8
    _require(scales.ndim == 2 and scales.shape[1] == n_out and scales.shape[0] >= 1 and n_in % scales.shape[0] == 0,
             f"{name}.scales {scales.shape} is not [in / group_size, {n_out}] for in {n_in}")
    G = scales.shape[0]
    _expect(f"{name}.scales", scales, np.float16, (G, n_out))
    _expect(f"{name}.qzeros", qzeros, np.int32, (G, n_out // 8))
    q = unpack_awq(qweight)                       # [in, out]
    z = unpack_awq(qzeros)                        # [G, out]
    g = np.arange(n_in) // (n_in // G)
    w = (q.astype(np.float32) - z[g].astype(np.float32)) * scales.astype(np.float32)[g]
    return np.ascontiguousarray(w.T)


def bnb_state(packed_json, name="bnb"):
    """The JSON object of `<w>.quant_state.bitsandbytes__nf4|fp4` (uint8 bytes)."""
    _require(packed_json.dtype == np.uint8 and packed_json.ndim == 1, f"{name}: quant_state must be 1-D uint8")
    return json.loads(bytes(packed_json).decode())


def dequant_bnb(get, name, quant_type):
    """bitsandbytes 4-bit: get(key) returns the stored array of `<name><key>` for key in
    "", ".absmax", ".quant_map", ".quant_state.bitsandbytes__<type>", ".nested_absmax",
    ".nested_quant_map" (None when absent). Codes of the flattened weight, high nibble first;
    absmax f32 [blocks] or, double-quantized, uint8 codes into nested_quant_map ·
    nested_absmax[b / nested_blocksize] + nested_offset. Returns (f32 weight of state["shape"],
    state)."""
    state = bnb_state(get(f".quant_state.bitsandbytes__{quant_type}"), name)
    _require(state.get("quant_type") == quant_type, f"{name}: quant_state quant_type {state.get('quant_type')!r} "
             f"under the key bitsandbytes__{quant_type}")
    shape = state["shape"]
    n = int(np.prod(shape))
    bs = int(state["blocksize"])
    blocks = -(-n // bs)
    packed = get("")
    _expect(name, packed, np.uint8, ((n + 1) // 2, 1))
    codes = np.stack([packed.reshape(-1) >> 4, packed.reshape(-1) & 15], axis=1).reshape(-1)[:n]
    quant_map = get(".quant_map")
    _expect(f"{name}.quant_map", quant_map, np.float32, (16,))
    table = NF4_TABLE if quant_type == "nf4" else FP4_TABLE
    _require(np.array_equal(quant_map, table), f"{name}.quant_map is not bitsandbytes' {quant_type} table: "
             f"{quant_map.tolist()}")
    absmax = get(".absmax")
    nested = "nested_offset" in state
    if nested:
        nbs = int(state["nested_blocksize"])
        _expect(f"{name}.absmax", absmax, np.uint8, (blocks,))
        nested_absmax = get(".nested_absmax")
        nested_map = get(".nested_quant_map")
        _require(nested_absmax is not None and nested_map is not None,
                 f"{name}: double-quantized state without nested_absmax / nested_quant_map")
        _expect(f"{name}.nested_absmax", nested_absmax, np.float32, (-(-blocks // nbs),))
        _expect(f"{name}.nested_quant_map", nested_map, np.float32, (256,))
        _require(state.get("nested_dtype") == "float32", f"{name}: nested_dtype {state.get('nested_dtype')!r}")
        absmax = nested_map[absmax.astype(np.int64)] * np.repeat(nested_absmax, nbs)[:blocks] \
            + np.float32(state["nested_offset"])
    else:
        _require(get(".nested_absmax") is None and get(".nested_quant_map") is None,
                 f"{name}: nested tensors but no nested_offset in quant_state")
        _expect(f"{name}.absmax", absmax, np.float32, (blocks,))
    w = quant_map[codes] * np.repeat(absmax.astype(np.float32), bs)[:n]
    return w.reshape(shape), state
