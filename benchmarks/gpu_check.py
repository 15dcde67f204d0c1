"""H2D bandwidth of features pulled from the object store vs a pinned-memory copy of the same bytes,
and the parity of uint8-transport features normalised on the GPU against the HF processor.

What a GPU worker does (``actors/gpu_worker.py``): ``ray.get`` a feature (a read-only numpy view
of shared memory), wrap it with ``torch.from_numpy`` and copy it to the device. Pageable memory
goes through a staging copy in the driver; pinned memory is DMA'd directly. This measures both,
plus ``tensor.pin_memory()`` per copy, and the worker's way: ``HostStaging``, one reused pinned
buffer the features are packed into before an asynchronous copy.

Needs CUDA; without it, prints why and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Any

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray is imported: stay on loopback


def _bandwidth(fn, nbytes: int, repeats: int, sync) -> float:  # noqa: ANN001
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return nbytes * repeats / (time.perf_counter() - t0) / 1e9


def _normalisation_parity(torch: Any) -> dict[str, Any]:
    """uint8 transport: patches normalised on the GPU against the HF processor's float32 output (CPU)."""
    import io
    import tempfile

    from PIL import Image
    from transformers import AutoProcessor

    from ray_mm.media.synth import make_image
    from ray_mm.models import load_adapter, make_model

    with tempfile.TemporaryDirectory() as tmp:
        model = make_model(tmp, "qwen2_vl")
        adapter = load_adapter(model)
        jpeg = make_image(1920, 1080, seed=2)
        image = Image.open(io.BytesIO(jpeg)).convert("RGB")
        shipped = adapter.process("image", image, {"transport": "uint8"})[0].features
        on_gpu = {k: torch.from_numpy(v).pin_memory().to("cuda", non_blocking=True) for k, v in shipped.items()}
        finished = adapter.finish_features(on_gpu)["pixel_values"].cpu().numpy()
        ref = AutoProcessor.from_pretrained(str(model), local_files_only=True).image_processor(
            images=[image], return_tensors="np")["pixel_values"]
    max_diff = float(abs(finished - ref).max())
    return {"shipped_bytes": int(shipped["pixel_values"].nbytes), "float32_bytes": int(ref.nbytes),
            "max_abs_diff": max_diff, "within_1e-5": max_diff <= 1e-5}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=23.0, help="feature size (a 1080p Qwen2-VL image is 23 MB)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("gpu_check: skipped (torch is not installed)")
        return 0
    if not torch.cuda.is_available():
        print("gpu_check: skipped (no CUDA device on this machine)")
        return 0
    import numpy as np
    import ray

    ray.init(num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="ERROR",
             log_to_driver=False, object_store_memory=1 << 30)
    try:
        rows = int(args.mb * 1e6 / (1176 * 4))
        feature = np.random.default_rng(0).random((rows, 1176), dtype=np.float32)
        nbytes = feature.nbytes
        from_store = ray.get(ray.put(feature))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only object-store view
            store_tensor = torch.from_numpy(from_store)
        pinned = torch.empty(feature.shape, dtype=torch.float32, pin_memory=True)
        pinned.copy_(torch.from_numpy(feature))
        device = torch.device("cuda")
        dst = torch.empty(feature.shape, dtype=torch.float32, device=device)
        sync = torch.cuda.synchronize
        out = {
            "device": torch.cuda.get_device_name(0),
            "mb": nbytes / 1e6,
            "object_store_zero_copy": bool(not from_store.flags.writeable),
            "h2d_from_object_store_gb_s": _bandwidth(lambda: dst.copy_(store_tensor, non_blocking=True), nbytes, args.repeats, sync),
            "h2d_from_pinned_gb_s": _bandwidth(lambda: dst.copy_(pinned, non_blocking=True), nbytes, args.repeats, sync),
            "pin_then_h2d_gb_s": _bandwidth(lambda: dst.copy_(store_tensor.pin_memory(), non_blocking=True), nbytes,
                                            args.repeats, sync),
        }
        from ray_mm.handoff.staging import HostStaging

        staging = HostStaging(device)  # what the GPU worker uses: one reused pinned buffer
        out["h2d_via_reused_staging_gb_s"] = _bandwidth(lambda: staging.to_device([from_store]), nbytes, args.repeats, sync)
        out["staging_allocations"] = staging.allocations
        out["pinned_vs_object_store"] = out["h2d_from_pinned_gb_s"] / out["h2d_from_object_store_gb_s"]
        out["uint8_normalisation"] = _normalisation_parity(torch)
        print(json.dumps(out, indent=2))
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
