"""The HTTP contract of ``ray-mm serve``, without Ray (``http_api``): settings, query and body parsing,
request ids, error-to-status rules and feature encoding. The Ray Serve deployment is ``actors/serve.py``.
"""

from .http_api import ServeSettings, decode_features, encode_features

__all__ = ["ServeSettings", "decode_features", "encode_features"]
