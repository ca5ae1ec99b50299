"""bert4keras 0.11.5 as a test oracle, run in one subprocess per test module.

The subprocess uses tf-keras (``TF_KERAS=1 TF_USE_LEGACY_KERAS=1``) and
``tests/oracle/sitecustomize.py``, which restores three Keras 2.3 behaviours
bert4keras relies on, in that process only. Start the batch early with
:func:`start` (module fixture) and read results with :meth:`Oracle.result`.
"""

import os
import pickle
import subprocess
import sys
import tempfile

def import_oracle(module_name):
    """Import a reference package (``torch``, ``transformers``), or skip the module
    without it; under ``CI=true`` a missing reference is a failure, so that a CI
    without the test extra cannot pass by skipping the parity tests."""
    import importlib

    import pytest
    if os.environ.get("CI", "").lower() == "true":
        return importlib.import_module(module_name)
    return pytest.importorskip(module_name)


ORACLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "oracle")


class Oracle:
    """A running oracle batch: ``{name: (worker function, kwargs)}`` jobs."""

    def __init__(self, jobs, timeout=600):
        self.folder = tempfile.TemporaryDirectory(prefix="bert4keras_oracle_")
        self.jobs_path = os.path.join(self.folder.name, "jobs.pkl")
        self.results_path = os.path.join(self.folder.name, "results.pkl")
        with open(self.jobs_path, "wb") as file:
            pickle.dump(jobs, file)
        env = dict(os.environ, TF_KERAS="1", TF_USE_LEGACY_KERAS="1", BERT4X_ORACLE="1",
                   TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ORACLE_DIR,
                   CUDA_VISIBLE_DEVICES="")
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(ORACLE_DIR, "worker.py"), self.jobs_path,
             self.results_path], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        self.timeout = timeout
        self._results = None

    def result(self, name):
        """The result of job ``name`` (waits for the batch); raises if it failed."""
        if self._results is None:
            output, _ = self.process.communicate(timeout=self.timeout)
            if self.process.returncode != 0 or not os.path.exists(self.results_path):
                raise RuntimeError(f"the bert4keras oracle failed (is `pip install "
                                   f"tf-keras==2.21.0` and `pip install --no-deps "
                                   f"bert4keras==0.11.5` done?):\n{output[-4000:]}")
            with open(self.results_path, "rb") as file:
                self._results = pickle.load(file)
        value = self._results[name]
        if isinstance(value, tuple) and len(value) == 2 and value[0] == "error":
            raise RuntimeError(f"oracle job {name!r} failed:\n{value[1]}")
        return value

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.folder.cleanup()
