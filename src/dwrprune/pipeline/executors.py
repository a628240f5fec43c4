"""Where independent jobs run: in this process (``local``, the default), in ``--jobs N``
worker processes side by side on this machine (``pool``: several small fine-tunes sharing one
GPU, or the CPU's cores), or on a Ray cluster.

Sample collection and the benchmark both describe their work as a small graph of jobs (a
chain step needs its parent's fine-tuned model; everything else is independent) and hand it
to :func:`run_graph`.  The driver, i.e. the process that called ``run_graph``, submits every
job whose prerequisite is done, and passes each finished result to a callback *in the
driver*.  That callback is where results are written (the run's SQLite store, the benchmark
CSV), so a driver restarted after a crash skips whatever is written, whichever executor ran
it, and workers never need the run folder.

Jobs are plain calls ``fn(*args)`` whose arguments and results are picklable.  Models travel
as :class:`PortableModel`, which pickles to a dwrprune checkpoint (spec + state_dict) rather
than a pickled module.  The local executor never pickles anything, so the single-machine path
costs nothing extra and needs no Ray.

Failures: on Ray, a job whose worker process dies (killed, out of memory, node lost) is retried
up to ``retries`` times.  A job that raises, or keeps dying, is reported as a :class:`Failure`
with its error; the other jobs (except those that need its result) still run.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from ..errors import DwrpruneError
from ..registry import Registry


# ---------------------------------------------------------------------------- portable models
class PortableModel:
    """A model that pickles as a portable checkpoint (spec + state_dict), not as code.

    In-process (local executor) it is just a reference; across processes the receiver
    rebuilds it from the registered constructor and the spec, so it needs the model's
    registry entry, not the sender's classes.
    """

    def __init__(self, model: nn.Module):
        if getattr(model, "dwrprune_spec", None) is None:
            raise DwrpruneError("a model sent to a worker needs a dwrprune spec "
                                "(load it with dwrprune.load or set model.dwrprune_spec)")
        self.model = model

    def __getstate__(self) -> dict:
        from ..io.files import model_payload

        buf = io.BytesIO()
        torch.save(model_payload(self.model, self.model.dwrprune_spec), buf)
        return {"checkpoint": buf.getvalue(), "training": self.model.training}

    def __setstate__(self, state: dict) -> None:
        from ..checkpoint import build_from_spec, load_state_dict_checked

        obj = torch.load(io.BytesIO(state["checkpoint"]), weights_only=True)
        model = build_from_spec(obj["spec"])
        load_state_dict_checked(model, obj["state_dict"], "a portable model")
        model.dwrprune_spec = obj["spec"]
        self.model = model.train(state["training"])


def check_portable(model: nn.Module) -> None:
    """Fail early, in the driver, if a model cannot be rebuilt in a worker."""
    import pickle

    try:
        pickle.loads(pickle.dumps(PortableModel(model)))
    except DwrpruneError as e:
        raise DwrpruneError(f"this model cannot be sent to Ray workers: {e}") from None
    except Exception as e:  # noqa: BLE001 - user constructors may raise anything
        raise DwrpruneError(
            f"this model cannot be rebuilt from its spec in a worker ({type(e).__name__}: "
            f"{e}); register its constructor with dwrprune.models.register_model in a module "
            "the workers import, or use the local executor") from None


# ---------------------------------------------------------------------------- executors
@dataclass(frozen=True)
class Resources:
    """What one job needs; Ray schedules by it, the local executor ignores it."""

    cpus: float = 1.0
    gpus: float = 0.0


@dataclass
class Failure:
    key: str
    error: str


@dataclass(eq=False)  # hashed by identity: handles key the driver's table of running jobs
class _LocalHandle:
    fn: Callable
    args: tuple


class Executor(Protocol):
    name: str

    def submit(self, fn: Callable, args: tuple, resources: Resources) -> Any: ...

    def wait_one(self, handles: list) -> tuple[Any, Any, BaseException | None]:
        """Block until one of ``handles`` is finished: (handle, result, error)."""

    def close(self) -> None: ...


EXECUTORS: Registry = Registry("executor")


@EXECUTORS.register
class LocalExecutor:
    """Runs jobs one at a time in this process, in submission order."""

    name = "local"

    @classmethod
    def from_context(cls, address: str | None = None, **_) -> LocalExecutor:
        if address:
            raise DwrpruneError("--ray-address needs --executor ray")
        return cls()

    def submit(self, fn: Callable, args: tuple, resources: Resources) -> _LocalHandle:
        return _LocalHandle(fn, args)

    def wait_one(self, handles: list) -> tuple[Any, Any, BaseException | None]:
        h = handles[0]
        try:
            return h, h.fn(*h.args), None
        except Exception as e:  # noqa: BLE001 - reported as a Failure by run_graph
            return h, None, e

    def close(self) -> None:
        pass


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


@EXECUTORS.register
class PoolExecutor:
    """Runs up to ``jobs`` jobs side by side, each in a worker process on this machine (what
    ``--jobs N`` selects).  On a GPU, several small fine-tunes share it, each its own CUDA
    context; on the CPU the cores are split between the workers.  Workers start fresh
    (spawn) and each job seeds its own randomness, so the rows are those of a serial run."""

    name = "pool"

    @classmethod
    def from_context(cls, address: str | None = None, jobs: int = 2, **_) -> PoolExecutor:
        if address:
            raise DwrpruneError("--ray-address needs --executor ray")
        return cls(jobs)

    def __init__(self, jobs: int):
        import concurrent.futures as cf
        import multiprocessing as mp

        self.cf = cf
        self.pool = cf.ProcessPoolExecutor(
            jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker,
            initargs=(max(1, torch.get_num_threads() // jobs),))

    def submit(self, fn: Callable, args: tuple, resources: Resources):
        return self.pool.submit(_call, fn, *args)

    def wait_one(self, handles: list) -> tuple[Any, Any, BaseException | None]:
        done, _ = self.cf.wait(handles, return_when=self.cf.FIRST_COMPLETED)
        h = next(h for h in handles if h in done)  # the earliest submitted of those done
        error = h.exception()
        return h, None if error is not None else h.result(), error

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def check_jobs(jobs: int) -> None:
    """``--jobs``: at least 1, and at most one per CPU core (each worker needs a core to feed
    its device), or one error line."""
    cores = os.cpu_count() or 1
    if not isinstance(jobs, int) or isinstance(jobs, bool) or not 1 <= jobs <= cores:
        raise DwrpruneError(f"--jobs must be a whole number from 1 to {cores} (this machine's "
                            f"CPU cores: each job side by side needs one), got {jobs!r}")


def _is_loopback(address: str) -> bool:
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _call(fn, *args):
    return fn(*args)


@EXECUTORS.register
class RayExecutor:
    """Runs jobs as Ray tasks: ``address`` of a running cluster (``ray start --head``), or
    None for a local Ray instance started here (and stopped by :meth:`close`).
    ``py_modules``: modules outside installed packages that the jobs' functions live in
    (the benchmarks' ``dwrbench``), shipped to the workers (Ray's ``runtime_env``)."""

    name = "ray"

    @classmethod
    def from_context(cls, address: str | None = None, retries: int = 2, py_modules=None,
                     **_) -> RayExecutor:
        return cls(address, retries, py_modules=py_modules)

    def __init__(self, address: str | None = None, retries: int = 2,
                 num_cpus: int | None = None, py_modules: list | None = None):
        try:
            import ray
        except ImportError:
            raise DwrpruneError("the ray executor needs Ray: pip install 'dwrprune[ray]'") \
                from None
        self.ray, self.retries = ray, retries
        self._started = False
        if not ray.is_initialized():
            kwargs: dict = {"include_dashboard": False, "logging_level": "WARNING",
                            "log_to_driver": True}
            if py_modules:
                kwargs["runtime_env"] = {"py_modules": list(py_modules)}
            if address is None:  # a new instance here, even if a cluster runs on this machine
                kwargs["num_cpus"] = num_cpus or os.cpu_count()
            elif _is_loopback(address):  # a cluster bound to loopback: join it as 127.0.0.1,
                kwargs["_node_ip_address"] = "127.0.0.1"  # not as this host's network IP
            try:
                ray.init(address=address or "local", **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                hint = ("; if the cluster uses Ray's token authentication, set "
                        "RAY_AUTH_MODE=token (and RAY_AUTH_TOKEN or ~/.ray/auth_token) here"
                        if address else "")
                raise DwrpruneError(f"cannot connect to Ray at {address!r}: {e}{hint}") \
                    from None
            self._started = True
        self._shared: dict[int, tuple[Any, Any]] = {}
        self._remote = ray.remote(_call)

    def _ref(self, obj):
        """Large shared callables (a collection's original model) go to the object store
        once, not once per job."""
        key = id(obj)
        if key not in self._shared:
            self._shared[key] = (obj, self.ray.put(obj))
        return self._shared[key][1]

    def submit(self, fn: Callable, args: tuple, resources: Resources):
        return self._remote.options(num_cpus=resources.cpus, num_gpus=resources.gpus,
                                    max_retries=self.retries, retry_exceptions=False
                                    ).remote(self._ref(fn), *args)

    def wait_one(self, handles: list) -> tuple[Any, Any, BaseException | None]:
        ready, _ = self.ray.wait(handles, num_returns=1)
        h = ready[0]
        try:
            return h, self.ray.get(h), None
        except self.ray.exceptions.RayTaskError as e:  # the job raised: unwrap its cause
            return h, None, e.cause if getattr(e, "cause", None) is not None else e
        except self.ray.exceptions.RayError as e:  # the worker died, retries exhausted
            return h, None, e

    def close(self) -> None:
        self._shared.clear()
        if self._started:
            self.ray.shutdown()
            self._started = False


def create_executor(name: str = "local", address: str | None = None,
                    retries: int = 2, py_modules: list | None = None,
                    jobs: int = 1) -> Executor:
    """A registered executor: ``local``, or with ``jobs`` above 1 ``pool`` (that many
    worker processes here), or ``ray`` (``address``: a running cluster; None: start one
    here; ``py_modules``: see :class:`RayExecutor`)."""
    check_jobs(jobs)
    if name == "local" and jobs > 1:
        name = "pool"
    return EXECUTORS.create(name, address=address, retries=retries, py_modules=py_modules,
                            jobs=jobs)


# ---------------------------------------------------------------------------- the job graph
@dataclass
class Node:
    """One job: ``start()`` returns (fn, args) when the job is submitted (after ``after``
    is done, so it can read what that job wrote), ``done(result)`` runs in the driver."""

    key: str
    start: Callable[[], tuple[Callable, tuple]]
    done: Callable[[Any], None]
    after: str | None = None
    resources: Resources = field(default_factory=Resources)


def run_graph(nodes: list[Node], executor: Executor, finished: set[str] | None = None,
              on_failure: Callable[[Failure], None] | None = None) -> list[Failure]:
    """Run ``nodes`` (skipping keys in ``finished``) on ``executor``; returns the failures,
    including jobs skipped because the job they need failed."""
    finished = set(finished or ())
    pending = [n for n in nodes if n.key not in finished]
    known = {n.key for n in nodes} | finished
    for n in pending:
        if n.after is not None and n.after not in known:
            raise ValueError(f"job {n.key!r} waits for unknown job {n.after!r}")
    failures: list[Failure] = []
    failed: set[str] = set()
    running: dict[Any, Node] = {}

    def report(f: Failure) -> None:
        failures.append(f)
        failed.add(f.key)
        if on_failure is not None:
            on_failure(f)

    def submit_ready() -> None:
        for n in list(pending):
            if n.after is not None and n.after in failed:
                pending.remove(n)
                report(Failure(n.key, f"not run: it needs {n.after!r}, which failed"))
            elif n.after is None or n.after in finished:
                pending.remove(n)
                fn, args = n.start()
                running[executor.submit(fn, args, n.resources)] = n

    submit_ready()
    while running:
        handle, result, error = executor.wait_one(list(running))
        node = running.pop(handle)
        if error is None:
            node.done(result)
            finished.add(node.key)
        else:
            report(Failure(node.key, f"{type(error).__name__}: {error}".strip()))
        submit_ready()
    return failures


def raise_failures(failures: list[Failure], what: str, where: str) -> None:
    if failures:
        lines = "; ".join(f"{f.key}: {f.error.splitlines()[0][:200]}" for f in failures)
        raise DwrpruneError(f"{len(failures)} {what} failed ({lines}); everything that "
                            f"finished is kept in {where}, and running the same command "
                            "again retries only the missing ones")
