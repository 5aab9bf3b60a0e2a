"""The thread pool under churn: thousands of short jobs whose part count alternates (1 part,
then 2, ...) must each be computed exactly once and completely. This is the pattern that
exposed a claim race (a stale worker re-opening a part of a newer job): results are checked
after every call, on the real kernel path."""
import threading

import numpy as np

from ryzjupyter import _native


def _jobs(rng):
    # rows 1 and 5 give one part (grain 16), 17 and 300 give two parts
    xs = [rng.standard_normal((m, 64)).astype(np.float32) for m in (1, 17, 5, 300, 16, 33)]
    refs = []
    for x in xs:
        q = np.empty(x.shape, np.int8)
        s = np.empty(x.shape[0], np.float32)
        _native.quantize_rows_i8(q, s, x)
        refs.append(q)
    return xs, refs


def test_alternating_part_counts_are_computed_exactly_once(rng):
    xs, refs = _jobs(rng)
    for it in range(20000):
        x = xs[it % len(xs)]
        q = np.full(x.shape, 99, np.int8)       # 99 is never a result: a skipped part shows
        s = np.empty(x.shape[0], np.float32)
        _native.quantize_rows_i8(q, s, x)
        assert np.array_equal(q, refs[it % len(xs)]), f"call {it}"


def test_concurrent_callers_share_the_pool(rng):
    """Python threads that release the GIL may call kernels together: jobs are serialised."""
    xs, refs = _jobs(rng)
    errors = []

    def worker(seed):
        for it in range(2000):
            k = (it + seed) % len(xs)
            q = np.empty(xs[k].shape, np.int8)
            s = np.empty(xs[k].shape[0], np.float32)
            _native.quantize_rows_i8(q, s, xs[k])
            if not np.array_equal(q, refs[k]):
                errors.append((seed, it))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
