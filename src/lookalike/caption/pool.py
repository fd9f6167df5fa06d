"""The request pool: `caption.concurrency` workers taking photos off a queue, and what Ctrl-C does to them.

Every request costs money, so Ctrl-C is handled here instead of being left to KeyboardInterrupt (which
would let a thread pool drain its whole queue before the program could stop):

    first Ctrl-C    nothing new is sent: photos still queued are never started and the stop event is
                    set (workers check it before every ask and re-ask, the HTTP client before every
                    retry); the requests in flight are waited for, since they are paid for, and every
                    answer is handed on to be stored
    second Ctrl-C   the requests still in flight are abandoned (the workers are daemon threads)

The signal handler only counts presses and sets the event; results are handed on in the calling
thread, between two looks at the count, so a record is never half written when the run stops.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1  # how often the calling thread looks at the Ctrl-C count while it waits for results


@dataclass
class Presses:
    """Ctrl-C presses seen while the pool ran: 0 ran to the end, 1 stopped sending, 2 abandoned the rest."""

    count: int = 0
    abandoned: int = 0  # workers still busy with a request when the second press came


def run_pool(work: Callable, items: Iterable, workers: int, stop: threading.Event,
             on_result: Callable[[object, object, BaseException | None], None]) -> Presses:
    """Call `work(item)` for each item on `workers` daemon threads, until all are done or `stop` is set.

    `on_result(item, value, error)` runs in the calling thread for every item a worker finished
    (`error`: what `work` raised, else None). Items not started when `stop` is set are never started.
    `stop` is set when this returns, so a worker left behind starts nothing new.
    """
    queued: queue.SimpleQueue = queue.SimpleQueue()
    for item in items:
        queued.put(item)
    finished: queue.SimpleQueue = queue.SimpleQueue()

    def worker() -> None:
        while not stop.is_set():
            try:
                item = queued.get_nowait()
            except queue.Empty:
                return
            try:
                finished.put((item, work(item), None))
            except BaseException as e:  # noqa: BLE001  the calling thread decides what an error means
                finished.put((item, None, e))

    threads = [threading.Thread(target=worker, name=f"caption-{i}", daemon=True) for i in range(max(1, workers))]
    try:
        with _ctrl_c(stop) as presses:
            for t in threads:
                t.start()
            _collect(threads, finished, presses, on_result)
    finally:
        stop.set()
    if presses.count >= 2:
        presses.abandoned = sum(t.is_alive() for t in threads)
    return presses


def _collect(threads: list[threading.Thread], finished: queue.SimpleQueue, presses: Presses, on_result) -> None:
    """Hand on results until every worker is done, or until a second Ctrl-C."""
    warned = False
    while presses.count < 2:
        if presses.count == 1 and not warned:
            warned = True
            busy = sum(t.is_alive() for t in threads)
            if busy:
                log.warning("Ctrl-C: nothing more is sent; waiting for the %d request(s) in flight, which are "
                            "paid for (Ctrl-C again abandons them)", busy)
        try:
            item, value, error = finished.get(timeout=POLL_SECONDS)
        except queue.Empty:
            if not any(t.is_alive() for t in threads) and finished.empty():
                return  # every worker has stopped and everything it finished was handed on
            continue
        on_result(item, value, error)


@contextmanager
def _ctrl_c(stop: threading.Event) -> Iterator[Presses]:
    """While inside: Ctrl-C counts a press and sets `stop` instead of raising KeyboardInterrupt."""
    presses = Presses()
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield presses  # signals reach only the main thread; an ignored Ctrl-C stays ignored
        return

    def on_sigint(signum, frame) -> None:
        presses.count += 1
        if presses.count == 1:  # only once: a nested second press must not wait on the event's lock
            stop.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield presses
    finally:
        signal.signal(signal.SIGINT, previous)
