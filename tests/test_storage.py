"""bert4x.storage on a local folder and on TensorFlow's in-memory ``ram://`` file system."""

import os
import subprocess
import sys
import uuid

import pytest

from bert4x import storage


@pytest.fixture(params=["local", "ram"])
def root(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path)
        return
    path = f"ram://storage-test-{uuid.uuid4().hex}"
    storage.makedirs(path)
    yield path
    storage.rmtree(path)


def test_scheme_and_join():
    assert storage.scheme("gs://bucket/run") == "gs"
    assert storage.scheme("/data/gs://odd") == ""
    assert storage.is_local("relative/path") and not storage.is_local("ram://x")
    assert storage.join("gs://bucket", "run", "a.txt") == "gs://bucket/run/a.txt"


def test_files_and_folders(root):
    folder = storage.join(root, "a", "b")
    storage.makedirs(folder)
    storage.makedirs(folder)  # existing is fine
    assert storage.isdir(folder) and not storage.isfile(folder)
    with storage.open(storage.join(folder, "x.txt"), "w") as file:
        file.write("héllo\n")
    with storage.open(storage.join(folder, "y.bin"), "wb") as file:
        file.write(b"\x00\xff")
    assert storage.read_text(storage.join(folder, "x.txt")) == "héllo\n"
    assert storage.read_bytes(storage.join(folder, "y.bin")) == b"\x00\xff"
    assert storage.isfile(storage.join(folder, "x.txt"))
    assert storage.listdir(storage.join(root, "a")) == ["b"]
    assert storage.listdir(folder) == ["x.txt", "y.bin"]
    assert storage.glob(storage.join(folder, "*.txt")) == [storage.join(folder, "x.txt")]

    storage.copy(storage.join(folder, "x.txt"), storage.join(folder, "z.txt"))
    with pytest.raises(FileExistsError):
        storage.rename(storage.join(folder, "z.txt"), storage.join(folder, "x.txt"))
    storage.rename(storage.join(folder, "y.bin"), storage.join(folder, "x.txt"),
                   overwrite=True)
    assert storage.read_bytes(storage.join(folder, "x.txt")) == b"\x00\xff"
    storage.remove(storage.join(folder, "z.txt"))
    assert storage.listdir(folder) == ["x.txt"]
    storage.rmtree(storage.join(root, "a"))
    assert not storage.exists(storage.join(root, "a"))
    assert not storage.exists(storage.join(folder, "x.txt"))


def test_missing_files_raise_builtin_errors(root):
    missing = storage.join(root, "missing.txt")
    assert not storage.exists(missing)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        storage.read_text(missing)
    with pytest.raises(FileNotFoundError):
        storage.remove(missing)
    with pytest.raises(FileNotFoundError):
        storage.listdir(storage.join(root, "no-folder"))


def test_text_reads_decode_like_a_local_open(root):
    path = storage.join(root, "gbk.txt")
    with storage.open(path, "wb") as file:
        file.write("中文\r\n第二行\n".encode("gbk"))
    with storage.open(path, encoding="gbk") as file:
        assert file.read().splitlines() == ["中文", "第二行"]
    with pytest.raises(UnicodeDecodeError):
        storage.read_text(path)


def test_atomic_write_replaces_and_leaves_nothing_else(root):
    path = storage.join(root, "state.json")
    storage.atomic_write(path, "old")
    storage.atomic_write(path, b"new")
    assert storage.read_text(path) == "new"
    assert storage.listdir(root) == ["state.json"]


def test_atomic_open_keeps_the_old_content_when_the_writer_fails(root):
    path = storage.join(root, "state.json")
    storage.atomic_write(path, "old")
    with pytest.raises(RuntimeError, match="crash"):
        with storage.atomic_open(path) as file:
            file.write("half of the new")
            assert storage.read_text(path) == "old"  # nothing visible before the end
            raise RuntimeError("crash")
    assert storage.read_text(path) == "old"
    assert storage.listdir(root) == ["state.json"]


def test_object_store_writes_upload_a_complete_local_file(monkeypatch):
    # Treat ram:// as an object store: the upload branch must stage the content
    # locally, copy it in one write and leave no temporary behind.
    monkeypatch.setattr(storage, "OBJECT_STORES", ("ram",))
    root = f"ram://storage-upload-{uuid.uuid4().hex}"
    storage.makedirs(root)
    uploads = []
    original_copy = storage.copy
    monkeypatch.setattr(storage, "copy",
                        lambda *args, **kwargs: uploads.append(args) or original_copy(*args, **kwargs))
    path = storage.join(root, "state.json")
    storage.atomic_write(path, "uploaded")
    assert storage.read_text(path) == "uploaded"
    assert storage.listdir(root) == ["state.json"]
    assert len(uploads) == 1 and storage.is_local(uploads[0][0])
    assert not os.path.exists(uploads[0][0])


def test_atomic_local_files_get_the_usual_permissions(tmp_path):
    plain, atomic = tmp_path / "plain", tmp_path / "atomic"
    plain.write_text("x")
    storage.atomic_write(atomic, "x")
    assert oct(atomic.stat().st_mode) == oct(plain.stat().st_mode)


def test_import_does_not_load_tensorflow(tmp_path):
    code = ("import sys, bert4x.storage as s; s.atomic_write(sys.argv[1], 'x'); "
            "s.listdir(sys.argv[2]); print('tensorflow' in sys.modules)")
    output = subprocess.run([sys.executable, "-c", code, str(tmp_path / "f"), str(tmp_path)],
                            capture_output=True, text=True, check=True).stdout
    assert output.strip() == "False"


def test_file_lock_makes_a_second_holder_wait(tmp_path):
    import threading
    import time
    lock, order, waited = tmp_path / "sub" / "run.lock", [], []

    def hold(name, seconds):
        with storage.file_lock(lock, on_wait=lambda: waited.append(name)):
            order.append(f"{name} in")
            time.sleep(seconds)
            order.append(f"{name} out")

    first = threading.Thread(target=hold, args=("first", 0.5))
    first.start()
    while not order:
        time.sleep(0.01)
    hold("second", 0)
    first.join()
    assert order == ["first in", "first out", "second in", "second out"]
    assert waited == ["second"]


def test_file_lock_taken_again_by_its_holder_does_not_wait(tmp_path):
    import threading
    lock, events, waited = tmp_path / "run.lock", [], []

    def take_in_other_thread():
        with storage.file_lock(lock):
            events.append("other thread got it")

    def nested():
        with storage.file_lock(lock):
            with storage.file_lock(str(lock), on_wait=lambda: waited.append("nested")):
                events.append("inner")
            events.append("outer still held")
            other = threading.Thread(target=take_in_other_thread, daemon=True)
            other.start()
            other.join(0.3)  # another thread still waits for the holder
            events.append("other waits" if other.is_alive() else "other did not wait")
        other.join(5)

    holder = threading.Thread(target=nested, daemon=True)
    holder.start()
    holder.join(10)  # a self-deadlock would leave it running
    assert not holder.is_alive() and waited == []
    assert events == ["inner", "outer still held", "other waits", "other thread got it"]


def test_file_lock_is_refused_on_object_stores():
    assert not storage.can_lock("gs://bucket/run.lock")
    with pytest.raises(NotImplementedError, match="gs://bucket/run.lock"):
        with storage.file_lock("gs://bucket/run.lock"):
            pass
