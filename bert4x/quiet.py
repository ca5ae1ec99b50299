"""Start TensorFlow without the notices its runtime prints on a machine without a GPU.

TensorFlow's C++ runtime reads its log level when it loads, and writes some start-up
notices ("failed call to cuInit ...", CPU-feature and oneDNN notes) before that level
applies; on a CPU-only machine they read like a crash. :func:`quiet_tensorflow`
imports TensorFlow with those lines filtered out. bert4x calls it in the worker
processes it spawns; scripts call it before anything imports TensorFlow.
"""

import os
import re
import sys
import tempfile

# Start-up notices of a CUDA-enabled TensorFlow wheel on a machine without a GPU,
# and of its CPU build; anything else written during the start is shown.
_START_UP_NOTICES = re.compile(
    r"absl::InitializeLog|cudart_stub|cuda_platform|cuInit|cuda_dnn|cuda_blas|cuda_fft|"
    r"cpu_feature_guard|oneDNN custom operations|rebuild TensorFlow with the appropriate|"
    r"AVX2 FMA|Unable to register cu|computation placer already registered")


def quiet_tensorflow():
    """Start TensorFlow (if installed) without its CUDA and CPU-feature notices.

    Sets ``TF_CPP_MIN_LOG_LEVEL=2`` (unless the user set it) before TensorFlow is
    imported, then imports it and initialises its devices with the process's
    standard error captured: the runtime writes some notices before its log level
    applies. Captured lines that are not such notices are written back, so a real
    error still shows.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf
            tf.config.list_physical_devices()
        except ImportError:
            pass  # another Keras backend without TensorFlow installed
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        for line in captured.read().decode("utf-8", "replace").splitlines():
            if line.strip() and not _START_UP_NOTICES.search(line):
                print(line, file=sys.stderr)
