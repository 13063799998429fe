#!/usr/bin/env python3
"""Token ids of nibble's BpeTokenizer against llama.cpp's llama-tokenize on one GGUF file.

    python3 tests/llama_cpp/check_tokenizer.py --tokenize-ids build/dev/tests/tokenize_ids \\
        --llama-tokenize PATH/llama-tokenize --model build/models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        [--texts /work/shared/models] [--lines 439]

(tests/llama_cpp/check_tokenizer.sh finds the paths and builds tokenize_ids.)

Cases, each run with special-token parsing on (llama-tokenize's default) and off
(--no-parse-special), each given to both programs as the bytes of one file (llama-tokenize
-f --no-escape reads a file verbatim):
  - the adversarial strings below (whitespace runs, digits, CRLF, Unicode letters and marks,
    emoji, contractions, special tokens, invalid UTF-8, ...);
  - --random strings (default 300, fixed seed) concatenated from POOL's pieces;
  - every story of tinystories_valid_first101.txt (split at <|endoftext|>, not trimmed),
    every line of it (--lines limits how many), and the whole file;
  - the whole 2 MiB TinyStories training sample;
  - five synthetic 1 MB inputs (one long word, a whitespace run, digits, random words), and
    their first 20 KB.
A case where llama-tokenize is killed by a signal (its std::regex stages overflow the
stack on 1 MB runs with the default pre-tokenizer) is reported and not compared.
A case matches when both print the same id list, or when both fail (llama.cpp throws on
UTF-8 that encodes a code point above U+10FFFF; nibble throws nibble::Error).
With --pieces, each token's text (token_to_piece, special tokens rendered) is compared
instead, as llama-tokenize prints it without --ids.
Exit status 0 when every case matches.
"""
import argparse
import concurrent.futures
import os
import subprocess
import sys
import tempfile

ADVERSARIAL = [
    b"", b" ", b"  ", b"\n", b"\r\n", b"\n\n\n", b"a\r\nb", b"\t\t\n", b"a  b\t\t\nc   ", b" leading", b"trailing ",
    b"   both   ", b"a \n b", b"x\n \ny", b"end  \n", b"word\t", b"\t word",
    b"1234567", b"3.14", b"x1y22z333", b" 42", b"a 1 b 22", b"2024-12-01 18:35", b"1,000,000.00",
    "١٢٣ ٤٥".encode(), "½ Ⅻ ² ³".encode(), "१२३".encode(),
    "naïve café Ђ 日本語".encode(), "e\u0301 a\u0308\u0308 \u0301x".encode(), "नमस्ते दुनिया".encode(),
    "สวัสดีครับ".encode(), "안녕하세요 세계".encode(), "Ωmega ǅungla ﬁne".encode(), "Привет, мир!".encode(),
    "👍🏽🇩🇪".encode(), "👨‍👩‍👧 family".encode(), "❤️ love".encode(), " 😀😀 😀".encode(),
    b"don't I'M we'll", b"they've she'd it's 'tis you're", b"DON'T WE'LL THEY'RE", b"''", b"'s", b"' s", b"a's'",
    b"rock'n'roll", "it’s curly".encode(),
    b"<|im_start|>user\nhi<|im_end|>", b"<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    b"<|endoftext|><|endoftext|>", b"<|im_start|", b"a<|im_end|>b", b"<repo_name><reponame>x", b" <|im_end|> ",
    b"<|im_start|><|im_start|>", b"<filename>main.py<file_sep>",
    b"\xff\xfe abc", b"\xe6\x97", b"abc\xe6\x97\xa5\xe6", b"\xc0\x80", b"\xed\xa0\x80", b"\x80\x80 x", b"\xf0\x9f\x98",
    b"\xf0\x9f\x98 ok", b"caf\xe9", b"\xfe\xff", b"\xc3", b"\xc3(",
    b"\xf4\x90\x80\x80", b"\xf7\xbf\xbf\xbf",  # beyond U+10FFFF: both programs fail
    b"\x00\x01\x1f\x7f", b"a\x1cb\x1dc", "\u0085 nel".encode(), "\u00a0nbsp \u00a0".encode(), "\u2028line".encode(),
    "\u3000ideographic\u3000".encode(), "\u200bzero\u200bwidth".encode(), "\ufeffBOM".encode(), b"\x0b\x0c form",
    b"!!!???...", b"--->", b" ...", b"$100", b"a+b=c", b"<html><body>", b"```python\nprint('hi')\n```",
    b"def f(x):\n    return x**2\n", b"    indented\n\tline", b"a" * 1000, b" " * 100, b"\n" * 50 + b"x",
    "\U000e0080 \ue000 \U0001fae8 \U0002ebf0 \U00031350 \U0010ffff".encode(),
    b"The quick brown fox jumps over the lazy dog.", b"Hello, World! How are you?",
    "Ünïcödé wörds: ßtraße, İstanbul, ǈ".encode(), b"C++ && a->b || c::d", b"http://example.com/a?b=c&d=e",
    b"email@example.com", b"#hashtag @mention", b"    ", b" \t \t ", b"\r", b"\r\r\n\n",
]


# Pieces the random cases are drawn from: the classes each regex branch looks at, the
# boundaries between them, special-token texts and bytes that are not UTF-8.
POOL = [b"a", b"Z", b"word", b" ", b"  ", b"\t", b"\r", b"\n", b"\r\n", b"'", b"'s", b"'LL", b"'re", b"1", b"23",
        b"456", b".", b",", b"!?", b"(", b"$", b"_", b"-", "é".encode(), "Ђ".encode(), "日本".encode(),
        "\u0301".encode(), "👍".encode(), "\U0001f3fd".encode(), "\u200d".encode(), "\u00a0".encode(),
        "\u3000".encode(), "\u0085".encode(), b"\x1c", b"\x00", "٣".encode(), "½".encode(), "\ue000".encode(),
        "\U000e0080".encode(), "\ufffd".encode(), b"<|im_start|>", b"<|im_end|>", b"<|endoftext|>", b"<|im",
        b"\x80", b"\xff", b"\xc3", b"\xe6\x97", b"\xf0\x9f", b"\xed\xa0\x80", b"\xc0\xaf"]


def random_cases(n, seed=1234):
    import random
    rng = random.Random(seed)
    return [("random %d" % i, b"".join(rng.choice(POOL) for _ in range(rng.randint(1, 30)))) for i in range(n)]


def synthetic_cases():
    """1 MB inputs that stress one path each: one long word, one long whitespace run, digits,
    many distinct words (nothing for a word cache to reuse)."""
    import random
    rng = random.Random(99)
    cps = [c for c in range(0x20, 0x3000) if chr(c).isprintable()]
    words = []
    n = 0
    while n < 1000000:
        w = ("".join(chr(rng.choice(cps)) for _ in range(rng.randint(1, 8))) + " ").encode()
        words.append(w)
        n += len(w)
    digits = bytes(rng.choice(b"0123456789") for _ in range(1000000))
    big = [("1 MB of 'a'", b"a" * 1000000), ("1 MB of '!'", b"!" * 1000000), ("1 MB of ' '", b" " * 1000000),
           ("1 MB of random digits", digits), ("1 MB of random words", b"".join(words))]
    # The same at 20 KB: llama.cpp's std::regex stages (the default pre-tokenizer) recurse
    # per character and overflow the stack on the 1 MB runs.
    return big + [(name.replace("1 MB", "20 KB"), text[:20000]) for name, text in big]


def run(cmd, whole=False):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if whole and p.returncode == 0:
        return p.stdout, None
    if p.returncode < 0:
        return None, "killed by signal %d" % -p.returncode
    if p.returncode != 0:
        return None, p.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["exit %d" % p.returncode]
    out = p.stdout.decode().strip().splitlines()
    ids = out[-1].strip() if out else ""
    return ids, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenize-ids", required=True)
    ap.add_argument("--llama-tokenize", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--texts", default=os.path.join(os.path.dirname(__file__), "..", "..", "examples", "data"))
    ap.add_argument("--lines", type=int, default=100000)
    ap.add_argument("--random", type=int, default=300, help="random strings drawn from POOL (fixed seed)")
    ap.add_argument("--no-synthetic", action="store_true", help="skip the 1 MB synthetic inputs")
    ap.add_argument("--pieces", action="store_true",
                    help="compare each token's piece (llama-tokenize without --ids) instead of the id list")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()

    cases = [("adversarial %d" % i, s) for i, s in enumerate(ADVERSARIAL)] + random_cases(args.random)
    if not args.no_synthetic:
        cases += synthetic_cases()
    valid = os.path.join(args.texts, "tinystories_valid_first101.txt")
    if os.path.exists(valid):
        data = open(valid, "rb").read()
        cases += [("story %d" % i, s) for i, s in enumerate(data.split(b"<|endoftext|>"))]
        cases += [("line %d" % i, s) for i, s in enumerate(data.split(b"\n")[: args.lines])]
        cases.append(("file tinystories_valid_first101.txt", data))
    train = os.path.join(args.texts, "tinystories_train_sample_2MiB.txt")
    if os.path.exists(train):
        cases.append(("file tinystories_train_sample_2MiB.txt", open(train, "rb").read()))

    def both_sides(tmp, index, text):
        """Both tokenizers on one case, with and without special-token parsing."""
        path = os.path.join(tmp, "case%d.txt" % index)
        with open(path, "wb") as f:
            f.write(text)
        results = []
        for parse_special in (True, False):
            ours_cmd = [args.tokenize_ids, args.model, path] + (["--parse-special"] if parse_special else [])
            theirs_cmd = [args.llama_tokenize, "-m", args.model, "-f", path, "--ids", "--log-disable",
                          "--no-escape"] + ([] if parse_special else ["--no-parse-special"])
            if args.pieces:
                ours_cmd.append("--pieces")
                theirs_cmd.remove("--ids")
            results.append((parse_special, run(ours_cmd, args.pieces), run(theirs_cmd, args.pieces)))
        os.remove(path)
        return results

    n_cases = n_match = n_tokens = n_both_fail = 0
    mismatches = []
    crashes = []  # llama-tokenize killed by a signal where nibble gave ids
    # Each case is four short processes: one case per core at a time.
    with tempfile.TemporaryDirectory() as tmp, \
            concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        outcomes = pool.map(lambda item: both_sides(tmp, item[0], item[1][1]), enumerate(cases))
        for (name, text), results in zip(cases, outcomes):
            for parse_special, (ours, ours_err), (theirs, theirs_err) in results:
                n_cases += 1
                if ours is None and theirs is None:
                    n_match += 1
                    n_both_fail += 1
                    if args.verbose:
                        print("both fail: %s: nibble %s / llama.cpp %s" % (name, ours_err, theirs_err))
                    continue
                if ours is not None and theirs is None and str(theirs_err).startswith("killed by signal"):
                    crashes.append((name, parse_special, theirs_err))
                    continue
                if ours == theirs:
                    n_match += 1
                    if args.pieces:
                        n_tokens += ours.count(b" -> '")
                    else:
                        n_tokens += ours.count(",") + 1 if ours not in ("[]", "") else 0
                    continue
                mismatches.append((name, parse_special, text, ours or ours_err, theirs or theirs_err))

    for name, ps, text, ours, theirs in mismatches:
        print("MISMATCH %s (parse_special=%s) text=%r" % (name, ps, text[:200]))
        print("  nibble:    %s" % str(ours)[:400])
        print("  llama.cpp: %s" % str(theirs)[:400])
    for name, ps, err in crashes:
        print("LLAMA.CPP CRASHED %s (parse_special=%s): %s; nibble gave ids (not compared)" % (name, ps, err))
    print("%d cases (%d texts x parse_special on/off), %d match (%d of them both rejected), %d mismatch, "
          "%d where llama-tokenize crashed; %d tokens compared" %
          (n_cases, len(cases), n_match, n_both_fail, len(mismatches), len(crashes), n_tokens))
    return 0 if not mismatches else 1


if __name__ == "__main__":
    sys.exit(main())
