"""Independent jobs (tokenizer arms, sweep points) in worker processes that share the machine's cores.

Meant for machines whose cores one run cannot keep busy. On this project's 2-core machine it does not pay for the
small-preset tokenizer: the benchmark's bare step suggested 1.3x (two one-thread processes at 376 ms per step each
against 244 ms for one two-thread process), but in the real training loop two one-thread runs took 447 ms per step
each against 217 ms for one two-thread run, 0.97x (results/bench/parallel.md). So ``train.workers`` defaults to 1. Use::

    fits = run_jobs(fit_tokenizer, {arm: dict(tok_cfg=cfg, train_cfg=train, ...) for arm, cfg in arms.items()},
                    workers=2)

Each worker is a fresh (spawned) Python process with ``threads`` torch threads; a job is ``fn(**kwargs)`` and its
return value comes back pickled. ``fn`` must be importable by name (a module-level function such as
``tokenset.train.fit_tokenizer``), and the arguments and results picklable (tensors, configs, modules). Results do
not depend on the scheduling: every job seeds itself (``fit_tokenizer`` does) and runs with the same thread count
whichever worker takes it. They do depend on the thread count, like any float reduction: ``workers=1`` runs the
jobs here, one after another, with this process's threads, exactly as a plain loop would.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

__all__ = ["JobError", "job_threads", "run_jobs"]


class JobError(RuntimeError):
    """A job raised, or its worker process died; the message names the job."""


def job_threads(workers: int, threads: int = 0) -> int:
    """Torch threads per job: ``threads`` if given, else this process's thread count split over ``workers`` (>= 1)."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers: expected an integer >= 1, got {workers!r}")
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise ValueError(f"threads: expected an integer >= 0 (0: split this process's threads), got {threads!r}")
    return threads or max(1, torch.get_num_threads() // workers)


def _exit_with_parent() -> None:
    """Block until the parent process is gone, then end this worker (a killed notebook leaves no orphans)."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()
        os._exit(1)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    threading.Thread(target=_exit_with_parent, daemon=True, name="exit-with-parent").start()


def _call(fn: Callable[..., Any], kwargs: dict[str, Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    return fn(**kwargs), time.perf_counter() - t0


def run_jobs(fn: Callable[..., Any], jobs: Mapping[Hashable, Mapping[str, Any]], workers: int = 1,
             threads: int = 0, verbose: bool = True) -> dict[Hashable, Any]:
    """``{key: fn(**kwargs)}`` for every ``(key, kwargs)`` in ``jobs``, in the order of ``jobs``.

    workers: processes that run jobs at once (1: here, one after another, with this process's threads; ``threads``
    is then not used). threads: torch threads per worker (0: this process's threads divided by ``workers``); every
    job gets that many, however many jobs there are. Jobs start in the order given (put the longest first for the
    best packing). The first failure stops the other workers and raises ``JobError`` naming the job, chained to the
    original exception. ``verbose`` prints one line per finished job.
    """
    if not callable(fn):
        raise ValueError(f"fn: expected a callable, got {type(fn).__name__}")
    if not isinstance(jobs, Mapping) or not all(isinstance(kw, Mapping) for kw in jobs.values()):
        raise ValueError("jobs: expected a mapping {key: {argument name: value}}")
    per_job = job_threads(workers, threads)
    if workers == 1:
        out = {}
        for key, kwargs in jobs.items():
            try:
                out[key], seconds = _call(fn, dict(kwargs))
            except Exception as exc:
                raise JobError(f"job {key!r} failed: {type(exc).__name__}: {exc}") from exc
            if verbose:
                print(f"job {key!r} done in {seconds:.1f} s", flush=True)
        return out
    try:
        if getattr(fn, "__module__", None) == "__main__":  # a spawned worker has another __main__
            raise pickle.PicklingError("defined in __main__")
        pickle.dumps(fn)  # functions pickle by name: this checks that a worker can import it
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise ValueError(f"fn: {getattr(fn, '__qualname__', fn)!r} cannot be sent to a worker process ({exc}); "
                         "pass a module-level function of an importable module (e.g. "
                         "tokenset.train.fit_tokenizer)") from None
    done: dict[Hashable, Any] = {}
    context = multiprocessing.get_context("spawn")  # a fork would inherit this process's thread pools
    pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context, initializer=_init_worker,
                               initargs=(per_job,))
    try:
        futures: dict[Future, Hashable] = {pool.submit(_call, fn, dict(kw)): key for key, kw in jobs.items()}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in finished:
                key = futures[future]
                exc = future.exception()
                if exc is not None:
                    what = "its worker process died (out of memory or killed?)" \
                        if isinstance(exc, BrokenProcessPool) else f"{type(exc).__name__}: {exc}"
                    raise JobError(f"job {key!r} failed: {what}") from exc
                done[key], seconds = future.result()
                if verbose:
                    print(f"job {key!r} done in {seconds:.1f} s ({len(done)}/{len(jobs)}, {workers} workers x "
                          f"{per_job} threads)", flush=True)
    except BaseException:  # a failed job or an interrupt: stop the others now instead of waiting for them
        processes = list((getattr(pool, "_processes", None) or {}).values())  # no public API before Python 3.14
        for process in processes:
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return {key: done[key] for key in jobs}
