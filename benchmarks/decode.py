"""Decoding speed: cached batched beam search against re-running the whole sequence.

A UniLM model of 4 layers, hidden 256, 4 heads and the 21128-token Chinese
vocabulary (random weights: speed does not depend on them), 4 sources of 128
tokens, beam 4, and a forced number of new tokens (the end token is blocked
until ``max_length``, so every run generates all of them).

* cached: ``bert4x.decoding.Decoder.beam_search`` over the 4 sources at once,
  the key/value cache on the device, the step compiled once (``tf.function``,
  and with ``--xla`` also XLA);
* re-run (bert4keras's way): a ``RerunDecoder`` whose ``predict``
  concatenates the source and the generated ids and runs the whole model
  (``predict_on_batch``) every step, one source at a time.

The cached route also times greedy decoding and sampling (one sample per
source, top-k 4 and top-p 0.9, seed 0) on the same sources: sampling and beam
search are compared with greedy decoding, which needs nothing but an argmax on
the host.

Prints seconds per generated token per source and the ratios. Each source is
decoded on its own by the re-run route, so its per-source cost is measured on
``--rerun-sources`` sources (all 4 by default; fewer keeps the 128-token run
short without changing the per-source figure).

With ``--gpt2`` it times a GPT-2 instead (4 layers, hidden 256, 4 heads, GPT-2's
50257-token vocabulary; random weights in a Hugging Face folder that both read):
``Decoder.greedy`` and ``Decoder.beam_search`` (beam 4) against transformers'
``GPT2LMHeadModel.generate`` with its key/value cache (greedy, and ``num_beams=4``), the
same sources, the same number of new tokens (``min_new_tokens`` and ``min_length``
force them), each route timed in turn in every round.

``--models t5`` times an mT5 instead (4 encoder and 4 decoder blocks, hidden 256, 4
heads of 64, gated feed-forward 1024, the same vocabulary; random weights made by
``transformers`` and read by bert4x from its folder, so both run the same weights):
bert4x's ``Decoder`` greedy and beam 4 (the encoder and the cross-attention keys once
per source, the decoder's self-attention cached) against ``transformers``'
``MT5ForConditionalGeneration.generate`` with its key/value cache, both batched over
the 4 sources, timed in turn in the same run.

Usage:
    python benchmarks/decode.py [--new-tokens 32 128] [--repeats 2] [--xla]
    python benchmarks/decode.py --gpt2 [--new-tokens 32] [--threads 1]
    python benchmarks/decode.py --models t5 --new-tokens 32 [--repeats 3]
"""

import os
import sys

# Run as a script, this folder comes first on sys.path, where a sibling
# benchmark named like a standard module (tokenize.py) would shadow it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import time  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from bert4x.configs import BertConfig  # noqa: E402
from bert4x.decoding import Decoder, RerunDecoder  # noqa: E402
from bert4x.models import BERT, build_transformer_model  # noqa: E402

CLS, SEP = 101, 102


class FullRerun(RerunDecoder):
    """bert4keras's route: the whole sequence through the model at every step."""

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def predict(self, inputs, output_ids, states):
        token_ids, segment_ids = inputs
        token_ids = np.concatenate([token_ids, output_ids], axis=1)
        segment_ids = np.concatenate([segment_ids, np.ones_like(output_ids)], axis=1)
        return self.model.predict_on_batch([token_ids, segment_ids])[:, -1]


def build(args):
    keras.utils.set_random_seed(0)
    config = BertConfig(vocab_size=21128, hidden_size=256, num_hidden_layers=4,
                        num_attention_heads=4, intermediate_size=1024,
                        max_position_embeddings=512, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return BERT(config, application="unilm")


def make_sources(args):
    rng = np.random.default_rng(0)
    return [[CLS] + rng.integers(106, 21128, args.source_length - 2).tolist() + [SEP]
            for _ in range(args.batch)]


def print_figures(heading, figures, beam):
    """Seconds per generated token of each contender, and transformers / bert4x ratios."""
    print(f"\n{heading}:")
    width = max(len(label) for label in figures)
    for label, seconds in figures.items():
        print(f"  {label:<{width}s} {seconds:.5f} s per generated token per source")
    for search in ("greedy", f"beam {beam}"):
        print(f"  ratio transformers / bert4x, {search}: "
              f"{figures['transformers ' + search] / figures['bert4x ' + search]:.2f}x")


def interleaved(functions, repeats, tokens):
    """Best seconds per token of each function, the functions timed in turn each round
    (so that a change of machine load hits them all alike)."""
    best = {name: float("inf") for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: seconds / tokens for name, seconds in best.items()}


def timed(function, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


GPT2_SIZES = dict(vocab_size=50257, n_embd=256, n_layer=4, n_head=4, n_positions=1024)
GPT2_END = 50256  # <|endoftext|>


def gpt2_against_transformers(args):
    """Seconds per generated token per source: bert4x's cached Decoder and
    transformers' cached generate on the same GPT-2 weights."""
    import tempfile

    import torch
    import transformers

    if args.threads:
        # Both libraries on the same number of threads (set before TensorFlow starts): on
        # a busy machine PyTorch's spinning OpenMP threads lose most when they outnumber
        # the free cores.
        torch.set_num_threads(args.threads)
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf
            tf.config.threading.set_intra_op_parallelism_threads(args.threads)
            tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    torch.manual_seed(0)
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        **GPT2_SIZES, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    with tempfile.TemporaryDirectory() as folder:
        hf_model.save_pretrained(folder)
        builder = build_transformer_model(folder, return_keras_model=False)
    rng = np.random.default_rng(0)
    # Equal lengths: no padding, so transformers needs no attention mask.
    sources = rng.integers(1, GPT2_END, (args.batch, args.source_length)).tolist()
    input_ids = torch.tensor(sources)
    print(f"backend {keras.backend.backend()}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {os.cpu_count()} CPUs; GPT-2 "
          f"{GPT2_SIZES['n_layer']}x{GPT2_SIZES['n_embd']}, vocab {GPT2_SIZES['vocab_size']}, "
          f"{args.batch} sources x {args.source_length} tokens, beam {args.beam}")
    for new_tokens in args.new_tokens:
        decoder = Decoder(builder, end_id=GPT2_END, max_length=new_tokens,
                          min_length=new_tokens)

        def generate(beams):
            with torch.no_grad():
                return hf_model.generate(
                    input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                    num_beams=beams, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                    pad_token_id=GPT2_END, use_cache=True)

        functions = {
            "bert4x greedy": lambda: decoder.greedy(sources),
            "transformers greedy": lambda: generate(1),
            f"bert4x beam {args.beam}": lambda: decoder.beam_search(sources,
                                                                   beam_size=args.beam),
            f"transformers beam {args.beam}": lambda: generate(args.beam),
        }
        found = functions["bert4x greedy"]()
        assert all(len(result.token_ids) == new_tokens for result in found)
        assert generate(1).shape[1] == args.source_length + new_tokens
        for function in functions.values():
            function()  # traces and warms up
        print_figures(f"{new_tokens} new tokens",
                      interleaved(functions, args.repeats, new_tokens * args.batch), args.beam)
def build_t5(folder):
    """A random mT5 saved by transformers in ``folder`` (untied output, as mT5's), and
    bert4x's builder of the same weights."""
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    from bert4x.models import build_transformer_model

    torch.manual_seed(0)
    config = transformers.MT5Config(
        vocab_size=21128, d_model=256, d_kv=64, d_ff=1024, num_layers=4, num_heads=4,
        feed_forward_proj="gated-gelu", dropout_rate=0.0, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=SEP)
    transformers.MT5ForConditionalGeneration(config).save_pretrained(folder)
    path = os.path.join(folder, "model.safetensors")
    state = load_file(path)
    state["lm_head.weight"] = torch.randn(state["shared.weight"].shape) * 0.05
    save_file(state, path, metadata={"format": "pt"})
    reference = transformers.MT5ForConditionalGeneration.from_pretrained(
        folder, local_files_only=True).eval()
    return reference, build_transformer_model(checkpoint_path=folder,
                                              return_keras_model=False)


def t5_rows(args, sources):
    """bert4x's cached decoding of an mT5 against transformers' generate."""
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as folder:
        reference, builder = build_t5(folder)
    print(f"\nbackend {keras.backend.backend()}, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads; mT5 4+4x256, vocab 21128, {args.batch} "
          f"sources x {args.source_length} tokens")
    ids = torch.tensor(np.asarray(sources))
    mask = torch.ones_like(ids)
    for new_tokens in args.new_tokens:
        settings = dict(max_length=new_tokens, min_length=new_tokens)
        decoder = Decoder(builder, end_id=SEP)

        def generate(beams):
            with torch.no_grad():
                return reference.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens, num_beams=beams, do_sample=False,
                    use_cache=True, early_stopping=False)

        functions = {
            "bert4x greedy": lambda: decoder.greedy(sources, **settings),
            "transformers greedy": lambda: generate(1),
            f"bert4x beam {args.beam}": lambda: decoder.beam_search(
                sources, beam_size=args.beam, **settings),
            f"transformers beam {args.beam}": lambda: generate(args.beam),
        }
        found = functions["bert4x greedy"]()  # compiles
        assert all(len(result.token_ids) == new_tokens for result in found)
        produced = functions["transformers greedy"]()
        # The same weights: the same greedy tokens (up to float ties on random weights).
        same = np.mean([list(row[1:]) == result.token_ids
                        for row, result in zip(produced.numpy(), found)])
        for name, function in functions.items():
            if "beam" in name:
                function()  # warms up
        print_figures(f"{new_tokens} new tokens ({same:.0%} of greedy sequences equal)",
                      interleaved(functions, args.repeats, new_tokens * args.batch), args.beam)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--source-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    parser.add_argument("--rerun-sources", type=int, nargs="+", default=[4, 1],
                        help="sources decoded by the re-run route, per --new-tokens entry")
    parser.add_argument("--xla", action="store_true", help="also time the XLA-compiled step")
    parser.add_argument("--gpt2", action="store_true",
                        help="time GPT-2 against transformers' generate instead")
    parser.add_argument("--threads", type=int, default=0,
                        help="with --gpt2: threads of both libraries (0: their defaults)")
    parser.add_argument("--models", nargs="+", choices=("unilm", "t5"), default=["unilm"],
                        help="UniLM against re-runs, and/or mT5 against transformers")
    args = parser.parse_args()
    if args.gpt2:
        gpt2_against_transformers(args)
        return

    sources = make_sources(args)
    if "t5" in args.models:
        t5_rows(args, sources)
    if "unilm" not in args.models:
        return
    builder = build(args)
    print(f"backend {keras.backend.backend()}, {os.cpu_count()} CPUs; UniLM 4x256, vocab "
          f"21128, {args.batch} sources x {args.source_length} tokens, beam {args.beam}")
    rerun_counts = (args.rerun_sources + args.rerun_sources[-1:] * len(args.new_tokens))
    variants = [("cached", False)] + ([("cached XLA", True)] if args.xla else [])
    for new_tokens, rerun_count in zip(args.new_tokens, rerun_counts):
        settings = dict(max_length=new_tokens, min_length=new_tokens)
        figures = {}
        for label, jit in variants:
            decoder = Decoder(builder, end_id=SEP, jit_compile=jit)
            functions = {
                label: lambda: decoder.beam_search(sources, beam_size=args.beam,
                                                   **settings),
                f"{label} greedy": lambda: decoder.greedy(sources, **settings),
                f"{label} top-k 4": lambda: decoder.sample(sources, top_k=4, seed=0,
                                                           **settings),
                f"{label} top-p 0.9": lambda: decoder.sample(sources, top_p=0.9, seed=0,
                                                             **settings),
            }
            results = functions[label]()  # compiles
            assert all(len(found[0].token_ids) == new_tokens for found in results)
            for name, function in functions.items():
                if name != label:
                    function()  # warms up
            figures.update(interleaved(functions, args.repeats, new_tokens * args.batch))
        rerun = FullRerun(builder.model, end_id=SEP, **settings)
        segment = [0] * args.source_length
        chosen = sources[:rerun_count]

        def rerun_all():
            for source in chosen:
                rerun.beam_search([np.array(source), np.array(segment)],
                                  beam_size=args.beam)

        rerun.beam_search([np.array(sources[0])[:8], np.array(segment[:8])],
                          beam_size=args.beam, max_length=2, min_length=2)  # traces
        figures["re-run"] = timed(rerun_all, 1) / (new_tokens * rerun_count)
        print(f"\n{new_tokens} new tokens (re-run measured on {rerun_count} source(s)):")
        for label, seconds in figures.items():
            print(f"  {label:<20s} {seconds:.5f} s per generated token per source")
        for label, _ in variants:
            print(f"  ratio re-run / {label} beam: {figures['re-run'] / figures[label]:.1f}x")
            greedy = figures[f"{label} greedy"]
            print(f"  {label}, ratio to greedy: beam {args.beam} "
                  f"{figures[label] / greedy:.2f}x, top-k 4 "
                  f"{figures[label + ' top-k 4'] / greedy:.2f}x, top-p 0.9 "
                  f"{figures[label + ' top-p 0.9'] / greedy:.2f}x")


if __name__ == "__main__":
    main()
