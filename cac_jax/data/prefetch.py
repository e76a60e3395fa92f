"""The one prefetcher: batches of a step-indexed source computed ahead in a background thread.

`Prefetched(make)` is itself a step-indexed stream: `p(step)` returns `make(step)` and starts
`make(step + 1 .. step + depth)` in the background, so a loop that asks for consecutive steps
finds each batch ready. A step asked out of order (first call, resume) is computed directly, so
the batches are exactly `make`'s whatever the timing: `make` must be a pure function of the
step (the samplers' and synthetic batches are) and safe to call from two threads.
`PrefetchIterator` walks it from a start step, for code that wants an iterator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import concurrent.futures
from typing import Any


class Prefetched:
  """`make(step)` with steps `step + 1 .. step + depth` (below `stop`) prefetched in a thread.

  An exception raised by `make` is raised by the call that asks for that step. `close()`
  cancels pending work and joins the thread; a later call starts a new one (one set of
  streams can feed several runs, e.g. both adapted variants of the experiment).
  """

  def __init__(self, make: Callable[[int], Any], depth: int = 2, stop: int | None = None):
    self._make, self._depth, self._stop = make, max(int(depth), 1), stop
    self._pool: concurrent.futures.ThreadPoolExecutor | None = None
    self._futures: dict[int, concurrent.futures.Future] = {}

  def __call__(self, step: int) -> Any:
    step = int(step)
    future = self._futures.pop(step, None)
    for s in list(self._futures):
      if not step < s <= step + self._depth:
        self._futures.pop(s).cancel()
    if self._pool is None:
      self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cac_jax_prefetch")
    for s in range(step + 1, step + 1 + self._depth):
      if s not in self._futures and (self._stop is None or s < self._stop):
        self._futures[s] = self._pool.submit(self._make, s)
    return future.result() if future is not None else self._make(step)

  def close(self):
    """Cancel prefetched work and join the thread. Idempotent."""
    if self._pool is not None:
      self._pool.shutdown(wait=True, cancel_futures=True)
    self._pool, self._futures = None, {}


class PrefetchIterator(Iterator[Any]):
  """Iterator over `make(i)` for i = start, start + 1, ... (< stop), prefetched (`Prefetched`).

  Usable as a context manager; after `close()`, an exhausted range or an error raised by `make`
  (re-raised by `next()`), it is closed and yields nothing more.
  """

  def __init__(
    self, make: Callable[[int], Any], start: int = 0, depth: int = 2, stop: int | None = None
  ):
    self._prefetched = Prefetched(make, depth, stop)
    self._next, self._stop, self._closed = int(start), stop, False

  def __next__(self) -> Any:
    if self._closed or (self._stop is not None and self._next >= self._stop):
      self.close()
      raise StopIteration
    try:
      batch = self._prefetched(self._next)
    except BaseException:
      self.close()
      raise
    self._next += 1
    return batch

  def close(self):
    """Stop the background thread and drop prefetched batches. Idempotent."""
    self._closed = True
    self._prefetched.close()

  @property
  def alive(self) -> bool:
    return not self._closed

  def __enter__(self) -> PrefetchIterator:
    return self

  def __exit__(self, *exc):
    self.close()
