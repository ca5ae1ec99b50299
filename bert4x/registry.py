"""The registry of model families: each family adds itself when its class is defined.

A family is a subclass of :class:`bert4x.transformer.Transformer` that sets
``family`` (its ``model=`` name); defining the class registers it here. The core
(``bert4x.transformer``, ``bert4x.checkpoints``, ...) never imports the families:
it asks this registry which family owns a config field, which Hugging Face
``model_type`` a family builds, and which families read one another's weights.
``bert4x.families`` imports the families bert4x ships, so importing it (or
``bert4x.models``) fills the registry.

Example:
    >>> from bert4x.models import MODELS, family_of
    >>> MODELS["albert"].__name__, family_of("albert")
    ('ALBERT', 'albert')
"""

from typing import NamedTuple

#: ``model=`` name -> family class, in the order the families were defined.
MODELS = {}


class ConfigField(NamedTuple):
    """How a family declares a config field it owns (``Transformer.config_fields``).

    Attributes:
        neutral: values that change nothing in BERT's architecture; the families
            that do not own the field accept these values only.
        meaning: what the field is, for the error naming its owners.
        same_as: another config field; the field is neutral too when equal to it
            (``embedding_size`` equal to ``hidden_size`` factorises nothing).

    Example:
        >>> field = ConfigField(neutral=(None, False), meaning="relative positions")
        >>> field.is_neutral(False, config=None)
        True
    """

    neutral: tuple = (None,)
    meaning: str = ""
    same_as: str = None

    def is_neutral(self, value, config):
        """Whether ``value`` (of the field, in ``config``) changes nothing."""
        if value in self.neutral:
            return True
        return self.same_as is not None and value == getattr(config, self.same_as)


def register(family):
    """Add a family class under its ``family`` name (the classes call this themselves).

    A class defined again (same module and name: a reloaded module, a notebook
    cell run twice) replaces its earlier self.

    Raises:
        ValueError: another class already holds that name.
        TypeError: the family declares a config field with other neutral values
            than a registered family that owns it too.
    """
    name = family.family
    known = MODELS.get(name)
    if known is not None and (known.__module__, known.__qualname__) != (
            family.__module__, family.__qualname__):
        raise ValueError(f"the family name {name!r} is taken by {_path(known)}; "
                         f"{_path(family)} needs another")
    for field, declared in family.config_fields.items():
        for owner in owners(field):
            other = MODELS[owner].config_fields[field]
            if owner != name and (other.neutral, other.same_as) != (declared.neutral,
                                                                     declared.same_as):
                raise TypeError(f"{_path(family)} declares config field {field!r} neutral "
                                f"at {declared.neutral} but {owner!r} at {other.neutral}: "
                                "the owners of a field must agree on its neutral values")
    MODELS[name] = family
    return family


def unregister(name):
    """Remove a family (a test or a notebook done with a family of its own)."""
    if name not in MODELS:
        raise KeyError(f"no family {name!r} is registered; registered: {sorted(MODELS)}")
    del MODELS[name]


def family_of(model_type):
    """The ``model=`` name for a Hugging Face ``model_type`` (itself if none builds it).

    Example:
        >>> from bert4x.models import family_of
        >>> family_of("roberta"), family_of("gpt9")
        ('roberta', 'gpt9')
    """
    for name, family in MODELS.items():
        if model_type in family.model_types[:1]:
            return name
    return model_type


def owners(field):
    """Names of the registered families that own config field ``field``."""
    return [name for name, family in MODELS.items() if field in family.config_fields]


def read_same_weights(first, second):
    """Whether families ``first`` and ``second`` read one another's weights unchanged
    (either declares the other in ``same_weights_as``)."""
    def declares(name, other):
        family = MODELS.get(name)
        return family is not None and other in family.same_weights_as
    return first == second or declares(first, second) or declares(second, first)


def families_without_position_table(prefix=None):
    """Names of the registered families that have no learned position table (of those
    whose official names start with ``prefix``, e.g. ``bert``, when given)."""
    return sorted(name for name, family in MODELS.items() if not family.absolute_positions
                  and prefix in (None, family.prefix))


def _path(family):
    return f"{family.__module__}.{family.__qualname__}"
