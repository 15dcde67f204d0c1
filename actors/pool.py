"""Driver-side pool handle: start (or attach to) the actors, submit, iterate results.

The handle keeps every submitted line until its result has been emitted, so
after a coordinator restart it resubmits what was not finished; results are
emitted once per ``request_id``.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from ray_mm.config import RayMMConfig
from ray_mm.errors import MMError, PoolSaturatedError
from ray_mm.pool_config import PoolConfig

from .coordinator import Coordinator
from .gpu_worker import GpuWorker
from .media_worker import MediaWorker


def _unwrap(exc: BaseException) -> BaseException:
    cause = getattr(exc, "cause", None)
    return cause if isinstance(exc, RayTaskError) and isinstance(cause, BaseException) else exc


class Pool:
    """ray-mm's preprocessing pool on a running Ray cluster (``ray.init`` already called)."""

    def __init__(
        self,
        model_dir: str,
        config: RayMMConfig | None = None,
        pool_config: PoolConfig | None = None,
        adapter: str | None = None,
    ) -> None:
        self.model_dir = str(model_dir)
        self.config = config or RayMMConfig()
        self.cfg = pool_config or PoolConfig()
        self.adapter = adapter
        self.pending: dict[str, _Pending] = {}
        self.emitted: set[str] = set()
        self._local: list[dict[str, Any]] = []  # records written by the driver itself
        self.resubmitted = 0
        self.restarts_seen = 0
        self.driver_timeouts = 0
        self.duplicates_dropped = 0
        try:
            self._start()
        except BaseException:
            self._kill_actors()  # a pool that cannot start leaves no actors waiting for resources
            raise

    # -- lifecycle ---------------------------------------------------------
    def _start(self) -> None:
        cfg, core = self.cfg, self.config.model_dump(mode="json")
        # Workers are named so the coordinator finds them by name: its constructor arguments stay
        # plain values, which a restarted coordinator can always get back.
        self.pool_id = uuid.uuid4().hex[:8]
        worker_names = [f"ray_mm_media_{self.pool_id}_{k}" for k in range(cfg.cpu_workers)]
        self.media_workers = [
            MediaWorker.options(
                num_cpus=cfg.worker_num_cpus, resources={cfg.cpu_node_resource: 1}, name=name
            ).remote(self.model_dir, core, self.adapter, cfg.reuse_output_buffers, cfg.freeze_gc_after_start)
            for name in worker_names
        ]
        # All actors are created before any is awaited, so their start-ups (mostly importing torch
        # and transformers and loading the processor) overlap. Named actors are registered when
        # created, so the coordinator and GPU workers can look their peers up before those are up.
        coordinator_name = f"ray_mm_coordinator_{self.pool_id}"
        self.coordinator = Coordinator.options(name=coordinator_name, resources=dict(cfg.coordinator_resources)).remote(
            self.model_dir, core, cfg.model_dump(mode="json"), self.adapter, worker_names
        )
        use_gpus = cfg.use_gpus if cfg.use_gpus is not None else ray.cluster_resources().get("GPU", 0) >= cfg.gpu_workers > 0
        self.gpu_workers = [
            GpuWorker.options(
                num_cpus=0, num_gpus=1 if use_gpus else 0, resources={cfg.gpu_node_resource: 1}
            ).remote(coordinator_name, self.model_dir, cfg.model_dump(mode="json"), self.adapter, f"gpu{k}")
            for k in range(cfg.gpu_workers)
        ]
        self._wait_for([
            ("media workers", self.media_workers, {cfg.cpu_node_resource: cfg.cpu_workers}),
            ("coordinator", [self.coordinator], dict(cfg.coordinator_resources)),
            ("GPU workers", self.gpu_workers, {cfg.gpu_node_resource: cfg.gpu_workers}),
        ])
        self.incarnation = ray.get(self.coordinator.incarnation_id.remote())
        self.gpu_runs = [w.run.remote() for w in self.gpu_workers]

    def _wait_for(self, groups: list[tuple[str, list[Any], dict[str, float]]]) -> None:
        """Bounded wait for the minimum pool, one clock for every group; on timeout name each group
        that is not up and the resources it lacks."""
        refs = {what: [a.ready.remote() for a in actors] for what, actors, _ in groups}
        every = [ref for group in refs.values() for ref in group]
        done, _ = ray.wait(every, num_returns=len(every), timeout=self.cfg.min_pool_wait_s)
        ray.get(done)  # an actor whose constructor failed raises here, not as a timeout
        if len(done) == len(every):
            return
        finished, have = set(done), ray.cluster_resources()
        late = []
        for what, _, needs in groups:
            if all(ref in finished for ref in refs[what]):
                continue
            missing = [f"{k}: need {v:g}, cluster has {have.get(k, 0):g}" for k, v in needs.items() if have.get(k, 0) < v]
            late.append(f"{what} not placed within {self.cfg.min_pool_wait_s:g} s "
                        f"({'; '.join(missing) or 'the resources exist: still starting, or in use'})")
        raise TimeoutError(
            "; ".join(late) + ". Add nodes carrying these resources (see cluster_configs/) or lower the worker count."
        )

    def shutdown(self) -> None:
        try:
            ray.get([w.stop.remote() for w in getattr(self, "gpu_workers", [])], timeout=10)
            ray.wait(getattr(self, "gpu_runs", []), num_returns=len(getattr(self, "gpu_runs", [])), timeout=10)
        except Exception:
            pass  # a worker that cannot stop cleanly is killed below anyway
        self._kill_actors()

    def _kill_actors(self) -> None:
        for actor in [*getattr(self, "gpu_workers", []), getattr(self, "coordinator", None),
                      *getattr(self, "media_workers", [])]:
            if actor is not None:
                ray.kill(actor, no_restart=True)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- requests ------------------------------------------------------------
    def submit(self, line: Any, fallback_id: str = "?") -> str:
        """Admit one request; raises ``PoolSaturatedError`` past the admission limit."""
        rid = self._submit_remote(line, fallback_id, None)
        self.pending[rid] = _Pending(line, fallback_id, time.monotonic() + self.cfg.request_timeout_s)
        return rid

    def _submit_remote(self, line: Any, fallback_id: str, timeout_s: float | None) -> str:
        try:
            return str(ray.get(self.coordinator.submit.remote(line, fallback_id, timeout_s)))
        except RayTaskError as exc:
            raise _unwrap(exc) from None

    def cancel(self, request_id: str) -> bool:
        """Cancel a pending request: its record becomes ``Cancelled`` (status 499), written once."""
        if ray.get(self.coordinator.cancel.remote(request_id)):
            return True
        pending = self.pending.get(request_id)
        if pending is not None and pending.needs_submit:  # lost with a coordinator, not resubmitted yet
            self._emit_local(request_id, "Cancelled", f"request {request_id}: cancelled", 499)
            return True
        return False

    def stats(self, timeout_s: float = 30.0) -> dict[str, Any]:
        out: dict[str, Any] = ray.get(self.coordinator.stats.remote(), timeout=timeout_s)
        out["gpu_workers"] = self._actor_stats(self.gpu_workers, timeout_s)
        out["media_workers"] = self._actor_stats(self.media_workers, timeout_s)
        out["resubmitted"] = self.resubmitted
        out["driver_timeouts"] = self.driver_timeouts
        return out

    @staticmethod
    def _actor_stats(actors: list[Any], timeout_s: float) -> list[dict[str, Any]]:
        refs = [a.stats.remote() for a in actors]
        out = []
        for ref in refs:
            try:
                out.append(ray.get(ref, timeout=timeout_s))
            except (GetTimeoutError, RayActorError) as exc:  # restarting: no stats now
                out.append({"error": type(exc).__name__})
        return out

    def results(self, timeout_s: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield one record per submitted request, as they finish, until none is pending.

        Bounded even when results are lost: a request still pending ``driver_grace_s`` past its
        deadline gets a ``RequestTimeoutError`` (504) record written by the driver.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.pending:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.pending)} requests still pending after {timeout_s} s")
            yield from self._poll()

    def poll(self, wait_s: float = 0.5) -> list[dict[str, Any]]:
        """The records finished so far, waiting up to ``wait_s`` for the first (each emitted once).
        For a front end that submits as requests arrive and collects between arrivals."""
        return self._poll(wait_s)

    def _poll(self, wait_s: float = 0.5) -> list[dict[str, Any]]:
        incarnation: int | None = None
        try:
            incarnation, records = ray.get(self.coordinator.take_results.remote(256, wait_s))
        except (RayActorError, RayTaskError):
            records = []
        self._resubmit_if_restarted(incarnation)
        self._expire_overdue()
        out = []
        for rec in [*records, *self._local]:
            rid = rec["request_id"]
            if rid in self.emitted:
                self.duplicates_dropped += 1
                continue
            self.emitted.add(rid)
            self.pending.pop(rid, None)
            out.append(rec)
        self._local = []
        return out

    def _emit_local(self, rid: str, error_type: str, message: str, status: int) -> None:
        self._local.append({"request_id": rid, "ok": False, "error": {"type": error_type, "message": message, "status": status}})
        if rid in self.pending:
            self.pending[rid].needs_submit = False

    def _expire_overdue(self) -> None:
        """Requests whose result never came (lost with a coordinator): a 504 record, and a best-effort cancel."""
        now = time.monotonic()
        for rid, p in list(self.pending.items()):
            if now > p.deadline + self.cfg.driver_grace_s and not any(r["request_id"] == rid for r in self._local):
                self.driver_timeouts += 1
                self._emit_local(rid, "RequestTimeoutError",
                                 f"request {rid}: no result within {self.cfg.request_timeout_s:g} s (driver deadline)", 504)
                self.coordinator.cancel.remote(rid)  # not awaited; its Cancelled record is deduplicated

    def _resubmit_if_restarted(self, incarnation: int | None = None) -> None:
        if incarnation is None:
            try:
                incarnation = ray.get(self.coordinator.incarnation_id.remote())
            except RayActorError:
                return
        if incarnation != self.incarnation:
            self.incarnation = incarnation
            self.restarts_seen += 1
            for p in self.pending.values():
                p.needs_submit = True
        self._resubmit_missing()

    def _resubmit_missing(self) -> None:
        """Resubmit what a restarted coordinator lost, with what is left of each deadline; stop at
        saturation and go on at the next poll (nothing is dropped)."""
        for rid, p in list(self.pending.items()):
            if not p.needs_submit:
                continue
            left = p.deadline - time.monotonic()
            if left <= 0:
                self._emit_local(rid, "RequestTimeoutError",
                                 f"request {rid}: deadline passed while the coordinator restarted", 504)
                continue
            try:
                self._submit_remote(p.line, p.fallback, left)
                self.resubmitted += 1
            except PoolSaturatedError:
                return
            except MMError:
                pass  # already in the pool (submitted to the new incarnation already)
            except RayActorError:
                return
            p.needs_submit = False

    def run(self, lines: Iterable[tuple[str, Any]], batch: int = 32) -> Iterator[dict[str, Any]]:
        """Submit all ``(fallback_id, line)`` with backpressure (wait when saturated) and yield every
        result. Lines are admitted ``batch`` at a time in one coordinator call each."""
        source = iter(lines)
        backlog: list[tuple[str, Any]] = []
        while True:
            backlog.extend(itertools.islice(source, batch - len(backlog)))
            if not backlog:
                break
            admitted = self._submit_batch(backlog)
            del backlog[:admitted]
            if backlog:  # saturated: collect results, then go on with the tail
                yield from self._poll(wait_s=0.2)
        yield from self.results()

    def _submit_batch(self, lines: list[tuple[str, Any]]) -> int:
        """Admit from the front of ``lines`` until the pool is saturated; how many were admitted.
        Other admission errors are raised, as ``submit`` raises them."""
        try:
            answers = ray.get(self.coordinator.submit_many.remote([(line, fallback, None) for fallback, line in lines]))
        except RayTaskError as exc:
            raise _unwrap(exc) from None
        for (fallback, line), answer in zip(lines, answers):
            if isinstance(answer, PoolSaturatedError):
                break
            if isinstance(answer, BaseException):
                raise answer
            self.pending[str(answer)] = _Pending(line, fallback, time.monotonic() + self.cfg.request_timeout_s)
        return sum(1 for answer in answers if not isinstance(answer, BaseException))


@dataclass
class _Pending:
    """A submitted line kept until its record is emitted (for resubmission after a coordinator restart)."""

    line: Any
    fallback: str
    deadline: float  # monotonic; request_timeout_s after the first admission
    needs_submit: bool = False
