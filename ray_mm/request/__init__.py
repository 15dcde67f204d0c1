"""Request intake: the JSONL request forms (``parse``), precomputed features (``precomputed``), engine
per-modality bundles split into items (``bundle``), and reading/writing JSONL files (``jsonl``).

Only ``parse`` loads here, so ``from ray_mm.request import request_id_of`` stays cheap.
"""

from .parse import parse_request, request_id_of

__all__ = ["parse_request", "request_id_of"]
