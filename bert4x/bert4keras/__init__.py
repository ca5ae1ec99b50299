"""bert4keras 0.11.5's public API on bert4x and Keras 3.

Rewriting ``bert4keras`` to ``bert4x.bert4keras`` in a script's imports is meant
to be the only change it needs (besides what Keras 3 asks of every program; see
``docs/migrating_from_bert4keras.md``). The modules mirror bert4keras's:
``backend``, ``models``, ``layers``, ``snippets``, ``tokenizers`` and
``optimizers``. They are adapters: the numbers come from bert4x's own layers,
decoder, tokenizer and optimisers, with bert4keras's argument names, outputs and
semantics on top.
"""

__version__ = "0.11.5"
