"""The command line: the ``ray-mm`` entry point and its in-process commands (``main``), ``ray-mm run``
on a pool (``run``), ``ray-mm serve`` (``serve``), and the demo workload (``demo``).

``run`` and ``serve`` import Ray only inside their commands, so importing this package stays Ray-free.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
