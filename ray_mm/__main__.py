"""``python -m ray_mm``: the same CLI as the ``ray-mm`` console script (used as a Ray job entrypoint)."""

from .cli import main

raise SystemExit(main())
