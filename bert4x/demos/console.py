"""What the demos print: a quiet TensorFlow start, one progress bar per phase, a table.

Import this module before anything that imports TensorFlow and call
:func:`quiet_tensorflow` first thing: TensorFlow's C++ runtime reads its log level
when it loads, and a CPU-only machine would otherwise greet the user with
CUDA notices ("failed call to cuInit ...") that read like a crash.
"""

import sys

from bert4x.quiet import quiet_tensorflow  # noqa: F401  (re-exported for the demos)


def phase_bar(total, description, unit="step", disable=False):
    """A ``tqdm`` bar for one phase of a demo: count, rate and estimated time left.

    ``disable=True`` gives a bar that shows nothing (same calls, no output).

    Example:
        >>> with phase_bar(100, "decoding", unit="question") as bar:  # doctest: +SKIP
        ...     bar.update(16)
    """
    from tqdm import tqdm
    return tqdm(total=total, desc=description, unit=unit, dynamic_ncols=True,
                mininterval=1.0 if sys.stderr.isatty() else 30.0, disable=disable)


def training_progress(total_steps, description="training"):
    """A Keras callback showing all epochs of a ``fit`` as one bar with the loss.

    Use with ``fit(..., verbose=0)``; the bar's estimate covers the whole phase,
    not one epoch. It counts the optimizer's updates, so it stays right when
    ``compile(steps_per_execution=N)`` reports batches only every ``N`` updates
    (and fewer at the end of an epoch).
    """
    import keras

    class TrainingProgress(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.bar = phase_bar(total_steps, description)
            self.epoch_losses = []
            self.first_update = self._updates()

        def _updates(self):
            return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

        def on_train_batch_end(self, batch, logs=None):
            done = self._updates() - self.first_update
            reported = self.bar.n
            self.bar.update(done - reported)
            if logs and "loss" in logs and done // 20 > reported // 20:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.3f}", refresh=False)

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_losses.append(float((logs or {}).get("loss", float("nan"))))
            self.bar.set_postfix(epoch=epoch + 1, loss=f"{self.epoch_losses[-1]:.3f}")

        def on_train_end(self, logs=None):
            self.bar.close()

    return TrainingProgress()


def print_table(title, header, rows):
    """Print a Markdown-style table of figures (so it can be pasted into a README)."""
    cells = [[str(cell) for cell in row] for row in [header] + list(rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row):
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |"

    print(f"\n{title}")
    print(line(cells[0]))
    print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    for row in cells[1:]:
        print(line(row))
