"""Where ES rollouts run: a local process pool or Ray actors, with the same contract.

``backend.map(tasks, shared)`` runs every task (a :class:`~rlstruct.algos.rollout.SeededTask`,
a driver-built :class:`~rlstruct.algos.rollout.RolloutTask` or a
:class:`~rlstruct.algos.rollout.PingTask`) and returns the results in task order. ``shared``
values (:class:`~rlstruct.algos.rollout.Shared`: the actor program, the iteration's ``theta``)
reach each worker once, before its first task that needs them, and again only when their key
changes: per iteration a worker receives one spec message plus small task messages. Each worker builds its own environment once and keeps it. A worker that
dies (killed, out of memory, node lost) loses no work: its task is re-run on another worker with a
warning and the worker is replaced. Results are a function of the tasks alone (episodes are seeded
by the task), so they do not depend on the backend or the number of workers.

* ``local``: ``n_workers`` processes started with ``spawn`` or ``forkserver`` (never ``fork``:
  the main process holds torch threads), one pipe each.
* ``ray``: ``n_workers`` Ray actors on a local Ray instance (started here) or on the cluster at
  ``address`` (``"auto"``, ``"host:port"`` or ``"ray://host:port"``); needs ``pip install ray``.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import socket
import time
import traceback
import warnings
from abc import ABC, abstractmethod
from collections import deque
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

from rlstruct.algos.rollout import AnyTask, EnvSpec, RolloutResult, Shared, WorkerCache, execute
from rlstruct.errors import RLStructError

BACKENDS = ("local", "ray")
START_METHODS = ("spawn", "forkserver")
_RAY_NICENESS = "RAY_worker_niceness"
_MISSING = object()
#: BLAS/OpenMP thread counts for workers (unless the user set them): a worker regenerates the
#: iteration's directions (a QR per block) while every other core runs a worker too, and
#: multi-threaded BLAS on busy cores only oversubscribes them (measured: 10-40x slower QRs on a
#: loaded 2-core machine, results/es_projection.md).
WORKER_THREAD_VARS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@contextlib.contextmanager
def _worker_thread_env() -> Iterator[None]:
    """Single-threaded BLAS in the children started inside (spawned children copy os.environ)."""
    added = {k: v for k, v in WORKER_THREAD_VARS.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            del os.environ[key]


class WorkerFailure(RuntimeError):
    """A task raised inside a worker (a bug or a broken environment, not a lost worker)."""


class Backend(ABC):
    """Runs rollout tasks; see the module docstring for the contract."""

    #: how many times in one ``map`` workers may be replaced before giving up.
    max_restarts_factor = 3

    def __init__(self, env_spec: EnvSpec, n_workers: int) -> None:
        if not isinstance(n_workers, int) or n_workers < 1:
            raise RLStructError(f"n_workers must be a positive integer, got {n_workers!r}")
        self.env_spec = env_spec
        self.n_workers = n_workers

    #: per ``map`` call: messages sent by the driver (tasks and shared values) and the seconds
    #: the driver spent sending them (pickling and writing; the serial per-message cost).
    last_messages: int = 0
    last_send_s: float = 0.0

    @abstractmethod
    def map(self, tasks: Sequence[AnyTask], shared: Sequence[Shared] = ()) -> List[RolloutResult]:
        """Results of ``tasks``, in task order; every worker holds ``shared`` before it runs one."""

    @abstractmethod
    def close(self) -> None:
        """Stop the workers."""

    def worker_pids(self) -> List[int]:
        """Process ids of the live workers (for monitoring and tests)."""
        return []

    def _check_restarts(self, restarts: int) -> None:
        if restarts > self.max_restarts_factor * self.n_workers:
            raise RLStructError(
                f"ES workers died {restarts} times in one iteration; check memory and the "
                "environment (a worker's log shows why), or lower n_workers"
            )

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------
def _worker_main(conn, env_spec: EnvSpec) -> None:
    """Loop of a local worker process: receive a task, run it, send the result (``None`` stops)."""
    env = env_spec.make()
    name = f"pid{os.getpid()}"
    cache = WorkerCache()
    while True:
        task = conn.recv()
        if task is None:
            break
        if isinstance(task, Shared):  # no reply: the task that needs it follows on this pipe
            cache.update(task)
            continue
        try:
            conn.send(execute(env, task, cache, name))
        except Exception:  # report the failure to the main process instead of dying silently
            conn.send(WorkerFailure(traceback.format_exc()))
    env.close()


@contextlib.contextmanager
def _global_start_method(method: str) -> Iterator[None]:
    """Make ``method`` the global start method while workers start.

    A spawned child re-applies its parent's *global* start method. Inside a joblib/loky worker
    (Hydra's joblib launcher) that is ``"loky"``, which a plain child cannot resolve and dies.
    """
    previous = mp.get_start_method(allow_none=True)
    if previous == method:
        yield
        return
    mp.set_start_method(method, force=True)
    try:
        yield
    finally:
        mp.set_start_method(previous, force=True)


class _LocalWorker:
    def __init__(self, ctx, env_spec: EnvSpec) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child, env_spec), daemon=True)
        with _global_start_method(ctx.get_start_method()), _worker_thread_env():
            self.process.start()
        child.close()
        self.task: Optional[int] = None  # index into the current map's tasks
        self.holds: Dict[str, Any] = {}  # shared name -> key this worker has received


class LocalBackend(Backend):
    """A pool of worker processes on this machine, each with its own environment."""

    def __init__(self, env_spec: EnvSpec, n_workers: int, start_method: str = "spawn") -> None:
        super().__init__(env_spec, n_workers)
        if start_method not in START_METHODS:
            raise RLStructError(
                f"unknown start_method {start_method!r}; choose one of: {', '.join(START_METHODS)}"
            )
        self._ctx = mp.get_context(start_method)
        self._workers = [_LocalWorker(self._ctx, env_spec) for _ in range(n_workers)]

    def worker_pids(self) -> List[int]:
        return [w.process.pid for w in self._workers if w.process.is_alive()]

    def busy_worker_pids(self) -> List[int]:
        """Process ids of the workers holding a task right now."""
        return [w.process.pid for w in list(self._workers) if w.task is not None]

    def _replace(self, worker: _LocalWorker, pending: Deque[int], tasks: Sequence[AnyTask]) -> None:
        lost = worker.task
        code = worker.process.exitcode
        worker.process.join(timeout=1)
        worker.conn.close()
        what = f"re-running direction {tasks[lost].index} on another worker" if lost is not None else "no task lost"
        warnings.warn(
            f"ES worker pid {worker.process.pid} died (exit code {code}); {what}; starting a new worker",
            RuntimeWarning,
            stacklevel=3,
        )
        if lost is not None:
            pending.appendleft(lost)
        self._workers[self._workers.index(worker)] = _LocalWorker(self._ctx, self.env_spec)

    def _send(self, worker: _LocalWorker, task: AnyTask, shared: Sequence[Shared]) -> None:
        """Send the shared values ``worker`` lacks, then ``task`` (a dead worker is handled later)."""
        tick = time.perf_counter()
        try:
            for part in shared:
                if worker.holds.get(part.name, _MISSING) != part.key:
                    worker.conn.send(part)
                    worker.holds[part.name] = part.key
                    self.last_messages += 1
            worker.conn.send(task)
            self.last_messages += 1
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # dead worker: its sentinel is ready, handled in map
        self.last_send_s += time.perf_counter() - tick

    def map(self, tasks: Sequence[AnyTask], shared: Sequence[Shared] = ()) -> List[RolloutResult]:
        results: List[Optional[RolloutResult]] = [None] * len(tasks)
        pending: Deque[int] = deque(range(len(tasks)))
        restarts = 0
        done = 0
        self.last_messages, self.last_send_s = 0, 0.0
        while done < len(tasks):
            for worker in list(self._workers):
                if worker.task is None and pending:
                    worker.task = pending.popleft()
                    self._send(worker, tasks[worker.task], shared)
            watch: Dict[Any, _LocalWorker] = {}
            for worker in self._workers:
                watch[worker.process.sentinel] = worker
                if worker.task is not None:
                    watch[worker.conn] = worker
            ready = wait(list(watch))
            dead = []
            for handle in ready:  # results first: a worker may answer and then die
                worker = watch[handle]
                if handle is worker.conn:
                    try:
                        reply = worker.conn.recv()
                    except (EOFError, OSError):
                        dead.append(worker)
                        continue
                    if isinstance(reply, WorkerFailure):
                        raise WorkerFailure(f"an ES rollout failed in a worker:\n{reply}")
                    results[worker.task] = reply
                    worker.task = None
                    done += 1
            for handle in ready:
                worker = watch[handle]
                if handle is worker.process.sentinel and worker not in dead:
                    dead.append(worker)
            for worker in dead:
                restarts += 1
                self._check_restarts(restarts)
                self._replace(worker, pending, tasks)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for worker in self._workers:
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
            worker.conn.close()
        self._workers = []


# ------------------------------------------------------------------------------------------------
class _RayWorker:
    """Body of a Ray actor: one environment, many tasks."""

    def __init__(self, env_spec: EnvSpec) -> None:
        self.env = env_spec.make()
        self.name = f"ray-pid{os.getpid()}"
        self.cache = WorkerCache()

    def pid(self) -> int:
        return os.getpid()

    def run(self, task: AnyTask, shared: Sequence[Tuple[str, Any, List[Any]]] = ()) -> RolloutResult:
        # ``shared`` holds (name, key, [object ref]): the list keeps Ray from resolving the ref,
        # so an actor fetches a value from the object store only when its key is new to it.
        import ray

        for name, key, (ref,) in shared:
            if not self.cache.holds(name, key):
                self.cache.update(Shared(name, key, ray.get(ref)))
        return execute(self.env, task, self.cache, self.name)


def _thread_vars() -> Dict[str, str]:
    return {k: v for k, v in WORKER_THREAD_VARS.items() if k not in os.environ}


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with a clear message, when a ``host:port`` Ray address does not answer."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RLStructError(
            f"ray_address {address!r} is not host:port, ray://host:port or auto; fix the address"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise RLStructError(
            f"Ray cluster at {address} is unreachable ({exc}); start it (ray start --head) or "
            "set ray_address=null for a local Ray instance"
        ) from None


class RayBackend(Backend):
    """Ray actors, each holding its own environment."""

    def __init__(self, env_spec: EnvSpec, n_workers: int, address: Optional[str] = None) -> None:
        super().__init__(env_spec, n_workers)
        try:
            import ray
        except ImportError:
            raise RLStructError(
                "backend=ray needs Ray: pip install 'ray[default]' (or rlstruct[ray]), or use "
                "backend=local"
            ) from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            if address is not None:
                check_ray_address(address)
            # Local workers import rlstruct from this checkout even if it is not pip-installed.
            root = str(Path(__file__).resolve().parents[2])
            path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
            # Ray starts its workers at nice 15 (RAY_worker_niceness), fit for background tasks;
            # here they do all the work, and on a machine shared with other jobs nice-15
            # rollouts starved: 1.28 s against 0.28 s per HalfCheetah pair, 8x slower than
            # local workers (results/es_scaling.md). A local instance we start gets the driver's
            # priority unless the user set the variable.
            ours = address is None and _RAY_NICENESS not in os.environ
            if ours:
                os.environ[_RAY_NICENESS] = "0"
            try:
                ray.init(
                    address=address,
                    num_cpus=None if address else n_workers,
                    include_dashboard=False,
                    log_to_driver=False,
                    runtime_env={"env_vars": {"PYTHONPATH": path, **_thread_vars()}} if not address else None,
                )
            except ConnectionError as exc:
                raise RLStructError(
                    f"cannot connect to Ray at {address} ({exc}); check ray_address"
                ) from None
            finally:
                if ours:  # the raylet has read it; leave the driver's environment as it was
                    del os.environ[_RAY_NICENESS]
            self._started = True
        self._actor_class = ray.remote(num_cpus=1)(_RayWorker)
        self._actors = [self._actor_class.remote(env_spec) for _ in range(n_workers)]
        self._refs: Dict[str, Tuple[Any, Any]] = {}  # shared name -> (key, object ref)

    def _shared_refs(self, shared: Sequence[Shared]) -> List[Tuple[str, Any, List[Any]]]:
        """Put each shared value into the object store once per key (one copy per node)."""
        out = []
        for part in shared:
            if part.name not in self._refs or self._refs[part.name][0] != part.key:
                self._refs[part.name] = (part.key, self._ray.put(part.value))
                self.last_messages += 1
            out.append((part.name, part.key, [self._refs[part.name][1]]))
        return out

    def worker_pids(self) -> List[int]:
        return self._ray.get([actor.pid.remote() for actor in self._actors])

    def map(self, tasks: Sequence[AnyTask], shared: Sequence[Shared] = ()) -> List[RolloutResult]:
        ray = self._ray
        from ray.exceptions import RayActorError, RayTaskError

        self.last_messages, self.last_send_s = 0, 0.0
        tick = time.perf_counter()
        refs = self._shared_refs(shared)
        self.last_send_s += time.perf_counter() - tick
        results: List[Optional[RolloutResult]] = [None] * len(tasks)
        pending: Deque[int] = deque(range(len(tasks)))
        idle = deque(self._actors)
        running: Dict[Any, Any] = {}  # object ref -> (actor, task index)
        restarts = 0
        while pending or running:
            while idle and pending:
                actor, index = idle.popleft(), pending.popleft()
                tick = time.perf_counter()
                running[actor.run.remote(tasks[index], refs)] = (actor, index)
                self.last_send_s += time.perf_counter() - tick
                self.last_messages += 1
            [ref], _ = ray.wait(list(running), num_returns=1)
            actor, index = running.pop(ref)
            try:
                results[index] = ray.get(ref)
                idle.append(actor)
            except RayActorError as exc:
                restarts += 1
                self._check_restarts(restarts)
                warnings.warn(
                    f"ES Ray worker died ({type(exc).__name__}); re-running direction "
                    f"{tasks[index].index} on another worker; starting a new worker",
                    RuntimeWarning,
                    stacklevel=2,
                )
                pending.appendleft(index)
                replacement = self._actor_class.remote(self.env_spec)
                self._actors[self._actors.index(actor)] = replacement
                idle.append(replacement)
            except RayTaskError as exc:
                raise WorkerFailure(f"an ES rollout failed in a Ray worker:\n{exc}") from None
        return results  # type: ignore[return-value]

    def close(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors = []
        self._refs = {}
        if self._started:
            self._ray.shutdown()


def make_backend(
    name: str,
    env_spec: EnvSpec,
    n_workers: Optional[int] = None,
    address: Optional[str] = None,
    start_method: str = "spawn",
) -> Backend:
    """A backend by name (``local`` or ``ray``); ``n_workers`` defaults to the number of cores."""
    workers = n_workers if n_workers is not None else (os.cpu_count() or 1)
    if name == "local":
        return LocalBackend(env_spec, workers, start_method)
    if name == "ray":
        return RayBackend(env_spec, workers, address)
    raise RLStructError(f"unknown ES backend {name!r}; choose one of: {', '.join(BACKENDS)}")
