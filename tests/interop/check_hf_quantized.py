"""Independent check of a quantized Hugging Face directory written by nibble-quant.

    check_hf_quantized.py SRC_DIR OUT_DIR REF.safetensors [--awq-folded]

SRC_DIR is the source model (config.json, model.safetensors or a sharded
model.safetensors.index.json, tokenizer files, ...); OUT_DIR what
`nibble-quant SRC_DIR OUT_DIR --format gptq|gptq-v2|awq|bnb-nf4|bnb-fp4` wrote; REF a
float32 dump of every tensor nibble holds for OUT_DIR, by Hugging Face name (the 7 block
linears as `<prefix>.weight` [out, in], dequantized by nibble). --awq-folded: the method
folded AWQ scales into input_layernorm / post_attention_layernorm, whose values may then
differ from the source's (dtype and shape may not).

The format comes from OUT_DIR/config.json's quantization_config. Every linear is
dequantized with numpy (packed_formats.py, written from the published layouts) and must
equal REF bit for bit; every other tensor must equal REF after a cast to float32 and, but
for folded norms, the source's bytes and dtype. config.json must be the source's plus
quantization_config (GPTQ: also quantize_config.json with the same object), every
non-weight file of SRC_DIR must be copied byte for byte, and OUT_DIR must hold no other
weight file than model.safetensors. Exits 1 with the list of problems, else prints one line.
"""
import argparse
import fnmatch
import json
import os
import re
import sys

import numpy as np
from safetensors import safe_open

from packed_formats import FormatError, dequant_awq, dequant_bnb, dequant_gptq

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
# As model/hf_quantized_writer.hpp (is_weight_file): never copied into the output.
WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.pt", "*.pth", "*.gguf",
                "*.h5", "*.msgpack", "*.ckpt", "*.onnx")
FOLDED_NORMS = re.compile(r"^model\.layers\.\d+\.(input_layernorm|post_attention_layernorm)\.weight$")
NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "U8": np.uint8, "I64": np.int64,
                "I8": np.int8, "I16": np.int16, "U16": np.uint16, "U32": np.uint32, "F64": np.float64}

problems = []


def fail(msg):
    problems.append(msg)


class Safetensors:
    """A safetensors file read by its published header (8-byte little-endian length, JSON,
    data), memory-mapped, with BF16 (which numpy lacks) as raw bytes. Cross-checked against
    the safetensors package's own parser."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        self.metadata = header.pop("__metadata__", {})
        self.data = np.memmap(path, dtype=np.uint8, mode="r")
        self.base = 8 + n
        self.info = header
        for name, t in header.items():
            a, b = t["data_offsets"]
            if not (0 <= a <= b and self.base + b <= self.data.size):
                raise FormatError(f"{path}: tensor {name} data_offsets {a}..{b} outside the file")
        with safe_open(path, framework="np") as fh:
            keys = set(fh.keys())
        if keys != set(header):
            raise FormatError(f"{path}: the safetensors package lists other tensors than its header")

    def dtype(self, name):
        return self.info[name]["dtype"]

    def shape(self, name):
        return tuple(self.info[name]["shape"])

    def raw(self, name):
        a, b = self.info[name]["data_offsets"]
        return self.data[self.base + a:self.base + b]

    def array(self, name):
        """The tensor in its own dtype (numpy), or None if absent."""
        if name not in self.info:
            return None
        dt = self.dtype(name)
        if dt not in NUMPY_DTYPES:
            raise FormatError(f"{self.path}: {name} has dtype {dt}, which numpy cannot hold")
        return self.raw(name).view(np.dtype(NUMPY_DTYPES[dt]).newbyteorder("<")).reshape(self.shape(name))

    def float32(self, name):
        dt = self.dtype(name)
        if dt == "BF16":
            u = self.raw(name).view("<u2").astype(np.uint32) << 16
            return u.view(np.float32).reshape(self.shape(name))
        if dt not in ("F32", "F16", "F64"):
            raise FormatError(f"{self.path}: {name} has dtype {dt}, not a float type")
        return self.array(name).astype(np.float32)


class Source:
    """The source model's tensors: model.safetensors.index.json's shards, or model.safetensors."""

    def __init__(self, d):
        index = os.path.join(d, "model.safetensors.index.json")
        self.where = {}
        if os.path.exists(index):
            with open(index) as fh:
                weight_map = json.load(fh)["weight_map"]
            files = {f: Safetensors(os.path.join(d, f)) for f in sorted(set(weight_map.values()))}
            for name, f in weight_map.items():
                if name not in files[f].info:
                    raise FormatError(f"source index maps {name} to {f}, which does not hold it")
                self.where[name] = files[f]
        else:
            f = Safetensors(os.path.join(d, "model.safetensors"))
            self.where = {name: f for name in f.info}

    def names(self):
        return set(self.where)


def is_weight_file(name):
    return any(fnmatch.fnmatch(name, p) for p in WEIGHT_FILES)


def regular_files(d):
    return sorted(f for f in os.listdir(d) if os.path.isfile(os.path.join(d, f)))


def read_bytes(path):
    with open(path, "rb") as fh:
        return fh.read()


def load_json(path):
    with open(path) as fh:
        return json.load(fh)


def detect_format(qc):
    """(kind, details, label) from quantization_config."""
    method = qc.get("quant_method")
    if method == "gptq":
        cf = qc.get("checkpoint_format", "gptq")
        if cf not in ("gptq", "gptq_v2"):
            raise FormatError(f"quantization_config: gptq checkpoint_format {cf!r} is neither gptq nor gptq_v2")
        if qc.get("bits") != 4:
            raise FormatError(f"quantization_config: bits {qc.get('bits')!r}, expected 4")
        v1 = cf == "gptq"
        return "gptq", {"v1": v1}, f"gptq {'v1' if v1 else 'v2'} g{qc.get('group_size')}" + (
            " desc_act" if qc.get("desc_act") else "") + (" sym" if qc.get("sym") else "")
    if method == "awq":
        if qc.get("bits") != 4 or str(qc.get("version", "")).lower() != "gemm" or qc.get("zero_point") is not True:
            raise FormatError(f"quantization_config: awq needs bits 4, version gemm, zero_point true: {qc}")
        return "awq", {}, f"awq gemm g{qc.get('group_size')}"
    if method == "bitsandbytes":
        qt = qc.get("bnb_4bit_quant_type")
        if qc.get("load_in_4bit") is not True or qt not in ("nf4", "fp4"):
            raise FormatError(f"quantization_config: bitsandbytes needs load_in_4bit true and "
                              f"bnb_4bit_quant_type nf4|fp4: {qc}")
        dq = bool(qc.get("bnb_4bit_use_double_quant", False))
        return "bnb", {"quant_type": qt, "double_quant": dq}, f"bnb {qt}" + (" double-quant" if dq else "")
    raise FormatError(f"quantization_config: unknown quant_method {method!r}")


def check_files(src, out, kind):
    """Config and file copies; returns the number of copied files."""
    out_cfg = load_json(os.path.join(out, "config.json"))
    src_cfg = load_json(os.path.join(src, "config.json"))
    qc = out_cfg.pop("quantization_config", None)
    if not isinstance(qc, dict):
        raise FormatError("OUT config.json has no quantization_config object")
    if out_cfg != src_cfg:
        keys = sorted(k for k in set(out_cfg) | set(src_cfg) if out_cfg.get(k, KeyError) != src_cfg.get(k, KeyError))
        fail(f"config.json without quantization_config differs from the source's in keys {keys}")
    if kind == "gptq":
        p = os.path.join(out, "quantize_config.json")
        if not os.path.isfile(p):
            fail("gptq: OUT has no quantize_config.json")
        elif load_json(p) != qc:
            fail("gptq: quantize_config.json differs from config.json's quantization_config")
    src_files = regular_files(src)
    expected = {"config.json", "model.safetensors"} | ({"quantize_config.json"} if kind == "gptq" else set())
    copied = 0
    for f in src_files:
        if f == "config.json" or is_weight_file(f):
            continue
        expected.add(f)
        p = os.path.join(out, f)
        if not os.path.isfile(p):
            fail(f"{f} of the source is missing in OUT")
        elif read_bytes(p) != read_bytes(os.path.join(src, f)):
            fail(f"{f} in OUT differs from the source's")
        else:
            copied += 1
    for f in regular_files(out):
        if f not in expected:
            fail(f"OUT holds {f}, which is " + ("a weight file other than model.safetensors" if is_weight_file(f)
                                                 else "neither a copy of a source file nor an expected output"))
    return qc, copied


def bitwise_diff(name, got, want):
    """None if equal bit for bit, else a description."""
    got = np.ascontiguousarray(got, dtype=np.float32)
    want = np.ascontiguousarray(want, dtype=np.float32)
    if got.shape != want.shape:
        return f"{name}: shape {got.shape}, REF {want.shape}"
    differ = got.view(np.uint32) != want.view(np.uint32)
    n = int(np.count_nonzero(differ))
    if n == 0:
        return None
    i = np.unravel_index(int(np.flatnonzero(differ)[0]), got.shape)
    return f"{name}: {n} of {got.size} values differ from REF (first at {tuple(int(x) for x in i)}: " \
           f"ours {got[i]!r}, REF {want[i]!r})"


def dequant_linear(kind, fmt, o, prefix, qc, src_dtype):
    """One linear from OUT, returns (f32 [out, in], OUT tensor names it used)."""
    if kind == "gptq":
        names = [prefix + s for s in (".qweight", ".qzeros", ".scales", ".g_idx")]
        for n in names:
            if n not in o.info:
                raise FormatError(f"{prefix}: OUT lacks {n}")
        qw, qz, sc, gi = (o.array(n) for n in names)
        G, n_in = sc.shape[0], qw.shape[0] * 8
        gs = qc.get("group_size")
        want_G = 1 if gs in (-1, None) else -(-n_in // gs)
        if G != want_G:
            fail(f"{prefix}: {G} scale rows, quantization_config group_size {gs} gives {want_G}")
        elif not qc.get("desc_act") and not np.array_equal(gi, np.arange(n_in) // (n_in if gs in (-1, None) else gs)):
            fail(f"{prefix}.g_idx is not i // group_size, but quantization_config has desc_act false")
        w = dequant_gptq(qw, qz, sc, gi, fmt["v1"], prefix)
        if qc.get("sym"):
            stored = np.unique(qz.view(np.uint32))
            want = 0x77777777 if fmt["v1"] else 0x88888888
            if stored.tolist() != [want]:
                fail(f"{prefix}: sym checkpoint but qzeros are not all {want:#x}")
        return w, names
    if kind == "awq":
        names = [prefix + s for s in (".qweight", ".qzeros", ".scales")]
        for n in names:
            if n not in o.info:
                raise FormatError(f"{prefix}: OUT lacks {n}")
        qw, qz, sc = (o.array(n) for n in names)
        if qw.shape[0] != sc.shape[0] * qc.get("group_size", -1):
            fail(f"{prefix}: {sc.shape[0]} scale rows for in {qw.shape[0]}, quantization_config group_size "
                 f"{qc.get('group_size')}")
        return dequant_awq(qw, qz, sc, prefix), names
    qt = fmt["quant_type"]
    name = prefix + ".weight"
    suffixes = ["", ".absmax", ".quant_map", f".quant_state.bitsandbytes__{qt}"]
    if fmt["double_quant"]:
        suffixes += [".nested_absmax", ".nested_quant_map"]
    for s in suffixes:
        if name + s not in o.info:
            raise FormatError(f"{prefix}: OUT lacks {name + s}")
    w, state = dequant_bnb(lambda key: o.array(name + key), name, qt)
    if ("nested_offset" in state) != fmt["double_quant"]:
        fail(f"{name}: quant_state {'has' if 'nested_offset' in state else 'lacks'} nested_offset, but "
             f"bnb_4bit_use_double_quant is {fmt['double_quant']}")
    bnb_dtype = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}.get(src_dtype)
    if state.get("dtype") != bnb_dtype:
        fail(f"{name}: quant_state dtype {state.get('dtype')!r}, but the source weight is {src_dtype} "
             f"({bnb_dtype!r}, what bitsandbytes records)")
    return w, [name + s for s in suffixes]


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("ref")
    ap.add_argument("--awq-folded", action="store_true",
                    help="allow input_layernorm / post_attention_layernorm values to differ from the source's")
    a = ap.parse_args(argv)
    try:
        qc = load_json(os.path.join(a.out, "config.json")).get("quantization_config")
        if not isinstance(qc, dict):
            raise FormatError(f"{a.out}/config.json has no quantization_config object")
        kind, fmt, label = detect_format(qc)
        qc, copied = check_files(a.src, a.out, kind)
        src = Source(a.src)
        o = Safetensors(os.path.join(a.out, "model.safetensors"))
        ref = Safetensors(a.ref)
        cfg = load_json(os.path.join(a.src, "config.json"))
        layers = int(cfg["num_hidden_layers"])

        used = set()
        linear_weights = set()
        values = 0
        for layer in range(layers):
            for lin in LINEARS:
                prefix = f"model.layers.{layer}.{lin}"
                wname = prefix + ".weight"
                linear_weights.add(wname)
                if wname not in src.where:
                    fail(f"the source has no {wname}")
                    continue
                if wname not in ref.info:
                    fail(f"REF has no {wname}")
                    continue
                try:
                    w, names = dequant_linear(kind, fmt, o, prefix, qc, src.where[wname].dtype(wname))
                except FormatError as e:
                    fail(str(e))
                    continue
                used.update(names)
                if w.shape != src.where[wname].shape(wname):
                    fail(f"{prefix}: dequantized shape {w.shape}, source weight {src.where[wname].shape(wname)}")
                d = bitwise_diff(prefix, w, ref.float32(wname))
                if d:
                    fail(d)
                values += w.size

        others = src.names() - linear_weights
        out_others = set(o.info) - used
        for n in sorted(out_others - others):
            fail(f"OUT tensor {n} is neither a packed linear part nor a source tensor")
        for n in sorted(others - out_others):
            fail(f"source tensor {n} is missing in OUT")
        folded = 0
        for n in sorted(others & out_others):
            s = src.where[n]
            if n not in ref.info:
                fail(f"REF has no {n}")
            elif ref.dtype(n) != "F32":
                fail(f"REF {n} is {ref.dtype(n)}, not F32")
            else:
                d = bitwise_diff(n, o.float32(n), ref.array(n))
                if d:
                    fail(d)
            if o.dtype(n) != s.dtype(n) or o.shape(n) != s.shape(n):
                fail(f"{n}: OUT {o.dtype(n)} {o.shape(n)}, source {s.dtype(n)} {s.shape(n)}")
            elif not np.array_equal(o.raw(n), s.raw(n)):
                if a.awq_folded and FOLDED_NORMS.match(n):
                    folded += 1
                else:
                    fail(f"{n}: bytes differ from the source's" +
                         (" (an AWQ-folded norm? pass --awq-folded)" if FOLDED_NORMS.match(n) else ""))
        extra_ref = set(ref.info) - linear_weights - out_others
        if "lm_head.weight" in extra_ref and cfg.get("tie_word_embeddings") and "model.embed_tokens.weight" in ref.info:
            extra_ref.discard("lm_head.weight")  # tied: nibble may hold the output matrix under its own name
            d = bitwise_diff("lm_head.weight (tied)", ref.array("lm_head.weight"), o.float32("model.embed_tokens.weight"))
            if d:
                fail(d)
        for n in sorted(extra_ref):
            fail(f"REF holds {n}, which OUT does not")
    except (FormatError, OSError, KeyError, ValueError) as e:
        fail(f"{type(e).__name__}: {e}")

    if problems:
        for p in problems:
            print("FAIL", p, file=sys.stderr)
        print(f"check_hf_quantized: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"check_hf_quantized: {label}: {layers * len(LINEARS)} linears, {values} values bit-exact; "
          f"{len(others)} other tensors" + (f" ({folded} norms with AWQ scales folded in)" if a.awq_folded else "") +
          f"; {copied} files copied")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
