"""Prefetcher: iterate a generator in a daemon thread, a bounded number of items ahead of the
consumer (decoding while the networks run); an exception in the thread is raised in the consumer."""
import queue
import threading

_DONE = object()


class _Failure:
    def __init__(self, exc):
        self.exc = exc


class Prefetcher:
    """Iterates `iterable` in a daemon thread, at most `depth` items ahead of the consumer."""

    def __init__(self, iterable, depth=2):
        self._queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iterable,), daemon=True)
        self._thread.start()

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def _run(self, iterable):
        try:
            for item in iterable:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as exc:  # handed to the consumer
            self._put(_Failure(exc))
        finally:  # a generator stopped early releases what it holds (a decoder process) now
            close = getattr(iterable, "close", None)
            if close is not None:
                close()

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item

    def close(self):
        self._stop.set()
        self._thread.join()
