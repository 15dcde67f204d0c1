"""Driver-side pool handle: start (or attach to) the actors, submit, iterate results.

The handle keeps every submitted line until its result has been emitted, so
after a coordinator restart it resubmits what was not finished.

Results are emitted once per *submission*: a record is emitted only for a
request that is pending (submitted, no record emitted yet), which it then stops
being; a record for an id that is not pending is a late copy (the coordinator's
``Cancelled`` after the driver already wrote its own 504) and is dropped. No
per-id state outlives its request, so a long-running front end holds only what
is in flight. The same ``request_id`` may be submitted again once its record is
out: that is a new request with a record of its own. The coordinator refuses
(``RequestError`` 409) an id while an earlier submission of it is in flight or
its record is not yet collected, so a record that arrives for a pending id is
that submission's own.

With ``PoolConfig.coordinators = K`` the pool runs K coordinator shards. Every request
belongs to the shard its id hashes to (``ray_mm.pool.shard_of``): submission, ``cancel``,
resubmission and the 409 check all go there. Results, stats and restarts are per shard: a
shard that restarts has only its own pending requests resubmitted.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from ray_mm.config import RayMMConfig
from ray_mm.errors import MMError, PoolSaturatedError
from ray_mm.pool import merge_stats, shard_config, shard_names, shard_of, split_by_shard
from ray_mm.pool.config import PoolConfig
from ray_mm.request import request_id_of

from .coordinator import Coordinator
from .gpu_worker import GpuWorker
from .media_worker import MediaWorker

log = logging.getLogger("ray_mm.actors.pool")


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
        # Submitted requests without an emitted record: the only per-id state (see the module docstring).
        self.pending: dict[str, _Pending] = {}
        self._local: list[dict[str, Any]] = []  # records written by the driver itself
        self.resubmitted = 0
        self.resubmitted_per_shard = [0] * self.cfg.coordinators  # a shard's restart resubmits only its own
        self.restarts_seen = 0
        self.driver_timeouts = 0
        self.duplicates_dropped = 0  # late copies of records already emitted
        self.refused = 0  # lines Pool.run answered with the coordinator's refusal (an id still in flight)
        self._takes: dict[int, Any] = {}  # shard -> its take_results call in flight (its records are collected once)
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
        self.coordinator_names = shard_names(f"ray_mm_coordinator_{self.pool_id}", cfg.coordinators)
        self.media_workers = [
            MediaWorker.options(
                num_cpus=cfg.worker_num_cpus, resources={cfg.cpu_node_resource: 1}, name=name
            ).remote(self.model_dir, core, self.adapter, cfg.model_dump(mode="json"), k)
            for k, name in enumerate(worker_names)
        ]
        # All actors are created before any is awaited, so their start-ups (mostly importing torch
        # and transformers and loading the processor) overlap. Named actors are registered when
        # created, so the coordinator and GPU workers can look their peers up before those are up.
        shard_cfg = shard_config(cfg).model_dump(mode="json")  # each shard holds its share of the limits
        self.coordinators = [
            Coordinator.options(name=name, resources=dict(cfg.coordinator_resources)).remote(
                self.model_dir, core, shard_cfg, self.adapter, worker_names, k)
            for k, name in enumerate(self.coordinator_names)
        ]
        self.coordinator = self.coordinators[0]  # the only one unless coordinators > 1
        use_gpus = cfg.use_gpus if cfg.use_gpus is not None else ray.cluster_resources().get("GPU", 0) >= cfg.gpu_workers > 0
        self.gpu_workers = [
            GpuWorker.options(
                num_cpus=0, num_gpus=1 if use_gpus else 0, resources={cfg.gpu_node_resource: 1}
            ).remote(self.coordinator_names, self.model_dir, cfg.model_dump(mode="json"), self.adapter, f"gpu{k}")
            for k in range(cfg.gpu_workers)
        ]
        self._wait_for([
            ("media workers", self.media_workers, {cfg.cpu_node_resource: cfg.cpu_workers}),
            ("coordinator", self.coordinators, dict(cfg.coordinator_resources)),
            ("GPU workers", self.gpu_workers, {cfg.gpu_node_resource: cfg.gpu_workers}),
        ])
        self.incarnations = ray.get([c.incarnation_id.remote() for c in self.coordinators])
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
            # Pulls waiting at a coordinator (up to pull_wait_s) answer now, so the runs end at once.
            ray.get([c.wake_pulls.remote() for c in getattr(self, "coordinators", [])], timeout=10)
            ray.wait(getattr(self, "gpu_runs", []), num_returns=len(getattr(self, "gpu_runs", [])), timeout=10)
        except Exception:
            pass  # a worker that cannot stop cleanly is killed below anyway
        self._kill_actors()

    def _kill_actors(self) -> None:
        for actor in [*getattr(self, "gpu_workers", []), *getattr(self, "coordinators", []),
                      *getattr(self, "media_workers", [])]:
            if actor is not None:
                ray.kill(actor, no_restart=True)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- requests ------------------------------------------------------------
    def submit(self, line: Any, fallback_id: str = "?") -> str:
        """Admit one request; raises ``PoolSaturatedError`` past the admission limit, and
        ``RequestError`` (409) for an id whose earlier submission is still in flight or whose record
        is not collected yet. An id whose record was emitted may be submitted again: a new request."""
        rid = self._submit_remote(line, fallback_id, None)
        self.pending[rid] = _Pending(line, fallback_id, time.monotonic() + self.cfg.request_timeout_s)
        return rid

    @property
    def incarnation(self) -> int:
        """Shard 0's incarnation (the coordinator's, with one shard)."""
        return int(self.incarnations[0])

    def shard(self, request_id: str) -> int:
        """The coordinator shard that owns ``request_id``."""
        return shard_of(request_id, len(self.coordinators))

    def coordinator_for(self, request_id: str) -> Any:
        """The handle of the coordinator shard that owns ``request_id``."""
        return self.coordinators[self.shard(request_id)]

    def _submit_remote(self, line: Any, fallback_id: str, timeout_s: float | None) -> str:
        coordinator = self.coordinator_for(request_id_of(line, fallback_id))
        try:
            return str(ray.get(coordinator.submit.remote(line, fallback_id, timeout_s)))
        except RayTaskError as exc:
            raise _unwrap(exc) from None

    def cancel(self, request_id: str) -> bool:
        """Cancel a pending request: its record becomes ``Cancelled`` (status 499), written once."""
        if ray.get(self.coordinator_for(request_id).cancel.remote(request_id)):
            return True
        pending = self.pending.get(request_id)
        if pending is not None and pending.needs_submit:  # lost with a coordinator, not resubmitted yet
            self._emit_local(request_id, "Cancelled", f"request {request_id}: cancelled", 499)
            return True
        return False

    def stats(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """The coordinators' stats summed over shards (each shard's own under ``shards``; see
        ``ray_mm.pool.merge_stats``), the workers' stats, and the driver's counters."""
        if len(self.coordinators) == 1:
            shards = [ray.get(self.coordinator.stats.remote(), timeout=timeout_s)]
        else:  # a shard that is restarting must not hide the others
            shards = self._actor_stats(self.coordinators, timeout_s)
        out: dict[str, Any] = merge_stats(shards)
        out["gpu_workers"] = self._actor_stats(self.gpu_workers, timeout_s)
        out["media_workers"] = self._actor_stats(self.media_workers, timeout_s)
        out["resubmitted"] = self.resubmitted
        out["resubmitted_per_shard"] = list(self.resubmitted_per_shard)
        out["driver_timeouts"] = self.driver_timeouts
        out["duplicates_dropped"] = self.duplicates_dropped
        out["refused"] = self.refused
        # Whether feature objects could travel inline through the coordinator (None: unknown).
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
        records = []
        for shard, incarnation, got in self._take_results(wait_s):
            records.extend(got)
            self._resubmit_if_restarted(shard, incarnation)
        self._expire_overdue()
        out = []
        for rec in [*records, *self._local]:
            # Emitted at most once per submission: only while pending, which emitting ends.
            if self.pending.pop(rec["request_id"], None) is None:
                self.duplicates_dropped += 1  # a late copy, e.g. Cancelled after the driver's own 504
                continue
            out.append(rec)
        self._local = []
        return out

    def _take_results(self, wait_s: float) -> list[tuple[int, int | None, list[dict[str, Any]]]]:
        """``(shard, incarnation or None, records)`` of every shard that answered within about
        ``wait_s`` (each waits up to ``wait_s`` for a record of its own). A shard's call that has
        not answered stays in flight for the next poll: the records it takes out of its
        coordinator are collected then, never dropped."""
        for shard, coordinator in enumerate(self.coordinators):
            if shard not in self._takes:
                self._takes[shard] = coordinator.take_results.remote(256, wait_s)
        refs = {ref: shard for shard, ref in self._takes.items()}
        if len(refs) == 1:  # one shard: wait for its answer, as a single coordinator always was
            done = list(refs)
        else:
            done, _ = ray.wait(list(refs), num_returns=1, timeout=wait_s + 5.0)
            done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0) if done else (done, None)
        out = []
        for ref in done:
            shard = refs[ref]
            del self._takes[shard]
            try:
                incarnation, records = ray.get(ref)
            except (RayActorError, RayTaskError):
                incarnation, records = None, []
            out.append((shard, incarnation, records))
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
                self.coordinator_for(rid).cancel.remote(rid)  # not awaited; its Cancelled record is deduplicated

    def _resubmit_if_restarted(self, shard: int, incarnation: int | None = None) -> None:
        """If coordinator ``shard`` restarted, mark its pending requests (only its own) for
        resubmission; then resubmit what it is missing."""
        if incarnation is None:
            try:
                incarnation = ray.get(self.coordinators[shard].incarnation_id.remote())
            except RayActorError:
                return
        if incarnation != self.incarnations[shard]:
            self.incarnations[shard] = incarnation
            self.restarts_seen += 1
            for rid, p in self.pending.items():
                if self.shard(rid) == shard:
                    p.needs_submit = True
        self._resubmit_missing(shard)

    def _resubmit_missing(self, shard: int) -> None:
        """Resubmit what restarted coordinator ``shard`` lost, with what is left of each deadline;
        stop at saturation and go on at the next poll (nothing is dropped)."""
        for rid, p in list(self.pending.items()):
            if not p.needs_submit or self.shard(rid) != shard:
                continue
            left = p.deadline - time.monotonic()
            if left <= 0:
                self._emit_local(rid, "RequestTimeoutError",
                                 f"request {rid}: deadline passed while the coordinator restarted", 504)
                continue
            try:
                self._submit_remote(p.line, p.fallback, left)
                self.resubmitted += 1
                self.resubmitted_per_shard[shard] += 1
            except PoolSaturatedError:
                return
            except MMError:
                pass  # already in the pool (submitted to the new incarnation already)
            except RayActorError:
                return
            p.needs_submit = False

    def run(self, lines: Iterable[tuple[str, Any]], batch: int = 32) -> Iterator[dict[str, Any]]:
        """Submit all ``(fallback_id, line)`` with backpressure (wait when saturated) and yield one
        record per line. Lines are admitted ``batch`` at a time, in one call per coordinator shard. A line
        the coordinator refuses (its id is still in flight, e.g. twice in one batch) gets the
        refusal as its record (``RequestError`` 409), and the batch goes on. (``ray-mm run`` and
        ``align`` drop such repeats before, with ``ray_mm.request.jsonl.dedupe``, so their records do not
        depend on timing.)"""
        source = iter(lines)
        backlog: list[tuple[str, Any]] = []
        while True:
            backlog.extend(itertools.islice(source, batch - len(backlog)))
            if not backlog:
                break
            consumed, refusals, saturated = self._submit_batch(backlog)
            backlog = [line for pos, line in enumerate(backlog) if pos not in consumed]
            yield from refusals
            if saturated:  # collect results, then go on with the tail
                yield from self._poll(wait_s=0.2)
        yield from self.results()

    def _submit_batch(self, lines: list[tuple[str, Any]]) -> tuple[set[int], list[dict[str, Any]], bool]:
        """Admit ``lines``, each at its shard, one call per shard, all shards at once:
        ``(positions consumed, records of refused lines, saturated)``. Per shard, lines are admitted
        in order until that shard is saturated or refuses a line; a refused line is consumed (its
        record is the refusal); the shard stops at it, so its lines after it are not (with one
        shard: a prefix of ``lines``)."""
        by_shard = split_by_shard(lines, lambda fl: request_id_of(fl[1], fl[0]), len(self.coordinators))
        calls = {shard: self.coordinators[shard].submit_many.remote([(line, fallback, None) for _, (fallback, line) in part])
                 for shard, part in by_shard.items()}
        consumed: set[int] = set()
        refusals: list[dict[str, Any]] = []
        saturated = False
        for shard, ref in calls.items():
            try:
                answers = ray.get(ref)
            except RayTaskError as exc:
                raise _unwrap(exc) from None
            for (pos, (fallback, line)), answer in zip(by_shard[shard], answers):
                if isinstance(answer, PoolSaturatedError):
                    saturated = True
                    break
                consumed.add(pos)
                if isinstance(answer, MMError):
                    # Not tracked as pending: the id belongs to the submission in flight, whose record is its own.
                    self.refused += 1
                    rid = request_id_of(line, fallback)
                    log.info("request %s refused at admission: %s", rid, answer.message)
                    refusals.append({"request_id": rid, "ok": False, "error": answer.to_dict()})
                    continue
                if isinstance(answer, BaseException):
                    raise answer
                self.pending[str(answer)] = _Pending(line, fallback, time.monotonic() + self.cfg.request_timeout_s)
        return consumed, refusals, saturated


@dataclass
class _Pending:
    """A submitted line kept until its record is emitted (for resubmission after a coordinator restart)."""

    line: Any
    fallback: str
    deadline: float  # monotonic; request_timeout_s after the first admission
    needs_submit: bool = False
