"""The public API is pinned, and the core stays free of Ray."""

from __future__ import annotations

import subprocess
import sys

import ray_mm

EXPECTED = {
    "AlignmentError", "Alignment", "AudioSampling", "InternalError", "ItemMeta", "MMError", "MediaDecodeError",
    "MediaFetchError", "MediaLimitError", "MediaPolicy", "MediaPolicyError", "MediaSpec", "MediaUnsupportedError",
    "ModelAdapter", "ParsedRequest", "Pool", "PoolConfig", "PoolSaturatedError", "Preprocessor", "ProcessedItem", "RayMMConfig",
    "RequestError", "RequestTimeoutError", "VideoSampling", "align", "load_adapter", "load_config",
    "load_pool_config", "make_model", "register_adapter", "start_local_cluster",
}


def test_all_is_pinned_and_resolves() -> None:
    assert set(ray_mm.__all__) == EXPECTED
    assert len(ray_mm.__all__) == len(EXPECTED)
    for name in ray_mm.__all__:
        assert getattr(ray_mm, name) is not None, name


def test_error_hierarchy_and_statuses() -> None:
    statuses = {"RequestError": 400, "MediaFetchError": 400, "MediaDecodeError": 400, "MediaPolicyError": 403,
                "MediaLimitError": 413, "MediaUnsupportedError": 422, "AlignmentError": 400, "PoolSaturatedError": 503,
                "RequestTimeoutError": 504, "InternalError": 500}
    for name, status in statuses.items():
        cls = getattr(ray_mm, name)
        assert issubclass(cls, ray_mm.MMError) and issubclass(cls, ValueError)
        assert cls("x").status == status
        assert cls("x").to_dict() == {"type": name, "message": "x", "status": status}


def test_core_modules_do_not_import_ray() -> None:
    code = (
        "import sys, ray_mm, ray_mm.pipeline, ray_mm.cli, ray_mm.align, ray_mm.media, ray_mm.models, ray_mm.pool,"
        " ray_mm.request, ray_mm.handoff, ray_mm.serve\n"
        "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.') or m.startswith('actors'))\n"
        "print(','.join(bad)); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"core imported: {proc.stdout.strip()} {proc.stderr[-500:]}"
