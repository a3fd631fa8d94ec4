"""TensorBoard scalars per epoch, without needing TensorFlow."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

__all__ = ["ScalarLog"]


class ScalarLog:
    """TensorBoard scalars per epoch, laid out like ``keras.callbacks.TensorBoard`` (LOGDIR/train and
    LOGDIR/validation, tags ``epoch_loss``, ``epoch_n_way_acc``...). Keras' own callback needs TensorFlow,
    which a torch or jax host may lack, so the event files are written with TensorFlow's summary ops when
    it is installed, else with the ``tensorboard`` package's writer, else not at all (said once)."""

    def __init__(self, logdir: Path, say: Any) -> None:
        self.write: Any = None
        self.closers: list[Any] = []
        try:
            import tensorflow as tf
        except ImportError:
            tf = None
        if tf is not None:
            writers = {k: tf.summary.create_file_writer(str(logdir / k)) for k in ("train", "validation")}
            meta = tf.compat.v1.SummaryMetadata(plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars"))

            def write_tf(which: str, tag: str, value: float, step: int) -> None:
                with writers[which].as_default():
                    tf.summary.write(tag, tf.constant(value), step=step, metadata=meta)

            self.write, self.closers = write_tf, [w.close for w in writers.values()]
            return
        try:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.compat.proto.summary_pb2 import Summary
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError:
            say(f"TensorBoard logs skipped: neither tensorflow nor tensorboard is installed ({logdir})")
            return
        files = {k: EventFileWriter(str(logdir / k)) for k in ("train", "validation")}

        def write_tb(which: str, tag: str, value: float, step: int) -> None:
            files[which].add_event(Event(wall_time=time.time(), step=step,
                                         summary=Summary(value=[Summary.Value(tag=tag, simple_value=value)])))

        self.write, self.closers = write_tb, [f.close for f in files.values()]

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.write is None:
            return
        for key, value in logs.items():
            which, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            self.write(which, f"epoch_{name}", float(value), epoch)

    def close(self) -> None:
        for close in self.closers:
            close()
