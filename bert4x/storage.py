"""Files on local disk, Google Cloud Storage and the other TensorFlow file systems.

Every file bert4x reads or writes goes through these functions, so a path may be
local (``/data/run``), ``gs://bucket/run`` (TPU workers read from Cloud Storage),
``ram://run`` (TensorFlow's built-in in-memory file system, which stands in for
``gs://`` in tests) or any other scheme ``tf.io.gfile`` knows (``s3://``,
``hdfs://``). Local paths use Python's ``os``/``shutil`` and never import
TensorFlow; paths with a scheme use ``tf.io.gfile``, imported on first use. Its
errors are raised as the built-in ``FileNotFoundError``, ``FileExistsError`` and
``PermissionError``, as for local paths.

What :func:`atomic_open` / :func:`atomic_write` guarantee:

* local disk, ``ram://``, HDFS (file systems with a rename): the content goes to
  a temporary file beside the target (``<name>.tmp-<random>``), which is renamed
  over the target once complete. Readers see the old file or the new one, never
  a partial one; a crash leaves at most the temporary file.
* object stores (``gs://``, ``s3://``) have no rename (TensorFlow emulates it as
  copy then delete). There the content is staged in a local temporary file and
  uploaded in one write: the store publishes an object only when its upload
  completes, so readers again see the old object or the new one. What no object
  store offers is an atomic change of *several* objects; writers of multi-file
  results (checkpoints) write each file under a new name first and publish them
  by rewriting one small pointer file last.

Example:
    >>> from bert4x import storage
    >>> storage.atomic_write("ram://demo/notes.txt", "hello")  # doctest: +SKIP
    >>> storage.read_text("ram://demo/notes.txt")  # doctest: +SKIP
    'hello'
"""

import builtins
import contextlib
import glob as _glob
import io
import os
import posixpath
import shutil
import tempfile
import threading
import uuid

# Schemes whose objects cannot be renamed atomically, but are published atomically
# when their single upload completes.
OBJECT_STORES = ("gs", "s3")


def scheme(path):
    """The URL scheme of ``path`` (``"gs"``, ``"ram"``), or ``""`` for a local path."""
    head, separator, _ = os.fspath(path).partition("://")
    return head if separator and "/" not in head else ""


def is_local(path):
    """True for a path of the local file system (no ``scheme://``)."""
    return not scheme(path)


def join(path, *parts):
    """Join path components; remote paths always use ``/``."""
    path = os.fspath(path)
    return os.path.join(path, *parts) if is_local(path) else posixpath.join(path, *parts)


def dirname(path):
    """The folder part of ``path``."""
    path = os.fspath(path)
    return os.path.dirname(path) if is_local(path) else posixpath.dirname(path)


def _gfile(function, path, *args, **kwargs):
    """Call ``tf.io.gfile.<function>``, raising TensorFlow's errors as built-in ones."""
    import tensorflow as tf
    translations = ((tf.errors.NotFoundError, FileNotFoundError),
                    (tf.errors.AlreadyExistsError, FileExistsError),
                    (tf.errors.PermissionDeniedError, PermissionError))
    try:
        return getattr(tf.io.gfile, function)(path, *args, **kwargs)
    except tuple(error for error, _ in translations) as error:
        builtin = next(b for tf_error, b in translations if isinstance(error, tf_error))
        raise builtin(f"{path}: {error.message}") from error


def exists(path):
    """True when a file or folder is at ``path``."""
    path = os.fspath(path)
    if is_local(path):
        return os.path.exists(path)
    return _gfile("exists", path) and _listed(path)


def isdir(path):
    """True when ``path`` is a folder."""
    path = os.fspath(path)
    if is_local(path):
        return os.path.isdir(path)
    return _gfile("isdir", path) and _listed(path)


def _listed(path):
    """False for a ``ram://`` path its folder does not list.

    TensorFlow's RAM file system answers ``exists``/``isdir`` for any string prefix
    of a stored name (``ram://run/model.ckpt`` "is a folder" beside
    ``model.ckpt.index``); only the listing of the parent folder is exact.
    """
    if scheme(path) != "ram":
        return True
    parent, name = posixpath.split(path.rstrip("/"))
    try:
        return name in listdir(parent)
    except FileNotFoundError:  # a top-level name, or a folder made implicitly
        return True


def isfile(path):
    """True when ``path`` exists and is not a folder."""
    path = os.fspath(path)
    if is_local(path):
        return os.path.isfile(path)
    return exists(path) and not isdir(path)


def getsize(path):
    """The size of the file at ``path`` in bytes."""
    path = os.fspath(path)
    if is_local(path):
        return os.path.getsize(path)
    return _gfile("stat", path).length


def getmtime(path):
    """When the file at ``path`` last changed, in seconds since the epoch."""
    path = os.fspath(path)
    if is_local(path):
        return os.path.getmtime(path)
    return _gfile("stat", path).mtime_nsec / 1e9


def check_readable(path, what="file"):
    """Raise an error that says why ``path`` cannot be read as a file, if it cannot.

    Args:
        path: the file.
        what: what the file is, for the message (``"vocabulary file"``).

    Raises:
        FileNotFoundError: nothing is at ``path``.
        IsADirectoryError: ``path`` is a folder.
        PermissionError: the file is there but this process may not read it.

    Example:
        >>> check_readable("vocab.txt", "vocabulary file")  # doctest: +SKIP
    """
    path = os.fspath(path)
    if not exists(path):
        raise FileNotFoundError(f"{what} not found: {path!r}")
    if isdir(path):
        raise IsADirectoryError(f"{what} {path!r} is a folder, not a file")
    try:
        open(path, "rb").close()
    except PermissionError as error:
        raise PermissionError(f"{what} {path!r} exists but cannot be read: permission "
                              f"denied ({error})") from error


def listdir(path):
    """The sorted names in folder ``path`` (without a trailing ``/`` for folders)."""
    path = os.fspath(path)
    names = os.listdir(path) if is_local(path) else _gfile("listdir", path)
    return sorted(name.rstrip("/") for name in names)


def glob(pattern):
    """The sorted paths matching ``pattern`` (``*``, ``?``, ``[...]``)."""
    pattern = os.fspath(pattern)
    return sorted(_glob.glob(pattern) if is_local(pattern) else _gfile("glob", pattern))


def makedirs(path):
    """Create folder ``path`` and its parents; an existing folder is fine."""
    path = os.fspath(path)
    if is_local(path):
        os.makedirs(path, exist_ok=True)
    else:
        _gfile("makedirs", path)


def remove(path):
    """Delete the file at ``path``."""
    path = os.fspath(path)
    if is_local(path):
        os.remove(path)
    else:
        _gfile("remove", path)


def rmtree(path):
    """Delete folder ``path`` with everything in it."""
    path = os.fspath(path)
    if is_local(path):
        shutil.rmtree(path)
    else:
        _gfile("rmtree", path)


def rename(source, destination, overwrite=False):
    """Rename a file (atomic where the file system has a rename; see the module doc).

    Raises:
        FileExistsError: ``destination`` exists and ``overwrite`` is false.
    """
    _transfer("rename", os.replace, source, destination, overwrite)


def copy(source, destination, overwrite=False):
    """Copy a file, also between file systems (e.g. local to ``gs://``)."""
    _transfer("copy", shutil.copyfile, source, destination, overwrite)


def _transfer(gfile_function, local_function, source, destination, overwrite):
    source, destination = os.fspath(source), os.fspath(destination)
    if is_local(source) and is_local(destination):
        if not overwrite and os.path.exists(destination):
            raise FileExistsError(f"{destination} already exists")
        local_function(source, destination)
    else:
        _gfile(gfile_function, source, destination, overwrite=overwrite)


def open(path, mode="r", encoding="utf-8", errors=None):  # noqa: A001 - mirrors builtins.open
    """Open a file; ``mode`` is one of ``r rb w wb a ab``.

    Remote files in text mode are decoded with ``encoding`` (and ``errors``, as
    the built-in ``open`` takes them) when read; written remotely, text must be
    UTF-8.

    Raises:
        FileNotFoundError: reading a file that does not exist.
    """
    path = os.fspath(path)
    if mode not in ("r", "rb", "w", "wb", "a", "ab"):
        raise ValueError(f"mode must be one of r rb w wb a ab, got {mode!r}")
    binary = "b" in mode
    if is_local(path):
        return builtins.open(path, mode, encoding=None if binary else encoding,
                             errors=None if binary else errors)
    if mode.startswith("r"):
        if not exists(path):  # GFile opens lazily and would fail only at the first read
            raise FileNotFoundError(f"file not found: {path}")
        if not binary:  # universal newlines and any encoding, as a local open gives
            return io.TextIOWrapper(io.BytesIO(read_bytes(path)), encoding=encoding,
                                    errors=errors)
    elif not binary and (encoding or "utf-8").replace("-", "").lower() != "utf8":
        raise ValueError(f"{path}: remote text files are written as UTF-8, not {encoding}")
    return _gfile("GFile", path, mode)


def read_bytes(path):
    """The content of a file as bytes."""
    with open(path, "rb") as file:
        return file.read()


def read_text(path, encoding="utf-8"):
    """The content of a text file as ``str``."""
    with open(path, "r", encoding=encoding) as file:
        return file.read()


@contextlib.contextmanager
def atomic_open(path, mode="w", encoding="utf-8"):
    """Write a file so that readers see the old content or the new, never a part.

    The target is replaced only when the ``with`` block ends without an error;
    after an error it is left as it was. See the module doc for what "atomic"
    means on each kind of file system.

    Args:
        path: the file to write.
        mode: ``"w"`` (text) or ``"wb"`` (bytes).
        encoding: of text mode.

    Example:
        >>> with atomic_open("ram://run/summary.json") as file:  # doctest: +SKIP
        ...     file.write("{}")
    """
    path = os.fspath(path)
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be w or wb, got {mode!r}")
    upload = scheme(path) in OBJECT_STORES
    if upload:
        handle, temporary = tempfile.mkstemp(prefix="bert4x-upload-")
        os.close(handle)
    else:
        temporary = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        with open(temporary, mode, encoding=encoding) as file:
            yield file
            if is_local(temporary):  # on disk before the rename makes it visible
                file.flush()
                os.fsync(file.fileno())
        if upload:
            copy(temporary, path, overwrite=True)
        else:
            rename(temporary, path, overwrite=True)
    finally:
        with contextlib.suppress(OSError):
            if exists(temporary):
                remove(temporary)


def atomic_write(path, data, encoding="utf-8"):
    """Write ``data`` (``str`` or ``bytes``) to ``path`` with :func:`atomic_open`."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w", encoding) as file:
        file.write(data)


def prefix_files(prefix):
    """The paths of the files named ``<prefix>.*`` (a TF checkpoint's), sorted.

    Listed, not globbed: a folder named with ``[`` ``]`` ``*`` or ``?`` is no pattern.
    """
    prefix = os.fspath(prefix)
    folder = dirname(prefix)
    base = prefix[len(folder):].lstrip("/" + os.sep)
    if not isdir(folder or os.curdir):
        return []
    return [join(folder, name) for name in listdir(folder or os.curdir)
            if name.startswith(base + ".")]


def tensorflow_prefix(prefix):
    """A prefix TensorFlow's checkpoint readers can open for the checkpoint at ``prefix``.

    TensorFlow globs the prefix it reads, so a checkpoint under a folder named with
    ``*``, ``?`` or ``[`` is never found. Such a local prefix is given as links to
    its files from a new temporary folder (the caller removes it with
    ``shutil.rmtree(os.path.dirname(result))`` when the result differs); any other
    prefix is returned as it is.
    """
    prefix = os.fspath(prefix)
    if not is_local(prefix) or not any(char in prefix for char in "*?["):
        return prefix
    links = tempfile.mkdtemp(prefix="bert4x-checkpoint-")
    for path in prefix_files(prefix):
        os.symlink(os.path.abspath(path), os.path.join(links, os.path.basename(path)))
    return os.path.join(links, os.path.basename(prefix))


def can_lock(path):
    """True when :func:`file_lock` works for ``path``: a local path on a system with
    ``fcntl`` (Linux, macOS). Object stores (``gs://``) offer no lock."""
    try:
        import fcntl  # noqa: F401
    except ImportError:
        return False
    return is_local(path)


# Locks this process holds: real path -> [holding thread's id, depth]. A thread that
# takes a lock it already holds must not wait: flock on a second descriptor of the
# same file would wait for the first one, that is for itself, forever.
_HELD_LOCKS = {}
_HELD_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def file_lock(path, on_wait=None):
    """Hold an exclusive lock on the local file ``path`` (created if missing).

    Other processes, and other threads, taking the same lock wait until it is
    released. The thread that holds it may take it again (a nested call returns at
    once; the lock is released when the outermost one ends). The operating system
    releases it when the holder dies, so a killed process never leaves it stuck;
    the empty lock file stays (it is harmless).

    Args:
        path: the lock file; see :func:`can_lock` for where locks exist.
        on_wait: called once, without arguments, if the lock is held elsewhere
            (say, to log that this process waits).

    Raises:
        NotImplementedError: ``path`` is remote, or the system has no ``fcntl``.

    Example:
        >>> with file_lock("/tmp/run.lock"):  # doctest: +SKIP
        ...     with file_lock("/tmp/run.lock"):  # the same thread: no wait
        ...         pass
    """
    path = os.fspath(path)
    if not can_lock(path):
        raise NotImplementedError(f"no file lock for {path}: locks exist for local "
                                  "paths on systems with fcntl only")
    import fcntl
    if os.path.dirname(path):
        makedirs(os.path.dirname(path))
    key = os.path.realpath(path)
    with _HELD_LOCKS_GUARD:
        held = _HELD_LOCKS.get(key)
        nested = held is not None and held[0] == threading.get_ident()
        if nested:
            held[1] += 1
    if nested:
        try:
            yield
        finally:
            with _HELD_LOCKS_GUARD:
                held[1] -= 1
        return
    with builtins.open(path, "a") as file:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        with _HELD_LOCKS_GUARD:
            _HELD_LOCKS[key] = [threading.get_ident(), 1]
        try:
            yield
        finally:
            with _HELD_LOCKS_GUARD:
                del _HELD_LOCKS[key]
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)

