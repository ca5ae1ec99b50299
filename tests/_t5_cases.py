"""Tiny random T5 / mT5 references for the tests: Hugging Face models and folders, this
file's own Hugging Face -> official (Mesh TensorFlow) name rules, padded inputs.

Shapes are odd on purpose: 3 heads of 7 (21 != hidden 20), a feed-forward of 26, two
encoder and three decoder blocks, 8 buckets up to distance 12 (so inputs of 11
tokens reach the logarithmic buckets), padded batches.
"""

import os
import re

import numpy as np

VOCAB = 61
HF_CONFIG = dict(vocab_size=VOCAB, d_model=20, d_kv=7, d_ff=26, num_layers=2,
                 num_decoder_layers=3, num_heads=3, dropout_rate=0.0,
                 relative_attention_num_buckets=8, relative_attention_max_distance=12)
#: key: (Hugging Face class prefix, feed_forward_proj, untied output, bert4x family).
VERSIONS = {"t5.1.0": ("T5", "relu", False, "t5.1.0"),
            "t5.1.1": ("T5", "gated-gelu", True, "t5.1.1"),
            "mt5.1.1": ("MT5", "gated-gelu", True, "mt5.1.1")}
ENCODER_LENGTHS, DECODER_LENGTHS = (11, 3, 6), (6, 2, 4)


def inputs(seed=0):
    """``(encoder_ids [3, 11], decoder_ids [3, 6])``, padded with 0; decoder rows start
    with the start id 0."""
    rng = np.random.default_rng(seed)
    encoder = np.zeros((len(ENCODER_LENGTHS), max(ENCODER_LENGTHS)), np.int32)
    decoder = np.zeros((len(DECODER_LENGTHS), max(DECODER_LENGTHS)), np.int32)
    for row, (source, target) in enumerate(zip(ENCODER_LENGTHS, DECODER_LENGTHS)):
        encoder[row, :source] = rng.integers(1, VOCAB, source)
        decoder[row, 1:target] = rng.integers(1, VOCAB, target - 1)
    return encoder, decoder


def decoder_positions(decoder_ids):
    """Where the decoder's outputs are real: its start id and its non-padding ids."""
    real = decoder_ids != 0
    real[:, 0] = True
    return real


def hf_model(version, folder, seed=0):
    """A random Hugging Face model of ``version`` saved in ``folder`` and loaded back
    from it (an untied output kernel is written into the file: transformers 5 keeps
    it untied only then)."""
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    prefix, projection, untied, _ = VERSIONS[version]
    config_class = getattr(transformers, f"{prefix}Config")
    model_class = getattr(transformers, f"{prefix}ForConditionalGeneration")
    extra = {} if prefix == "MT5" else dict(tie_word_embeddings=not untied)
    model = model_class(config_class(**HF_CONFIG, feed_forward_proj=projection, **extra))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            # a tied output reads the embedding through x / sqrt(hidden): large enough rows
            # make its distributions peaked (and the parity checks sensitive)
            scale = (0.5 if untied else 2.0) if name == "shared.weight" else 0.3
            parameter.copy_(1.0 + 0.1 * noise if "layer_norm" in name else scale * noise)
    model.save_pretrained(folder)
    if untied:
        path = os.path.join(folder, "model.safetensors")
        state = load_file(path)
        state["lm_head.weight"] = 0.8 * torch.randn(state["shared.weight"].shape,
                                                    generator=generator)
        save_file(state, path, metadata={"format": "pt"})
    return model_class.from_pretrained(folder, local_files_only=True).eval()


def hf_outputs(model, encoder_ids, decoder_ids):
    """``(probabilities [batch, T, vocab], encoder output [batch, S, hidden])``."""
    import torch
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(encoder_ids.astype(np.int64)),
                    attention_mask=torch.from_numpy((encoder_ids != 0).astype(np.int64)),
                    decoder_input_ids=torch.from_numpy(decoder_ids.astype(np.int64)))
    return (torch.softmax(out.logits, -1).numpy(), out.encoder_last_hidden_state.numpy())


def official_weights(model, version):
    """The model's weights under Mesh TensorFlow's names, by this file's rules."""
    norm = "rms_norm" if version == "mt5.1.1" else "layer_norm"
    untied = VERSIONS[version][2]
    weights = {}
    for name, value in model.state_dict().items():
        value = value.detach().numpy().astype(np.float32)
        if name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight") or (
                name == "lm_head.weight" and not untied):
            continue
        if name == "shared.weight":
            weights["shared/embedding"] = value
            continue
        if name == "lm_head.weight":
            weights["decoder/logits/kernel"] = np.ascontiguousarray(value.T)
            continue
        final = re.fullmatch(r"(encoder|decoder)\.final_layer_norm\.weight", name)
        if final:
            last = "final_layer_norm" if norm == "layer_norm" else norm
            weights[f"{final.group(1)}/{last}/scale"] = value
            continue
        stack, block, layer, rest = re.fullmatch(
            r"(encoder|decoder)\.block\.(\d+)\.layer\.(\d+)\.(.+)\.weight", name).groups()
        prefix = f"{stack}/block_{int(block):03d}/layer_{int(layer):03d}/"
        if rest == "layer_norm":
            weights[prefix + norm + "/scale"] = value
        elif rest.startswith("DenseReluDense"):
            weights[prefix + rest.replace(".", "/") + "/kernel"] = np.ascontiguousarray(value.T)
        else:  # q, k, v, o [in, out] and the position table [heads, buckets]
            weights[prefix + rest.replace(".", "/")] = np.ascontiguousarray(value.T)
    return weights


def bert4keras_config(version):
    """bert4keras's config of the tiny model (its field names; 1.1: gated GELU)."""
    c = HF_CONFIG
    return dict(vocab_size=c["vocab_size"], hidden_size=c["d_model"],
                num_hidden_layers=c["num_layers"], num_decoder_layers=c["num_decoder_layers"],
                num_attention_heads=c["num_heads"], attention_head_size=c["d_kv"],
                intermediate_size=c["d_ff"], hidden_dropout_prob=0.0,
                relative_attention_num_buckets=c["relative_attention_num_buckets"],
                relative_attention_max_distance=c["relative_attention_max_distance"],
                hidden_act="relu" if version == "t5.1.0" else ["gelu", "linear"])


def write_official(folder, weights, config):
    """A TF checkpoint ``folder/model.ckpt`` of ``weights`` and ``config.json``."""
    from _official_checkpoint import write_official as write
    return write(folder, weights, config, config_name="config.json",
                 checkpoint_name="model.ckpt")
