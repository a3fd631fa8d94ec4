"""The siamese encoder: one network embeds anchor, positive and negative alike.

    window (B, T, F) -> Normalization (stats fitted on training windows, stored in the model and
    the manifest; never BatchNormalization, which made training and validation disagree)
    -> LSTM -> Dropout -> Dense(relu) -> Dense(D, sigmoid): a point in the unit cube [0, 1]^D.

Keras 3 API only, so the saved ``.keras`` file runs under the TensorFlow, PyTorch and JAX backends.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import keras
import numpy as np

__all__ = ["EncoderSpec", "build_encoder"]


@dataclass(frozen=True)
class EncoderSpec:
    window_length: int      # T
    n_features: int         # F
    lstm_units: int = 64
    dense_units: int = 32
    embedding_dim: int = 3  # D
    dropout: float = 0.1

    def to_dict(self) -> dict[str, int | float]:
        return asdict(self)


def build_encoder(spec: EncoderSpec, mean: np.ndarray, variance: np.ndarray, seed: int = 0) -> keras.Model:
    """Build the encoder with fixed normalisation statistics (shape (F,) each)."""
    init = keras.initializers.GlorotUniform(seed=seed)
    inp = keras.Input(shape=(spec.window_length, spec.n_features), name="window")      # (B, T, F)
    x = keras.layers.Normalization(axis=-1, mean=np.asarray(mean, np.float32),
                                   variance=np.asarray(variance, np.float32), name="normalise")(inp)
    x = keras.layers.LSTM(spec.lstm_units, kernel_initializer=init,
                          recurrent_initializer=keras.initializers.Orthogonal(seed=seed), name="lstm")(x)  # (B, U)
    x = keras.layers.Dropout(spec.dropout, seed=seed, name="dropout")(x)
    x = keras.layers.Dense(spec.dense_units, activation="relu", kernel_initializer=init, name="dense")(x)
    out = keras.layers.Dense(spec.embedding_dim, activation="sigmoid", kernel_initializer=init,
                             name="embedding")(x)                                                   # (B, D)
    return keras.Model(inp, out, name="netsiam_encoder")
