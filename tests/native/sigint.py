"""A real SIGINT sent to this process while a block runs, that cannot reach pytest itself.

The timer starts inside the block, so a signal that arrives early (a loaded machine can hold the
main thread in `Timer.start()` past the delay) is raised there, where the caller's
`pytest.raises(KeyboardInterrupt)` catches it; one that arrives after the block has ended is
ignored (Python's default handler would raise KeyboardInterrupt in whatever pytest runs next).
"""
import contextlib
import os
import signal
import threading
import time


@contextlib.contextmanager
def sigint_after(delay: float):
    """Send SIGINT `delay` seconds into the block; yields a list that gets the send time."""
    armed, sent = [True], []

    def handler(signum, frame):
        if armed[0]:
            raise KeyboardInterrupt

    def fire():
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, handler)
    timer = threading.Timer(delay, fire)
    try:
        timer.start()
        yield sent
    finally:
        armed[0] = False
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
