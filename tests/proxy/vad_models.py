"""Stand-ins for the VAD model that the engine and service tests share."""

from __future__ import annotations

import threading

import numpy as np

from proxy.vad import Float32Array


class HungModel:
    """A model whose inference never returns until ``release``."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def run(self, audio: Float32Array, state: Float32Array) -> tuple[Float32Array, Float32Array]:
        self.entered.set()
        self.release.wait()
        return np.zeros(len(audio), dtype=np.float32), state
