"""Training state per device of BERT-large and of a T5 of the same size under model=1, 2, 4.

The figures come from bert4x.distribution's layout rules: each variable is split over
the model axis as the layout map says (replicated where the axis does not divide it),
and replicated over the data axis. Per parameter: the float32 weight, AdamW's two
float32 moments, and the float32 gradient of the update (16 bytes); activations are
not counted (they depend on the batch and are split over the data axis).

BERT-large is built by bert4x (English vocabulary 30,522, 24 x 1024, feed-forward 4096,
512 positions, the pretraining heads: MLM transform, tied output and bias, pooler)
without allocating its weights. bert4x has no T5 yet: its variables are listed from
T5-large's published sizes (Raffel et al. 2020; the t5-large config: vocabulary
32,128, d_model 1024, d_ff 4096, 16 heads of 64, 24 encoder and 24 decoder blocks,
relative position biases of 32 buckets per stack, scale-only layer norms, no biases,
input and output embeddings shared), named so that the same rules apply (cross-attention
split as self-attention).

Usage:
    python benchmarks/mesh_memory.py
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

BYTES_PER_PARAMETER = 16  # weight, two AdamW moments, gradient (float32)
T5_RULES = {r"Decoder-\d+-CrossAttention/(?:query|key|value)/kernel": (None, "model"),
            r"Decoder-\d+-CrossAttention/output/kernel": ("model", None),
            r"(?:Encoder|Decoder)-RelativePosition/embeddings": None}


def bert_large_shapes():
    from bert4x.distribution import _variables_of
    from bert4x.models import build_transformer_model
    variables = _variables_of(lambda: build_transformer_model(
        vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
        intermediate_size=4096, max_position_embeddings=512, with_pool=True, with_mlm=True,
        return_keras_model=False))
    return {v.path: tuple(v.shape) for v in variables if "seed_generator" not in v.path}


def t5_large_shapes(vocab=32128, width=1024, inner=1024, feed_forward=4096, layers=24,
                    heads=16, buckets=32):
    shapes = {"Embedding-Token/embeddings": (vocab, width)}
    for stack in ("Encoder", "Decoder"):
        shapes[f"{stack}-RelativePosition/embeddings"] = (buckets, heads)
        shapes[f"{stack}-Output-Norm/gamma"] = (width,)
        for index in range(layers):
            block = f"{stack}-{index}-"
            attentions = ["MultiHeadSelfAttention"] + (["CrossAttention"]
                                                       if stack == "Decoder" else [])
            for attention in attentions:
                for name in ("query", "key", "value"):
                    shapes[f"{block}{attention}/{name}/kernel"] = (width, inner)
                shapes[f"{block}{attention}/output/kernel"] = (inner, width)
                shapes[f"{block}{attention}-Norm/gamma"] = (width,)
            shapes[f"{block}FeedForward/intermediate/kernel"] = (width, feed_forward)
            shapes[f"{block}FeedForward/output/kernel"] = (feed_forward, width)
            shapes[f"{block}FeedForward-Norm/gamma"] = (width,)
    return shapes


def main():
    import numpy as np
    from bert4x.distribution import bytes_per_device
    models = {"BERT-large": (bert_large_shapes(), None),
              "T5-large (published sizes)": (t5_large_shapes(), T5_RULES)}
    print("| model | parameters | model=1 | model=2 | model=4 |")
    print("|---|---|---|---|---|")
    for name, (shapes, rules) in models.items():
        parameters = sum(int(np.prod(shape)) for shape in shapes.values())
        cells = [bytes_per_device(shapes, size, BYTES_PER_PARAMETER, rules) / 2 ** 30
                 for size in (1, 2, 4)]
        print(f"| {name} | {parameters / 1e6:.1f} M | "
              + " | ".join(f"{cell:.2f} GiB" for cell in cells) + " |")


if __name__ == "__main__":
    main()
