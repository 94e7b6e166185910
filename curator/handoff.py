"""Searching threads hand the GIL to each other without sleeping.

A single-query search releases the GIL for its compiled scan (~20 us on GloVe x WordNet) and
holds it for ~6 us of Python and argument handling around it. Two threads searching side by side
overlap well, except when one comes out of its scan while the other is in its Python part: it
then sleeps in CPython's `take_gil` until the other releases the GIL, and on this VM (idle vCPUs
halt at once) waking a sleeping thread costs tens of microseconds, more than a search. That
happened to ~13% of searches (perf: 23k extra context switches a 182k-search run), and it is
what held two threads to ~1.5x one thread's searches.

So before a search's compiled call returns (still without the GIL), it looks at the other
searching threads (a slot each, in one small table per process): one that left its own compiled
call moments ago and has not entered the next is holding the GIL, or about to; the search waits
for it, spinning (a few microseconds: that thread's Python part), until it enters its next
compiled call, which means it has just released the GIL. Then the search takes a free GIL. Its
own Python then runs while the other thread scans, and the two threads fall into step.

What bounds the spinning: a thread holding the GIL is waited for from when it took it (`back`,
called from Python after the call, stamps the time) for at most `PATIENCE` times its usual Python
part (kept per slot by `enter`), and never past `LIMIT_US`: a thread that went off to do other
Python (a server thread's gRPC work) runs past its usual part and is let go, and one whose usual
part is longer than the limit is not waited for at all. At most `os.cpu_count() - 1` threads spin
at once (one core stays for the GIL's holder). The table is advice, read and written without
locks: a stale or shared slot can only make a search wait for nothing (at most the limit) or not
wait; results never depend on it.

A thread can also be out of its compiled call and not yet holding the GIL: asleep in `take_gil`,
woken but not yet running. Left alone, the thread coming out of its scan takes the free GIL
before it (it barges) and the sleeper goes back to sleep, again and again: the two threads then
made fewer searches than one (29k and 35k/s against 33k in two of three 10 s rounds). So a
thread that has not said it holds the GIL again is waited for up to `WAKE_US`, and its Python
part then as above. A thread whose such wait ran out does not wait for waking threads again for
its next `BACKOFF` searches (doubling while they keep running out: in a server, threads may
queue for the GIL behind others' gRPC work).

Why the waits are bounded by each thread's own usual part, and not by one fixed limit with a
backoff after every wait that ran out (as before): two threads could fall for seconds into a
state where both slept in every hand-over (2 threads at 0.6-1.0x one thread's searches in 2-4
of 10-14 three-second windows, the machine 20% idle): a thread that slept in `take_gil` makes
the GIL's holder sleep too when it lets go (CPython's mutex and condition around the GIL), its
Python part looks 3-4x longer (21-26 us against 6 us), the other thread's waits for it run out,
it backs off, barges, and makes the next one sleep. With patience that follows the shorter
parts and a backoff only for waking threads, the same loop had no window below 1.26x.

Measured (benchmarks/capacity.py --only embedded, GloVe x WordNet, default ef, three 10 s rounds,
other processes idle): two threads made 1.87x one thread's searches in one run (70,739 against
37,832/s; 40% of searches waited, 2.5 us on average) and 1.79x in another (rounds 1.39x, 1.87x,
1.79x), against 1.71x with the fixed limit (rounds 1.30x-1.89x) and 1.46-1.52x without waiting.
What is left: the Python part of a search takes longer when the two threads take turns on two
cores than on one (its objects' cache lines move between the cores at every turn), and how much
longer depends on where the host puts the two vCPUs (benchmarks/cores.py): 1.70-1.89x when a
line's round trip between them is ~100 ns, 1.18-1.39x when it is ~350 ns.

Must never: hold or take any lock; wait without a bound; be used where the GIL is held (it
would only burn the time the GIL's holder needs). search.py's kernels are cached with these
functions compiled in: after changing this file, remove curator/__pycache__/search.*.nb[ic]."""

import itertools
import os
import platform
import threading
import time

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

SLOTS = 16  # threads beyond this share slots: only the advice gets worse
PATIENCE = 3  # a GIL holder is waited for up to this many times its usual Python part (~6 us embedded)
LIMIT_US = 45.0  # and never longer; a thread whose usual Python part is longer is not waited for at all
WAKE_US = 150.0  # a thread woken to take the GIL takes tens of us to run on this VM
BACKOFF = 16  # searches without waiting for a waking thread after such a wait ran out (doubling, up to 1024)
MAX_BACKOFF = 1024

# The table: a row per slot, and a last row of settings.
LEFT, ENTERED, SPINNING, SKIP, MISSES, WAITS, CAUGHT, WAITED, HELD, PYTHON = range(10)  # columns of a slot's row
LIMIT, SPINNERS, USED, RATE, WAKE = range(5)  # the settings row: the limit in ticks, threads that may spin
# at once, slots handed out, the counter's ticks a millisecond, the wake limit in ticks


@intrinsic
def cycles(typingctx):
    """The CPU's cycle counter (x86: rdtsc, invariant on this machine's CPUs)."""
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(64), []),
                                            "llvm.readcyclecounter")
        return builder.call(fn, [])
    return types.int64(), codegen


def _cell(context, builder, signature, args):
    table_type = signature.args[0]
    table = context.make_array(table_type)(context, builder, args[0])
    row = context.cast(builder, args[1], signature.args[1], types.intp)
    column = context.cast(builder, args[2], signature.args[2], types.intp)
    return cgutils.get_item_pointer(context, builder, table_type, table, [row, column], wraparound=False)


@intrinsic
def load(typingctx, table, row, column):
    """table[row, column] read from memory every time (an atomic load: never hoisted out of a loop)."""
    def codegen(context, builder, signature, args):
        return builder.load_atomic(_cell(context, builder, signature, args), "acquire", 8)
    return types.int64(table, row, column), codegen


@intrinsic
def store(typingctx, table, row, column, value):
    """table[row, column] = value, seen by other threads' `load`s."""
    def codegen(context, builder, signature, args):
        value = context.cast(builder, args[3], signature.args[3], types.int64)
        builder.store_atomic(value, _cell(context, builder, signature, args), "release", 8)
        return context.get_dummy_value()
    return types.void(table, row, column, value), codegen


@intrinsic
def pause(typingctx):
    """A spin-wait hint (x86 `pause`); nothing elsewhere."""
    def codegen(context, builder, signature, args):
        if platform.machine().lower() in ("x86_64", "amd64"):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@numba.njit(cache=True, nogil=True, inline="always")
def enter(table, me):
    """Slot `me` starts a compiled call: its thread has just released the GIL. Its Python part
    (from `back` to here) goes into its usual one: an average that follows shorter parts at once
    (a quarter of the way each time) and longer ones slowly (a 64th), so a run of parts slowed
    by waits for the GIL does not make the thread look like one not worth waiting for."""
    now = cycles()
    held = load(table, me, HELD)
    if held > 0:
        usual, python = load(table, me, PYTHON), now - held
        store(table, me, PYTHON, usual + (python - usual) // (4 if python < usual else 64) if usual > 0 else python)
    store(table, me, HELD, 0)
    store(table, me, ENTERED, now)


@numba.njit(cache=True)
def back(table, me):
    """Slot `me` is back from its compiled call, holding the GIL (called from Python, after the call)."""
    store(table, me, HELD, cycles())


@numba.njit(cache=True, nogil=True, inline="always")
def patience(table, j, limit):
    """How long slot j, holding the GIL, is waited for from when it took it: 0 if not at all."""
    usual = load(table, j, PYTHON)
    return min(PATIENCE * usual, limit) if usual <= limit else 0


@numba.njit(cache=True, nogil=True)
def leave(table, me):
    """Slot `me` ends a compiled call: first wait (bounded) for a thread out of its own compiled
    call, still waking up to take the GIL or holding it in its Python part, to enter its next
    compiled call. Returns the cycles spent waiting."""
    started = cycles()
    settings = table.shape[0] - 1
    waited = 0
    skip = load(table, me, SKIP)
    if skip > 0:
        store(table, me, SKIP, skip - 1)
    limit = load(table, settings, LIMIT)
    if limit > 0:
        used = load(table, settings, USED)
        spinning, other, entered = 0, -1, 0
        for j in range(used):
            if j == me:
                continue
            spinning += load(table, j, SPINNING)
            held = load(table, j, HELD)
            if other < 0 and load(table, j, LEFT) > load(table, j, ENTERED) and (
                    (held == 0 and skip == 0) or started - held < patience(table, j, limit)):
                other, entered = j, load(table, j, ENTERED)  # out of its compiled call: waking, or in its Python part
        if other >= 0 and spinning < load(table, settings, SPINNERS):
            wake = load(table, settings, WAKE)
            held = load(table, other, HELD)
            until = held + patience(table, other, limit) if held > 0 else 0  # 0: still waking
            store(table, me, SPINNING, 1)
            now = cycles()
            while load(table, other, ENTERED) == entered:
                if until == 0:
                    held = load(table, other, HELD)
                    if held > 0:
                        until = held + patience(table, other, limit)
                    elif now - started >= wake:
                        break
                elif now >= until:
                    break
                pause()
                now = cycles()
            store(table, me, SPINNING, 0)
            waited = now - started
            store(table, me, WAITS, load(table, me, WAITS) + 1)
            store(table, me, WAITED, load(table, me, WAITED) + waited)
            if load(table, other, ENTERED) != entered:
                store(table, me, CAUGHT, load(table, me, CAUGHT) + 1)
                store(table, me, MISSES, 0)
            elif until == 0:  # it did not take the GIL in time: leave waking threads be for a while
                misses = min(max(2 * load(table, me, MISSES), BACKOFF), MAX_BACKOFF)
                store(table, me, MISSES, misses)
                store(table, me, SKIP, misses)
    store(table, me, LEFT, cycles())
    return waited


@numba.njit(cache=True)
def _read_cycles():
    return cycles()


def _ticks_per_us() -> float:
    """The cycle counter's rate, against the clock over ~2 ms (0 where there is no counter)."""
    c0, t0 = _read_cycles(), time.perf_counter_ns()
    while time.perf_counter_ns() - t0 < 2_000_000:
        pass
    c1, t1 = _read_cycles(), time.perf_counter_ns()
    return max(c1 - c0, 0) * 1000.0 / (t1 - t0)


def table(limit_us: float = LIMIT_US, spinners: int | None = None, wake_us: float = WAKE_US) -> np.ndarray:
    """A new table (the process's is `TABLE`); limit_us 0 turns waiting off."""
    out = np.zeros((SLOTS + 1, 10), np.int64)
    rate = _ticks_per_us()
    out[SLOTS, LIMIT] = int(limit_us * rate)
    out[SLOTS, WAKE] = int(wake_us * rate)
    out[SLOTS, RATE] = int(rate * 1000)
    out[SLOTS, SPINNERS] = max((os.cpu_count() or 1) - 1, 0) if spinners is None else spinners
    return out


TABLE = table()
_slots = itertools.count()
_local = threading.local()


def counts(of: np.ndarray | None = None) -> dict:
    """What the table's threads did so far: waits, waits that ended with the other thread in its
    compiled call (caught), and the mean wait in microseconds."""
    of = TABLE if of is None else of
    waits, caught, waited = (int(of[:-1, c].sum()) for c in (WAITS, CAUGHT, WAITED))
    rate = max(of[-1, RATE], 1) / 1000
    return {"waits": waits, "caught": caught, "mean_wait_us": waited / waits / rate if waits else 0.0}


def reset_counts(of: np.ndarray | None = None) -> None:
    of = TABLE if of is None else of
    of[:-1, WAITS:HELD] = 0


def slot() -> int:
    """The calling thread's slot in the table."""
    try:
        return _local.slot
    except AttributeError:
        _local.slot = n = next(_slots) % SLOTS
        TABLE[SLOTS, USED] = max(TABLE[SLOTS, USED], n + 1)
        return n
