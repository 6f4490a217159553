"""One worker thread runs every job; lanes keep each client's calls in order and share fairly.

A lane is a training model or a sampler. Jobs of one lane run in arrival order (the SDK sends a
training client's calls one after another, so arrival order is its order); lanes take turns,
one batch each, so a second client's calls never wait behind a long queue of the first's.
Sample jobs of one sampler that are queued together run as one batched generation.

A job whose run returns a generator is resumable: each `next()` is one piece of its work (a
generation's chunk of decode steps), and between pieces it goes back to its lane's head and
its lane to the back of the line, so a long generation makes another lane's call wait for one
piece at most. The generator's return value is the job's results.

The worker sets torch's thread count on itself (torch keeps it per thread) through a
ThreadPolicy, before each job; see local_tinker/threads.py.
"""

from __future__ import annotations

import collections
import inspect
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from .threads import ThreadPolicy

# An idle worker holding a sample call waits for more to batch with it until none has come for
# SAMPLE_BATCH_GAP_S, and at most SAMPLE_BATCH_WINDOW_S. The SDK sends a step's calls one by one:
# on a busy 2-core machine they arrived over 20-75 ms, and a fixed 10 ms window split 8 calls
# into two generations run one after the other (1.3-1.9x the time of one).
SAMPLE_BATCH_GAP_S = 0.05
SAMPLE_BATCH_WINDOW_S = 0.25


@dataclass
class Job:
    lane: str
    # payloads -> one result per payload, or a generator that returns them (resumable)
    run: Callable[[list[Any]], list[Any] | Generator[None, None, list[Any]]]
    payload: Any
    on_done: Callable[[Any, BaseException | None], None]
    batchable: bool = False


@dataclass
class _Paused:
    """A resumable batch between two of its pieces."""

    batch: list[Job]
    steps: Generator[None, None, list[Any]]


class Scheduler:
    def __init__(self, threads: ThreadPolicy | None = None) -> None:
        self._lanes: collections.OrderedDict[str, collections.deque[Job | _Paused]] = \
            collections.OrderedDict()
        self._cond = threading.Condition()
        self._stopping = False
        self.threads = threads or ThreadPolicy()
        self.busy_s = 0.0  # time spent running jobs (benchmarks compare it with wall time)
        self.jobs_run = 0
        self.pieces_run = 0  # pieces of resumable jobs run (generation chunks): fairness tests
        self._thread = threading.Thread(target=self._loop, name="local-tinker-worker",
                                        daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cond:
            self._lanes.setdefault(job.lane, collections.deque()).append(job)
            self._cond.notify()

    def stop(self) -> None:
        """Finish the piece of work in progress, then end the worker (queued jobs and paused
        generations are dropped)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()

    def _next_batch(self) -> list[Job] | _Paused | None:
        with self._cond:
            while not self._stopping and not self._lanes:
                self._cond.wait()
            if self._stopping:
                return None
            lane, queue = next(iter(self._lanes.items()))
            self._lanes.move_to_end(lane)  # round robin: this lane goes last
            first = queue.popleft()
            if isinstance(first, _Paused):
                batch: list[Job] | _Paused = first
            else:
                batch = [first, *self._batch_mates(lane, queue)] if first.batchable else [first]
            if not queue:
                del self._lanes[lane]
            return batch

    def _batch_mates(self, lane: str, queue: collections.deque[Job | _Paused]) -> list[Job]:
        """More batchable jobs of `lane`, waiting for stragglers while no other lane waits
        (called holding the lock)."""
        mates: list[Job] = []
        started = last_arrival = time.monotonic()
        while True:
            while queue and isinstance(queue[0], Job) and queue[0].batchable:
                mates.append(queue.popleft())
                last_arrival = time.monotonic()
            others_waiting = any(q for name, q in self._lanes.items() if name != lane)
            remaining = min(started + SAMPLE_BATCH_WINDOW_S,
                            last_arrival + SAMPLE_BATCH_GAP_S) - time.monotonic()
            if others_waiting or remaining <= 0:
                return mates
            self._cond.wait(remaining)

    def _pause(self, paused: _Paused) -> None:
        """Back to the head of its lane, and its lane to the back of the line."""
        with self._cond:
            lane = paused.batch[0].lane
            self._lanes.setdefault(lane, collections.deque()).appendleft(paused)
            self._lanes.move_to_end(lane)

    def _loop(self) -> None:
        while (item := self._next_batch()) is not None:
            self.threads.apply()
            started = time.perf_counter()
            batch = item.batch if isinstance(item, _Paused) else item
            try:
                results = self._run_piece(item)
                outcomes = None if results is None else [
                    (job, result, None) for job, result in zip(batch, results, strict=True)]
            except BaseException as exc:  # delivered to each caller through its future
                outcomes = [(job, None, exc) for job in batch]
            self.busy_s += time.perf_counter() - started
            if outcomes is None:
                continue
            self.jobs_run += len(batch)
            for job, result, exc in outcomes:
                job.on_done(result, exc)

    def _run_piece(self, item: list[Job] | _Paused) -> list[Any] | None:
        """Run a batch, or one piece of a resumable one; its results, or None if paused."""
        if isinstance(item, _Paused):
            paused = item
        else:
            outcome = item[0].run([job.payload for job in item])
            if not inspect.isgenerator(outcome):
                return outcome
            paused = _Paused(item, outcome)
        self.pieces_run += 1
        try:
            next(paused.steps)
        except StopIteration as finished:
            return finished.value
        self._pause(paused)
        return None
