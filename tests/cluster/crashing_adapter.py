"""A fake adapter that kills its process on a marker image (a native decoder crash, simulated).

Registered by name and loaded in Ray workers as ``tests.cluster.crashing_adapter:crash_on_marker``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ray_mm.models import register_adapter
from ray_mm.models.qwen2_vl import Qwen2VLAdapter

ADAPTER = "tests.cluster.crashing_adapter:crash_on_marker"
MARKER_RGB = (255, 0, 255)
CRASH_LOG = "crashes.log"  # in the model directory: one line per process the marker killed


def is_marker(image: Any) -> bool:
    pixels = np.asarray(image)
    return pixels.ndim == 3 and bool((np.abs(pixels[..., :3].astype(int) - MARKER_RGB) <= 8).all())


@register_adapter("crash_on_marker", override=True)
class CrashOnMarkerAdapter(Qwen2VLAdapter):
    """Qwen2-VL, except that processing an all-magenta image ends the process at once."""

    def process(self, modality: str, data: Any, options: Mapping[str, Any] | None = None) -> Any:
        if modality == "image" and is_marker(data):
            with open(self.model_dir / CRASH_LOG, "a") as log:
                log.write(f"{os.getpid()}\n")
            os._exit(13)
        return super().process(modality, data, options)
