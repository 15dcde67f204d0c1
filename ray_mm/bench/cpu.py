"""CPU accounting for ``ray-mm bench``: user+system seconds of the driver and every descendant process.

The local cluster's processes (GCS, raylets, agents, Ray workers, actors) are all children of the
driver, so one tree walk before and one after a pipeline gives its whole CPU cost, split by kind:
``driver``, ``ray_workers`` (``ray::`` processes) and ``ray_system`` (the daemons). ``psutil`` when
installed, else ``/proc`` (Linux).
"""

from __future__ import annotations

import contextlib
import os


class TreeCpu:
    """CPU seconds (user+system) of this process and all its descendants, by kind.

    Uses ``psutil`` when it is installed, else reads ``/proc`` directly (Linux). Processes that
    exit between two samples lose their time (none of the measured ones do: actors and Ray Data
    workers are sampled before they are stopped).
    """

    def sample(self) -> dict[int, tuple[str, float]]:
        me = os.getpid()
        out: dict[int, tuple[str, float]] = {}
        for pid, cmd, cpu in descendants(me):
            kind = "driver" if pid == me else ("ray_workers" if cmd.startswith("ray::") else "ray_system")
            out[pid] = (kind, cpu)
        return out

    @staticmethod
    def delta(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
        kinds: dict[str, float] = {"driver": 0.0, "ray_workers": 0.0, "ray_system": 0.0}
        for pid, (kind, cpu) in after.items():
            kinds[kind] = kinds.get(kind, 0.0) + cpu - before.get(pid, (kind, 0.0))[1]
        kinds["total"] = sum(kinds.values())
        return kinds


def descendants(root: int) -> list[tuple[int, str, float]]:
    """(pid, argv[0], user+system CPU s) of ``root`` and every descendant."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        out = []
        me = psutil.Process(root)
        for proc in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                out.append((proc.pid, (proc.cmdline() or [""])[0], t.user + t.system))
        return out
    procs = _proc_table(with_cmd=True)
    return [(pid, procs[pid][2], procs[pid][3]) for pid in _subtree(procs, root)]


def live_descendants(root: int) -> int:
    """How many descendants of ``root`` are still running (zombies not counted); 0 where /proc is missing."""
    procs = _proc_table(with_cmd=False) if os.path.isdir("/proc") else {}
    return sum(1 for pid in _subtree(procs, root) if pid != root and procs[pid][1] not in ("Z", "X"))


def _proc_table(with_cmd: bool) -> dict[int, tuple[int, str, str, float]]:
    """pid -> (ppid, state, argv[0] or "", user+system CPU s) of every process, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    procs: dict[int, tuple[int, str, str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            cmd = ""
            if with_cmd:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        procs[int(entry)] = (int(fields[1]), fields[0], cmd, (int(fields[11]) + int(fields[12])) / tick)
    return procs


def _subtree(procs: dict[int, tuple[int, str, str, float]], root: int) -> list[int]:
    """``root`` (where listed) and every descendant of it in ``procs``."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_) in procs.items():
        children.setdefault(ppid, []).append(pid)
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        if pid in procs:
            out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def find_pid(prefix: str) -> int | None:
    for pid, cmd, _ in descendants(os.getpid()):
        if cmd.startswith(prefix):
            return pid
    return None


def proc_cpu(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    for p, _, cpu in descendants(pid):
        if p == pid:
            return cpu
    return float("nan")


_TreeCpu = TreeCpu  # the name benchmarks/transfer_bench.py imports
