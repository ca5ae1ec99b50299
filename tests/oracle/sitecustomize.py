"""Keras 2.3 behaviours that bert4keras 0.11.5 relies on, restored on tf-keras 2.21.

Test-only: this file is put on the PYTHONPATH of the bert4keras oracle subprocess
(see ``tests/_oracle.py``) and nowhere else; bert4x never imports it.
"""

import os

if os.environ.get("BERT4X_ORACLE") == "1":
    import tensorflow as tf
    import tf_keras
    from tf_keras.src.engine import compile_utils, data_adapter

    # 1. bert4keras's optimizers subclass keras.optimizers.Optimizer and call
    #    _set_hyper/_resource_apply_dense: the OptimizerV2 of Keras 2.3.
    for api in (tf_keras, tf.keras):
        api.optimizers.Optimizer = tf_keras.optimizers.legacy.Optimizer

    # 2. A generator batch ([a, b], None) means "inputs only"; tf-keras 2.21
    #    returns the bare list, which later unpacks as x=a, y=b.
    _pack = data_adapter.pack_x_y_sample_weight

    def pack_x_y_sample_weight(x, y=None, sample_weight=None):
        if y is None and sample_weight is None:
            return (x,)
        return _pack(x, y, sample_weight)

    data_adapter.pack_x_y_sample_weight = pack_x_y_sample_weight

    # 3. Integer targets reach custom losses in the prediction's float dtype.
    _match = compile_utils.match_dtype_and_rank

    def match_dtype_and_rank(y_t, y_p, sw):
        y_t, y_p, sw = _match(y_t, y_p, sw)
        if y_t.dtype.is_integer and y_p.dtype.is_floating:
            y_t = tf.cast(y_t, y_p.dtype)
        return y_t, y_p, sw

    compile_utils.match_dtype_and_rank = match_dtype_and_rank
