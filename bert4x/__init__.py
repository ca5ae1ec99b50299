"""bert4x: a Keras 3 toolkit for pretrained Transformers of the BERT family."""

__version__ = "0.1.0"
