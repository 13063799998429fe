#!/usr/bin/env python3
"""Vocabulary-only copies of a GGUF file with another tokenizer.ggml.pre, so that
check_tokenizer.py can run nibble's other pre-tokenizers (gpt2, llama3, qwen2, default)
against llama-tokenize on a real vocabulary. Every key/value is copied unchanged except
the pre-tokenizer name; no tensors are written (llama-tokenize loads only the vocabulary).

    make_pre_variants.py MODEL.gguf OUT_DIR [pre ...]    (needs PyPI gguf)
"""
import os
import sys

import gguf


def copy_with_pre(src, dst, pre):
    r = gguf.GGUFReader(src)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    w = gguf.GGUFWriter(dst, arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name == "tokenizer.ggml.pre":
            w.add_string(name, pre)
            continue
        vtype = f.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            etype = f.types[1]
            if etype == gguf.GGUFValueType.STRING:
                vals = [bytes(f.parts[i]).decode("utf-8", errors="surrogateescape") for i in f.data]
                w.add_array(name, vals)
            else:
                vals = [f.parts[i].tolist()[0] for i in f.data]
                w.add_key_value(name, vals, vtype, sub_type=etype)
        elif vtype == gguf.GGUFValueType.STRING:
            w.add_string(name, bytes(f.parts[f.data[0]]).decode("utf-8", errors="surrogateescape"))
        else:
            w.add_key_value(name, f.parts[f.data[0]].tolist()[0], vtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    src, out = sys.argv[1], sys.argv[2]
    pres = sys.argv[3:] or ["gpt-2", "llama-bpe", "qwen2", "default"]
    os.makedirs(out, exist_ok=True)
    for pre in pres:
        dst = os.path.join(out, "vocab-%s.gguf" % pre)
        copy_with_pre(src, dst, pre)
        print(dst)


if __name__ == "__main__":
    main()
