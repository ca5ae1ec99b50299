"""Publish a checkpoint into a folder that may hold the user's files and an older save.

:func:`bert4x.checkpoints.save_checkpoint` writes a complete checkpoint into a
staging folder inside the destination and calls :func:`publish`, which moves it in
file by file. The ``checkpoint`` pointer file, which ``tf.train.latest_checkpoint``
and bert4x's loaders follow, is the one switch: it is replaced last, in one atomic
rename (one atomic object write on ``gs://``), and it names the weights to load.

What is guaranteed:

* Nothing save_checkpoint did not write is deleted or replaced. The pointer lists,
  as comments, the files save_checkpoint wrote (``# bert4x-owned: <name>``); only
  those are ever removed or overwritten. A ``bert_config.json`` or ``vocab.txt`` of
  someone else is left alone when it equals what would be written and is an error
  when it differs; a ``checkpoint`` file of someone else is an error.
* New weights never overwrite the ones the pointer names: they get a free prefix
  (``bert_model.ckpt`` when no ``bert_model.ckpt.*`` is in the folder, else
  ``bert_model.ckpt-<n>``), so until the pointer moves, the folder loads the old
  checkpoint, and afterwards the new one. The folder itself is never removed.
* A save killed at any moment leaves the pointer on the old or the new weights,
  both complete. ``bert_config.json`` and ``vocab.txt`` are each replaced
  atomically just before the pointer; a save that *changes* the model's shape
  and is killed in that instant leaves the new config beside the old weights (the
  next save repairs it). Re-saving a model of the same shape has no such window.
* The new checkpoint is staged inside the destination, in a hidden folder
  ``.bert4x-staging-<random>`` whose first file is a marker (``bert4x-staging``,
  a fixed text): the parent folder need not be writable (a mounted volume), and a
  save that fails removes its staging folder and what it moved in. The staging
  folder holds a journal of the names it moved into the folder. The next save
  removes stale staging folders (only ones with the marker: nothing else is
  proven to be bert4x's), the files their journal claims that no pointer refers
  to, and weights the pointer still lists but no longer uses, so a killed save
  leaves no litter behind for good. Folders beside the destination are never
  touched.
* One save into a folder at a time (a second concurrent save may remove the
  first one's staging folder).
"""

import os
import re
import uuid

from bert4x import storage

POINTER = "checkpoint"
WEIGHTS_BASE = "bert_model.ckpt"
_OWNED = "# bert4x-owned: "
_JOURNAL = "bert4x-claims.txt"
_STAGING_PREFIX = ".bert4x-staging-"
_STAGING_NAME = re.compile(r"^\.bert4x-staging-[0-9a-f]{12}$")
_MARKER = "bert4x-staging"
_MARKER_TEXT = ("A staging folder of bert4x's save_checkpoint: the next save into the "
                "folder above removes it.\n")
# What save_checkpoint wrote before it recorded ownership: these names were its own.
_LEGACY_POINTER = (f'model_checkpoint_path: "{WEIGHTS_BASE}"\n'
                   f'all_model_checkpoint_paths: "{WEIGHTS_BASE}"\n')
_LEGACY_OWNED = ("bert_config.json", f"{WEIGHTS_BASE}.index",
                 f"{WEIGHTS_BASE}.data-00000-of-00001")


def read_pointer(directory):
    """``(prefix, owned_names)`` of the bert4x pointer in ``directory``.

    ``(None, set())`` when there is no pointer.

    Raises:
        FileExistsError: the pointer was not written by bert4x.
    """
    path = storage.join(directory, POINTER)
    if storage.exists(path) and not storage.isfile(path):
        raise FileExistsError(f"{path} is a folder, not save_checkpoint's pointer file; "
                              "save into another folder")
    if not storage.isfile(path):
        return None, set()
    text = storage.read_text(path)
    if text == _LEGACY_POINTER:
        return WEIGHTS_BASE, set(_LEGACY_OWNED)
    owned = {line[len(_OWNED):] for line in text.splitlines() if line.startswith(_OWNED)}
    if not owned:
        raise FileExistsError(
            f"{path} was not written by bert4x's save_checkpoint (it lists no "
            "bert4x-owned files); save into another folder so that the checkpoint it "
            "points to stays as it is")
    prefixes = [line.split('"')[1] for line in text.splitlines()
                if line.startswith("model_checkpoint_path:")]
    return (prefixes[0] if prefixes else None), owned


def _is_weights(name, prefix):
    return prefix is not None and name.startswith(prefix + ".")


def _is_any_weights(name):
    return name.startswith((WEIGHTS_BASE + ".", WEIGHTS_BASE + "-"))


def check_claims(directory, contents):
    """Names of ``contents`` (``{name: text}``) to write: all but identical foreign files.

    Raises:
        FileExistsError: a file of that name, not written by bert4x, differs.
    """
    _, owned = read_pointer(directory)
    to_write, conflicts = [], []
    for name, text in contents.items():
        path = storage.join(directory, name)
        if name in owned or not storage.exists(path):
            to_write.append(name)
        elif not storage.isfile(path) or storage.read_bytes(path) != text.encode("utf-8"):
            conflicts.append(name)
    if conflicts:
        raise FileExistsError(
            f"{directory} holds {conflicts}, not written by save_checkpoint and different "
            "from what it would write; save_checkpoint never replaces files it did not "
            "write: save into another folder")
    return to_write


def clean(directory):
    """Remove what killed saves left: stale staging folders, unreferenced own files."""
    prefix, owned = read_pointer(directory)
    claimed = set()
    for staging in _stale_stagings(directory):
        journal = storage.join(staging, _JOURNAL)
        if storage.exists(journal):
            claimed.update(storage.read_text(journal).split("\n"))
        storage.rmtree(staging)
    retired = {name for name in owned if _is_any_weights(name) and not _is_weights(name, prefix)}
    for name in sorted((claimed - owned) | retired):
        if name and storage.isfile(storage.join(directory, name)):
            storage.remove(storage.join(directory, name))


def _stale_stagings(directory):
    """The staging folders of earlier saves inside ``directory``: those with the marker."""
    if not storage.isdir(directory):
        return []
    found = []
    for name in storage.listdir(directory):
        folder = storage.join(directory, name)
        # An empty one is of a save killed before its marker: removing it loses nothing.
        if _STAGING_NAME.match(name) and storage.isdir(folder) and (
                _is_marked(folder) or not storage.listdir(folder)):
            found.append(folder)
    return found


def _is_marked(folder):
    marker = storage.join(folder, _MARKER)
    try:
        return storage.isfile(marker) and storage.read_text(marker) == _MARKER_TEXT
    except (OSError, UnicodeDecodeError):
        return False


def destination(directory):
    """``directory`` as save_checkpoint uses it: absolute, without a trailing slash."""
    directory = os.fspath(directory)
    if storage.is_local(directory):
        return os.path.abspath(directory)
    return directory.rstrip("/")


def new_staging(directory):
    """A new staging folder inside ``directory``, holding only its marker.

    The marker is written first (directly: a temporary file beside it would be
    litter of its own), so a staging folder a later save finds carries it, and is
    bert4x's to remove, or is empty.
    """
    staging = storage.join(directory, f"{_STAGING_PREFIX}{uuid.uuid4().hex[:12]}")
    storage.makedirs(staging)
    with storage.open(storage.join(staging, _MARKER), "w") as marker:
        marker.write(_MARKER_TEXT)
    return staging


def publish(staging, directory, names):
    """Move the checkpoint in ``staging`` into ``directory``, the pointer last.

    Args:
        staging: holds ``bert_model.ckpt.*`` and ``names``.
        directory: the destination (created if missing).
        names: the other files of ``staging`` to move in (config, vocabulary).

    Returns:
        The published checkpoint prefix.
    """
    old_prefix, owned = read_pointer(directory)
    present = storage.listdir(directory)
    prefix = _free_prefix(present)
    # The .index moves last: a loader that finds it finds the data files too.
    weights = {name: prefix + name[len(WEIGHTS_BASE):]
               for name in sorted(storage.listdir(staging), key=lambda n: n.endswith(".index"))
               if name.startswith(WEIGHTS_BASE + ".")}
    moves = [*weights.items(), *((name, name) for name in names)]
    # The journal tells a later save which names this one may have created.
    storage.atomic_write(storage.join(staging, _JOURNAL),
                         "\n".join(target for _, target in moves))
    for source, target in moves:
        storage.rename(storage.join(staging, source), storage.join(directory, target),
                       overwrite=True)
    # The old weights stay listed until a later save has seen them removed.
    retired = {name for name in owned if _is_weights(name, old_prefix)}
    kept = {name for name in owned if not _is_any_weights(name)}
    new_owned = kept | retired | {target for _, target in moves}
    pointer = storage.join(staging, POINTER)
    storage.atomic_write(pointer, _pointer_text(prefix, new_owned))
    storage.rename(pointer, storage.join(directory, POINTER), overwrite=True)
    for name in sorted(retired - set(weights.values())):
        if storage.exists(storage.join(directory, name)):
            storage.remove(storage.join(directory, name))
    storage.rmtree(staging)
    return storage.join(directory, prefix)


def _free_prefix(present):
    """``bert_model.ckpt`` unless taken, else the first free ``bert_model.ckpt-<n>``."""
    def taken(prefix):
        return any(name.startswith(prefix + ".") for name in present)
    if not taken(WEIGHTS_BASE):
        return WEIGHTS_BASE
    number = 1
    while taken(f"{WEIGHTS_BASE}-{number}"):
        number += 1
    return f"{WEIGHTS_BASE}-{number}"


def _pointer_text(prefix, owned):
    lines = ["# Written by bert4x save_checkpoint: the files of this folder it wrote."]
    lines += [_OWNED + name for name in sorted(owned)]
    lines += [f'model_checkpoint_path: "{prefix}"', f'all_model_checkpoint_paths: "{prefix}"']
    return "\n".join(lines) + "\n"
