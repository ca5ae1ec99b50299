"""Suite-wide settings: the order in which test files reach the two test processes.

The default run uses pytest-xdist (``-n 2 --dist loadfile``, see ``pytest.ini``): each
file runs whole in one process, so its module fixtures (oracle subprocesses, models
built once) are built once. Files are handed out in collection order as processes
free up, so the longest files go first; otherwise one of them, collected late, would
run alone at the end while the other process sits idle.
"""

import os

# The longest files of the default run, longest first (about 2-4 minutes of one core
# each on the 2-core machine); the others follow in their usual order.
LONGEST_FIRST = (
    "test_bert4keras.py",  # its one oracle subprocess checks every family (about 2 minutes)
    "test_generation.py",
    "test_pretraining.py",
    "test_pretraining_jax.py",
    "test_models.py",
    "test_families.py",
    "test_examples.py",
    "test_faults.py",
    "test_docs.py",
    "test_t5.py",
    "test_gpt_families.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = os.path.basename(str(item.fspath))
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: tests keep their order within a file
