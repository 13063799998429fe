#!/usr/bin/env python3
"""Writes a Hugging Face model directory (as `save_pretrained` lays it out) from a GGUF
Llama file or a llama2.c checkpoint, so nibble's HF loader can be checked against the
same weights read through another loader.

    make-hf-model.py gguf    MODEL.gguf OUT_DIR [--dtype bf16|f16|f32] [--shards N]
    make-hf-model.py llama2c MODEL.bin  OUT_DIR [--dtype bf16|f16|f32] [--shards N]

Runs in build/pyenv (PyPI gguf, safetensors, numpy, tokenizers).

OUT_DIR gets config.json (LlamaForCausalLM), generation_config.json, and the weights as
model.safetensors, or with --shards N > 1 as model-0000k-of-0000N.safetensors plus
model.safetensors.index.json. GGUF tensors are decoded with gguf-py's
gguf.quants.dequantize, then stored as --dtype (bf16 rounds to nearest even, as torch
does; f32 keeps the decoded values exactly).

q/k rows: llama.cpp's converter permutes each head's q and k rows so that RoPE pairs
are adjacent (row 2i+j of a head holds HF row j*head/2 + i); llama2.c checkpoints are
trained with that adjacent-pair layout too. HF checkpoints use rotate_half, so the rows
are put back: row j*head/2 + i of the HF head = row 2i+j of the source head.

Tokenizer (GGUF mode, tokenizer.ggml.model "gpt2"): tokenizer.json is a byte-level BPE
built with the `tokenizers` package from tokenizer.ggml.tokens / merges / token_type
(control tokens become special added tokens), with the pre-tokenizer named by
tokenizer.ggml.pre ("smollm": digits split one by one, then byte-level with GPT-2's
regex; "gpt2"/"default": byte-level alone); tokenizer_config.json and
special_tokens_map.json carry bos/eos/unk/pad, add_bos_token and the chat template.
Other tokenizer kinds are an error unless --no-tokenizer. llama2.c mode writes no
tokenizer: llama2.c's tok*.bin is a SentencePiece-style scored vocabulary with no merge
list, which a tokenizer.json cannot express without re-deriving merges.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
from safetensors import TensorSpec, serialize_file

DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


def fail(msg):
    sys.exit(f"make-hf-model: {msg}")


def f32_literal(x):
    """A float32 metadata value as the shortest decimal that reads back to it (1e-05, not 9.99e-06)."""
    return float(str(np.float32(x)))


def halves_from_adjacent(w, n_head):
    """Undo llama.cpp's q/k permutation: per head, rows (2i, 2i+1) → (i, i + head/2)."""
    rows = w.shape[0]
    if rows % n_head or (rows // n_head) % 2:
        fail(f"cannot split {rows} rows into {n_head} heads of even size")
    hs = rows // n_head
    return np.ascontiguousarray(w.reshape(n_head, hs // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def to_storage(a, dtype):
    """float32 array → (safetensors dtype name, contiguous array with the stored bits)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.all(np.isfinite(a)):
        fail("a tensor has non-finite values")
    if dtype == "f32":
        return "float32", a
    if dtype == "f16":
        return "float16", a.astype(np.float16)
    u = a.view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)  # nearest even
    return "bfloat16", rounded.astype(np.uint16)


def write_weights(out, tensors, dtype, shards):
    """tensors: list of (name, float32 array) in file order."""
    stored = [(name, *to_storage(a, dtype)) for name, a in tensors]
    total = sum(a.nbytes for _, _, a in stored)
    shards = max(1, min(shards, len(stored)))

    def save(path, items):
        specs = {name: TensorSpec(dtype=dt, shape=list(a.shape), data_ptr=a.ctypes.data, data_len=a.nbytes)
                 for name, dt, a in items}
        serialize_file(specs, path, metadata={"format": "pt"})

    if shards == 1:
        save(os.path.join(out, "model.safetensors"), stored)
        return
    # Contiguous runs of about total/shards bytes each, as transformers' max_shard_size does.
    groups, current, size = [], [], 0
    target = total / shards
    for item in stored:
        if current and size + item[2].nbytes / 2 > target * (len(groups) + 1) and len(groups) < shards - 1:
            groups.append(current)
            current = []
        current.append(item)
        size += item[2].nbytes
    groups.append(current)
    weight_map = {}
    for k, items in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        save(os.path.join(out, fname), items)
        for name, _, _ in items:
            weight_map[name] = fname
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
        f.write("\n")


def llama_config(*, dim, hidden, layers, heads, kv_heads, head_dim, vocab, ctx, theta, eps, tied, dtype,
                 bos, eos, scaling=None):
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "hidden_size": dim,
        "initializer_range": 0.02,
        "intermediate_size": hidden,
        "max_position_embeddings": ctx,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": eps,
        "rope_scaling": scaling,
        "rope_theta": theta,
        "tie_word_embeddings": tied,
        "torch_dtype": DTYPES[dtype],
        "use_cache": True,
        "vocab_size": vocab,
    }


def write_json(out, name, obj):
    with open(os.path.join(out, name), "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


# ---- GGUF --------------------------------------------------------------------------

GGUF_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def gguf_value(reader, key, default=None, required=False):
    field = reader.fields.get(key)
    if field is None:
        if required:
            fail(f"GGUF has no metadata key {key}")
        return default
    return field.contents()


def gguf_tokenizer(reader, out, ctx):
    import tokenizers
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = gguf_value(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        fail(f"tokenizer.ggml.model is {kind!r}; only byte-level BPE ('gpt2') is converted (use --no-tokenizer)")
    pre = gguf_value(reader, "tokenizer.ggml.pre", "default")
    tokens = gguf_value(reader, "tokenizer.ggml.tokens", required=True)
    merges = gguf_value(reader, "tokenizer.ggml.merges", required=True)
    types = gguf_value(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        fail("tokenizer.ggml.tokens has duplicates")
    pairs = []
    for m in merges:
        a, sep, b = m.partition(" ")
        if not sep or not a or not b:
            fail(f"merge {m!r} is not 'left right'")
        pairs.append((a, b))
    tk = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in ("gpt2", "default"):
        tk.pre_tokenizer = byte_level
    else:
        fail(f"pre-tokenizer {pre!r} is not converted (smollm, gpt2 or default; or use --no-tokenizer)")
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    CONTROL, USER_DEFINED = 3, 4
    special = [i for i, t in enumerate(types) if t == CONTROL]
    user = [i for i, t in enumerate(types) if t == USER_DEFINED]
    tk.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in special])
    if user:
        tk.add_tokens([AddedToken(tokens[i], special=False, normalized=False) for i in user])
    for i in special + user:
        if tk.token_to_id(tokens[i]) != i:
            fail(f"added token {tokens[i]!r} did not keep id {i}")
    tk.save(os.path.join(out, "tokenizer.json"))

    def name(key):
        i = gguf_value(reader, key)
        return None if i is None or not 0 <= int(i) < len(tokens) else tokens[int(i)]

    specials = {k: name(f"tokenizer.ggml.{g}_token_id")
                for k, g in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding"))}
    specials = {k: v for k, v in specials.items() if v is not None}
    cfg = {
        "add_bos_token": bool(gguf_value(reader, "tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(gguf_value(reader, "tokenizer.ggml.add_eos_token", False)),
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {"content": tokens[i], "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": types[i] == CONTROL}
            for i in special + user
        },
        "clean_up_tokenization_spaces": False,
        "model_max_length": ctx,
        "tokenizer_class": "GPT2Tokenizer",
        **specials,
    }
    template = gguf_value(reader, "tokenizer.chat_template")
    if template is not None:
        cfg["chat_template"] = template
    write_json(out, "tokenizer_config.json", cfg)
    write_json(out, "special_tokens_map.json", specials)
    # Self-check: the file reads back and round-trips text, special tokens included.
    back = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    sample = "Hello world! 1234 numbers, ünïcödé  spaces\n" + "".join(tokens[i] for i in special[:3])
    if back.decode(back.encode(sample).ids, skip_special_tokens=False) != sample:
        fail(f"tokenizer.json does not round-trip {sample!r} (tokenizers {tokenizers.__version__})")


def from_gguf(args):
    import gguf
    from gguf.quants import dequantize

    r = gguf.GGUFReader(args.model)
    arch = gguf_value(r, "general.architecture", required=True)
    if arch != "llama":
        fail(f"architecture {arch!r}: only llama GGUF files are converted")
    k = lambda key, *a, **kw: gguf_value(r, f"llama.{key}", *a, **kw)  # noqa: E731
    dim = int(k("embedding_length", required=True))
    heads = int(k("attention.head_count", required=True))
    kv_heads = int(k("attention.head_count_kv", heads))
    head_dim = int(k("attention.key_length", dim // heads))
    if int(k("rope.dimension_count", head_dim)) != head_dim:
        fail("partial rotary embeddings are not converted")
    scaling = None
    stype = k("rope.scaling.type")
    if stype not in (None, "none"):
        if stype != "linear":
            fail(f"RoPE scaling {stype!r} is not converted")
        scaling = {"factor": f32_literal(k("rope.scaling.factor", required=True)), "rope_type": "linear",
                   "type": "linear"}
    tensors = {t.name: t for t in r.tensors}
    if "rope_freqs.weight" in tensors:
        fail("rope_freqs (Llama 3.1 RoPE factors) are not converted")
    emb = tensors.get("token_embd.weight")
    if emb is None:
        fail("no token_embd.weight")
    layers = int(k("block_count", required=True))
    ctx = int(k("context_length", required=True))
    vocab = int(emb.shape[1])
    tied = "output.weight" not in tensors
    bos = gguf_value(r, "tokenizer.ggml.bos_token_id")
    eos = gguf_value(r, "tokenizer.ggml.eos_token_id")
    config = llama_config(dim=dim, hidden=int(k("feed_forward_length", required=True)), layers=layers, heads=heads,
                          kv_heads=kv_heads, head_dim=head_dim, vocab=vocab, ctx=ctx,
                          theta=f32_literal(k("rope.freq_base", 10000.0)),
                          eps=f32_literal(k("attention.layer_norm_rms_epsilon", required=True)), tied=tied,
                          dtype=args.dtype, bos=None if bos is None else int(bos),
                          eos=None if eos is None else int(eos), scaling=scaling)

    def decoded(t):
        a = dequantize(t.data, t.tensor_type)
        want = tuple(int(d) for d in reversed(t.shape))  # ggml lists the contiguous dimension first
        if a.size != np.prod(want):
            fail(f"{t.name}: decoded {a.size} values, expected shape {want}")
        return a.reshape(want).astype(np.float32, copy=False)

    out = []
    for t in r.tensors:
        name = t.name
        if name == "token_embd.weight":
            out.append(("model.embed_tokens.weight", decoded(t)))
        elif name == "output_norm.weight":
            out.append(("model.norm.weight", decoded(t)))
        elif name == "output.weight":
            out.append(("lm_head.weight", decoded(t)))
        elif name.startswith("blk."):
            _, n, rest = name.split(".", 2)
            if rest not in GGUF_NAMES:
                fail(f"tensor {name} has no HF counterpart here")
            a = decoded(t)
            if rest == "attn_q.weight":
                a = halves_from_adjacent(a, heads)
            elif rest == "attn_k.weight":
                a = halves_from_adjacent(a, kv_heads)
            out.append((f"model.layers.{int(n)}.{GGUF_NAMES[rest]}", a))
        else:
            fail(f"tensor {name} has no HF counterpart here")
    os.makedirs(args.out, exist_ok=True)
    write_weights(args.out, out, args.dtype, args.shards)
    write_json(args.out, "config.json", config)
    write_json(args.out, "generation_config.json",
               {k2: v for k2, v in (("bos_token_id", config["bos_token_id"]), ("eos_token_id", config["eos_token_id"]))
                if v is not None})
    if not args.no_tokenizer:
        gguf_tokenizer(r, args.out, ctx)


# ---- llama2.c ----------------------------------------------------------------------

def from_llama2c(args):
    data = open(args.model, "rb").read()
    if len(data) < 28:
        fail("llama2.c checkpoint is shorter than its header")
    dim, hidden, layers, heads, kv_heads, vocab, seq = struct.unpack("<7i", data[:28])
    tied = vocab > 0
    vocab = abs(vocab)
    if min(dim, hidden, layers, heads, kv_heads, vocab, seq) <= 0 or dim % heads:
        fail(f"implausible llama2.c header {dim, hidden, layers, heads, kv_heads, vocab, seq}")
    hs = dim // heads
    kv = kv_heads * hs
    floats = np.frombuffer(data, dtype="<f4", offset=28)
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        if pos + n > floats.size:
            fail("llama2.c checkpoint is truncated")
        a = floats[pos:pos + n].reshape(shape).astype(np.float32)
        pos += n
        return a

    emb = take(vocab, dim)
    rms_att = take(layers, dim)
    wq = take(layers, dim, dim)
    wk = take(layers, kv, dim)
    wv = take(layers, kv, dim)
    wo = take(layers, dim, dim)
    rms_ffn = take(layers, dim)
    w1 = take(layers, hidden, dim)
    w2 = take(layers, dim, hidden)
    w3 = take(layers, hidden, dim)
    rms_final = take(dim)
    take(seq, hs // 2)  # legacy RoPE tables (freq_cis_real, freq_cis_imag), unused
    take(seq, hs // 2)
    wcls = None if tied else take(vocab, dim)
    out = [("model.embed_tokens.weight", emb)]
    for l in range(layers):
        p = f"model.layers.{l}."
        out += [(p + "input_layernorm.weight", rms_att[l]),
                (p + "self_attn.q_proj.weight", halves_from_adjacent(wq[l], heads)),
                (p + "self_attn.k_proj.weight", halves_from_adjacent(wk[l], kv_heads)),
                (p + "self_attn.v_proj.weight", wv[l]),
                (p + "self_attn.o_proj.weight", wo[l]),
                (p + "post_attention_layernorm.weight", rms_ffn[l]),
                (p + "mlp.gate_proj.weight", w1[l]),
                (p + "mlp.up_proj.weight", w3[l]),
                (p + "mlp.down_proj.weight", w2[l])]
    out.append(("model.norm.weight", rms_final))
    if wcls is not None:
        out.append(("lm_head.weight", wcls))
    # llama2.c's model.py: RMSNorm eps 1e-5, RoPE theta 10000; its tokenizers use 1 = BOS, 2 = EOS.
    config = llama_config(dim=dim, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, head_dim=hs,
                          vocab=vocab, ctx=seq, theta=10000.0, eps=1e-5, tied=tied, dtype=args.dtype, bos=1, eos=2)
    os.makedirs(args.out, exist_ok=True)
    write_weights(args.out, out, args.dtype, args.shards)
    write_json(args.out, "config.json", config)
    write_json(args.out, "generation_config.json", {"bos_token_id": 1, "eos_token_id": 2})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=["gguf", "llama2c"])
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--no-tokenizer", action="store_true", help="GGUF mode: write no tokenizer files")
    args = ap.parse_args()
    if args.shards < 1:
        fail("--shards must be >= 1")
    (from_gguf if args.kind == "gguf" else from_llama2c)(args)
    print(f"make-hf-model: wrote {args.out} ({args.dtype}, {args.shards} shard(s))")


if __name__ == "__main__":
    main()
