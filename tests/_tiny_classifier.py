"""The tiny classifier and batch the regulariser tests share (any Keras backend)."""

import keras
import numpy as np

VOCAB, WIDTH, CLASSES, LR = 20, 8, 3, 0.5
X = np.array([[1, 4, 4, 7, 0], [2, 2, 9, 3, 5], [6, 1, 8, 0, 0], [4, 4, 4, 2, 1]], "int32")
Y = np.array([0, 2, 1, 2], "int32")


def tiny_classifier(dropout=0.0, seed=7):
    """Embedding -> dropout -> mean over positions -> softmax, with fixed weights."""
    token_ids = keras.Input((None,), dtype="int32")
    hidden = keras.layers.Embedding(VOCAB, WIDTH, name="Embedding-Token")(token_ids)
    hidden = keras.layers.Dropout(dropout, seed=3)(hidden)
    hidden = keras.layers.GlobalAveragePooling1D()(hidden)
    probs = keras.layers.Dense(CLASSES, activation="softmax", name="Head")(hidden)
    model = keras.Model(token_ids, probs)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in model.weights])
    return model


def compiled(loss="sparse_categorical_crossentropy", optimizer=None, jit=False, **kwargs):
    """`tiny_classifier` compiled with SGD(LR) (so an update is ``w - LR * g``)."""
    model = tiny_classifier(**kwargs)
    model.compile(optimizer or keras.optimizers.SGD(LR), loss, jit_compile=jit)
    return model
