"""The study's networks in Keras on TensorFlow-CPU, timed like the original notebook trained
them (model.fit on in-memory arrays). Run by benchmarks/throughput.py with the Python of a
separate environment that has TensorFlow (see benchmarks/keras_env.sh); prints one JSON line.

    .venv-keras/bin/python benchmarks/keras_networks.py simple 32 20 [mixed_bfloat16]

The optional last word is a Keras dtype policy: mixed_bfloat16 computes in bf16 and keeps
float32 weights, Keras' own answer to cifarlab's --precision bf16 (its softmax stays float32,
as Keras advises).
"""

import json
import sys
import time

import numpy as np
from tensorflow import keras
from tensorflow.keras import layers


def output():
    """The softmax layer, in float32 under any policy."""
    return layers.Dense(10, activation="softmax", dtype="float32")


def simple():
    return keras.Sequential([
        keras.Input((32, 32, 3)),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.Conv2D(32, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.Conv2D(64, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(128, 3, padding="same", activation="relu"),
        layers.Conv2D(128, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
        layers.Flatten(), layers.Dropout(0.2), layers.Dense(128, activation="relu"),
        output()])


def deep():
    model = [keras.Input((32, 32, 3))]
    for f in (32, 64, 128, 256, 512):
        model += [layers.Conv2D(f, 3, padding="same", activation="relu"),
                  layers.MaxPooling2D(padding="same")]
    model += [layers.GlobalAveragePooling2D(), layers.Dense(128, activation="relu"),
              layers.Dense(32, activation="relu"), output()]
    return keras.Sequential(model)


def batchnorm():
    model = [keras.Input((32, 32, 3))]
    for i, f in enumerate((32, 64, 128)):
        model += [layers.Conv2D(f, 5 if i == 0 else 3, padding="same"),
                  layers.BatchNormalization(), layers.Activation("relu"), layers.MaxPooling2D()]
    model += [layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dropout(0.3),
              output()]
    return keras.Sequential(model)


def main():
    name, batch, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    keras.mixed_precision.set_global_policy(sys.argv[4] if len(sys.argv) > 4 else "float32")
    model = {"simple": simple, "deep": deep, "batchnorm": batchnorm}[name]()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.random((4096, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, 4096)
    model.fit(x[: batch * 4], y[: batch * 4], batch_size=batch, epochs=1, verbose=0)  # warm-up
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
        images += len(x)
    print(json.dumps({"images_per_s": images / (time.perf_counter() - start)}))


if __name__ == "__main__":
    main()
