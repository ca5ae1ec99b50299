"""Model parallelism with ``keras.distribution``: a Megatron-style layout for every family.

:func:`layout_map` gives the ``keras.distribution.LayoutMap`` of a model on a
``DeviceMesh`` with a ``"model"`` axis (and usually a ``"data"`` axis):

* the token embedding ``[V, E]``, the MLM output bias ``[V]`` and T5's untied output
  kernel ``[H, V]`` are split on the vocabulary (the MLM logits reuse the token
  embedding, so the output layer is split on the vocabulary too);
* the query, key and value kernels ``[H, H]`` and the first feed-forward kernel
  ``[H, I]`` are split by columns (heads, hidden units), the attention output and the
  second feed-forward kernel by rows, so each block needs one reduction per half
  (T5's cross-attention as its self-attention, its gated feed-forward's first
  kernels alike);
* everything else is replicated: norms, biases, the segment and position tables
  (T5's relative position biases too),
  the small heads (pooler, NSP, MLM transform, ELECTRA's discriminator,
  RoFormer-V2's output mapping), ALBERT's
  and ELECTRA's embedding mapping, the Conditional Layer Normalization weights and
  the dropout seed states.

A dimension is never split on an axis whose size does not divide it: it is
replicated instead. Every variable of the model must match one rule of
:data:`LAYOUT_RULES` (or of ``extra_rules``); one that matches none is an error that
names it, so no variable silently falls back to Keras's default layout.

Example:
    >>> import keras  # doctest: +SKIP
    >>> mesh = keras.distribution.DeviceMesh((2, 4), ["data", "model"])  # doctest: +SKIP
    >>> layouts = layout_map(lambda: build_transformer_model(  # doctest: +SKIP
    ...     "bert_config.json", return_keras_model=False), mesh)
    >>> keras.distribution.set_distribution(keras.distribution.ModelParallel(  # doctest: +SKIP
    ...     layout_map=layouts, batch_dim_name="data"))
"""

import re

import numpy as np

MODEL = "model"

# (rule name, pattern fully matching a variable path, axes with MODEL where it is split).
# The patterns are mutually exclusive: LayoutMap refuses a path that two keys match.
_BLOCK = r"(?:[\w.-]+-)?"  # "Transformer-3-", "Transformer-" (shared ALBERT block) or none
_ATTENTION = r"MultiHead(?:Self|Cross)Attention"  # T5's decoder attends to the encoder too
LAYOUT_RULES = (
    ("token embedding (vocabulary)", r"Embedding-Token/embeddings", (MODEL, None)),
    ("MLM output bias (vocabulary)", r"MLM-Bias/bias", (MODEL,)),
    ("LM output kernel (vocabulary)", r"Decoder-Output-LM/kernel", (None, MODEL)),
    ("attention query/key/value (columns)",
     _BLOCK + _ATTENTION + r"/(?:query|key|value)/kernel", (None, MODEL)),
    ("attention output (rows)", _BLOCK + _ATTENTION + r"/output/kernel", (MODEL, None)),
    ("feed-forward in (columns)", _BLOCK + r"FeedForward/intermediate(?:_\d+)?/kernel",
     (None, MODEL)),
    ("feed-forward out (rows)", _BLOCK + r"FeedForward/output/kernel", (MODEL, None)),
    ("block biases (replicated)",
     _BLOCK + r"(?:MultiHeadSelfAttention/(?:query|key|value|output)"
     r"|FeedForward/(?:intermediate|output))/bias", None),
    # "-Norm-0", "-Norm-1": a sub-block normalised before and after (GPT2-ML).
    ("norms (replicated)", r"[\w.-]+-Norm(?:-\d)?/(?:gamma|beta|scale)", None),
    ("conditional norm weights (replicated)",
     r"(?:[\w.-]+-Norm(?:-\d)?/(?:gamma|beta)_dense|LayerNorm-Condition)/kernel", None),
    ("segment and position tables (replicated)",
     r"(?:Encoder-|Decoder-)?Embedding-(?:Segment|Position|Relative-Position)/embeddings",
     None),
    ("embedding mapping (replicated)",
     r"(?:Embedding-Mapping/(?:kernel|bias)|Embedding-Token-Projection/kernel)", None),
    ("heads (replicated)",
     r"(?:MLM-Dense|Pooler-Dense|NSP-Proba|Discriminator-Dense|Discriminator-Prediction"
     r"|Output-Mapping)/(?:kernel|bias)", None),
    ("dropout seed states (replicated)", r"seed_generator(?:_\d+)?/seed_generator_state", None),
)


def _variables_of(source):
    """The variables of a builder, a Keras model, or what a zero-argument callable
    returns (built inside ``keras.StatelessScope``, so its weights are never
    allocated)."""
    import keras
    if callable(source) and not isinstance(source, keras.Model):
        with keras.StatelessScope():
            source = source()
    model = getattr(source, "model", source)
    if not isinstance(model, keras.Model):
        raise TypeError(f"expected a bert4x builder, a keras.Model or a callable returning "
                        f"one, got {type(source).__name__}")
    return model.variables


def _divisible_axes(axes, shape, model_size):
    """``axes`` with MODEL dropped (replicated) on a dimension it does not divide."""
    if axes is None:
        return (None,) * len(shape)
    if len(axes) != len(shape):
        raise ValueError(f"a layout of {len(axes)} dimensions for a variable of shape "
                         f"{tuple(shape)}")
    return tuple(axis if axis is None or shape[index] % model_size == 0 else None
                 for index, axis in enumerate(axes))


def variable_layouts(source, model_size, extra_rules=None):
    """``{variable path: (rule name, pattern, axes)}`` for every variable of ``source``.

    Args:
        source: a bert4x builder, a ``keras.Model``, or a zero-argument callable that
            builds one (built without allocating its weights).
        model_size: the size of the mesh's ``"model"`` axis.
        extra_rules: ``{pattern: axes}`` for variables of your own layers (patterns
            fully match variable paths, axes name ``"model"`` or None per dimension);
            they are tried before :data:`LAYOUT_RULES`.

    Raises:
        ValueError: a variable matches no rule (all are named).

    Example:
        >>> layouts = variable_layouts(builder, 4)  # doctest: +SKIP
        >>> layouts["Embedding-Token/embeddings"][2]  # doctest: +SKIP
        ('model', None)
    """
    if int(model_size) < 1:
        raise ValueError(f"model_size must be positive, got {model_size}")
    rules = [(f"extra rule {pattern!r}", pattern, tuple(axes) if axes is not None else None)
             for pattern, axes in (extra_rules or {}).items()] + list(LAYOUT_RULES)
    layouts, unmatched = {}, []
    for variable in _variables_of(source):
        for name, pattern, axes in rules:
            if re.fullmatch(pattern, variable.path):
                layouts[variable.path] = (name, pattern, _divisible_axes(
                    axes, variable.shape, int(model_size)))
                break
        else:
            unmatched.append(f"{variable.path} {tuple(variable.shape)}")
    if unmatched:
        raise ValueError(f"no layout rule matches these variables: {unmatched}. Pass "
                         "extra_rules={pattern: axes} for layers of your own (axes: 'model' "
                         "or None per dimension; None for a replicated variable)")
    return layouts


def layout_map(source, mesh, extra_rules=None):
    """The ``keras.distribution.LayoutMap`` of ``source`` on ``mesh`` (see the module).

    Its keys are the rule patterns that the model's variables match, so the map fits
    a new build of the same model (a model built under ``ModelParallel`` gets its
    variables sharded as they are created). A replicated variable's layout is ``()``
    (whatever its rank). Variables matching one pattern must get the same layout
    (they do in every bert4x family).

    Args:
        source: a bert4x builder, a ``keras.Model``, or a zero-argument callable that
            builds one (then built inside ``keras.StatelessScope``: no weights are
            allocated, so the map of a large model costs no memory).
        mesh: a ``keras.distribution.DeviceMesh`` with a ``"model"`` axis.
        extra_rules: see :func:`variable_layouts`.

    Example:
        >>> mesh = keras.distribution.DeviceMesh((2, 4), ["data", "model"])  # doctest: +SKIP
        >>> layouts = layout_map(builder, mesh)  # doctest: +SKIP
        >>> distribution = keras.distribution.ModelParallel(  # doctest: +SKIP
        ...     layout_map=layouts, batch_dim_name="data")
    """
    import keras
    if MODEL not in mesh.axis_names:
        raise ValueError(f"the mesh has no {MODEL!r} axis (axes {list(mesh.axis_names)})")
    model_size = int(mesh.shape[list(mesh.axis_names).index(MODEL)])
    by_pattern = {}
    for path, (name, pattern, axes) in variable_layouts(source, model_size,
                                                        extra_rules).items():
        # Replicated is written (): one key then fits variables of any rank.
        axes = () if all(axis is None for axis in axes) else axes
        if by_pattern.setdefault(pattern, axes) != axes:
            raise ValueError(f"variables matching {pattern!r} ({name}) need different "
                             f"layouts ({by_pattern[pattern]} and {axes} for {path}); pass "
                             "an extra rule per variable")
    layouts = keras.distribution.LayoutMap(mesh)
    for pattern, axes in by_pattern.items():
        layouts[pattern] = axes
    return layouts


def parse_mesh(text, device_count):
    """``"data=2,model=4"`` -> ``(data, model)``; one axis may be left out (it takes the
    remaining devices); ``None`` or ``""`` is data parallelism over every device.

    Example:
        >>> parse_mesh("data=2,model=4", 8)
        (2, 4)
        >>> parse_mesh("model=2", 8)
        (4, 2)
        >>> parse_mesh(None, 8)
        (8, 1)
    """
    sizes = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in ("data", MODEL) or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"mesh {text!r}: expected 'data=D,model=M' with positive "
                             f"integers (either may be left out), got {part.strip()!r}")
        if name in sizes:
            raise ValueError(f"mesh {text!r} names the {name!r} axis twice")
        sizes[name] = int(value)
    for name, other in (("data", MODEL), (MODEL, "data")):
        if name not in sizes:
            known = sizes.get(other, 1)
            if device_count % known:
                raise ValueError(f"mesh {text!r}: {other}={known} does not divide the "
                                 f"{device_count} devices")
            sizes[name] = device_count // known
    if sizes["data"] * sizes[MODEL] != device_count:
        raise ValueError(f"mesh {text!r} has {sizes['data'] * sizes[MODEL]} devices, there "
                         f"are {device_count} (of all processes)")
    return sizes["data"], sizes[MODEL]


def bytes_per_device(shapes, model_size, bytes_per_value=4, extra_rules=None):
    """Bytes of ``shapes`` (``{variable path: shape}``) that one device holds when each
    variable is split as :data:`LAYOUT_RULES` say over a ``"model"`` axis of
    ``model_size`` (replicated over ``"data"``).

    Example:
        >>> bytes_per_device({"Embedding-Token/embeddings": (8, 2),
        ...                   "Embedding-Norm/gamma": (2,)}, 4)
        24
    """
    rules = [(pattern, axes) for pattern, axes in (extra_rules or {}).items()] + [
        (pattern, axes) for _, pattern, axes in LAYOUT_RULES]
    total = 0
    for path, shape in shapes.items():
        axes = next((axes for pattern, axes in rules if re.fullmatch(pattern, path)), False)
        if axes is False:
            raise ValueError(f"no layout rule matches {path}")
        axes = _divisible_axes(axes, shape, model_size)
        split = model_size if MODEL in axes else 1
        total += int(np.prod(shape, dtype=np.int64)) * bytes_per_value // split
    return total


__all__ = ["LAYOUT_RULES", "bytes_per_device", "layout_map", "parse_mesh",
           "variable_layouts"]
