"""A data-preparation worker process, started by ``make_pretraining_data``.

Run as ``python -m bert4x.pretraining.data_worker``: it reads pickled jobs from its
standard input and answers each with a pickled ``(True, marker)`` or ``(False,
exception)`` on its standard output, until its input closes.

Why not ``multiprocessing``: its ``spawn`` and ``forkserver`` workers run the
caller's main script again (to find the functions defined there), so a script
without an ``if __name__ == "__main__":`` guard called ``ensure_pretrained`` again in
every worker, which then waited for the lock its parent held while the parent
waited for it. ``fork`` is unsafe once TensorFlow runs threads. This worker imports
bert4x only and never the caller's script.
"""

import os
import pickle
import sys
import traceback


def serve(jobs, replies):
    """Answer each pickled job of the binary stream ``jobs`` on ``replies``, an
    unbuffered binary file (a buffered reply would fail again at exit once the
    parent is gone)."""
    from bert4x.pretraining.data import process_file
    while True:
        try:
            job = pickle.load(jobs)
        except EOFError:
            return
        try:
            reply = (True, process_file(job))
        except Exception as error:  # sent back and raised in the parent
            reply = (False, error)
            try:
                pickle.dumps(error)
            except Exception:
                reply = (False, RuntimeError(traceback.format_exc()))
        data = memoryview(pickle.dumps(reply))
        try:
            while data:  # an unbuffered write may take only part of it
                data = data[replies.write(data):]
        except BrokenPipeError:  # the parent is gone (killed): nobody waits for the reply
            return


def main():
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # what libraries print goes to standard error, not into the replies
    from bert4x.quiet import quiet_tensorflow
    quiet_tensorflow()  # TFRecord writing starts TensorFlow, once per worker: no notices
    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
