#!/usr/bin/env python3
"""What one durable append costs for three file shapes (docs/fjall-experiment.md).

Writes 20 KiB at the end of the data and fdatasyncs, 2,000 times per shape, in a file that is
(a) preallocated with ftruncate (sparse, as fjall's journal is), (b) zero-filled and synced first
(as main's log segments are, without their O_DIRECT), (c) growing. Two rounds; the second is the
steadier. Usage: bench/fsync-shapes.py [DIR] (DIR on the disk to measure; default the cwd).
"""
import os
import sys
import time

N = 2000
CHUNK = 20 * 1024
DIR = sys.argv[1] if len(sys.argv) > 1 else "."


def run(name, prepare):
    path = os.path.join(DIR, f"fsync-shapes-{name}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        prepare(fd)
        os.fsync(fd)
        data, times = os.urandom(CHUNK), []
        for i in range(N):
            started = time.perf_counter()
            os.pwrite(fd, data, i * CHUNK)
            os.fdatasync(fd)
            times.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        os.remove(path)
    times.sort()
    print(f"{name:9s} median {times[N // 2] * 1e6:4.0f} us  p90 {times[N * 9 // 10] * 1e6:5.0f} us")


def sparse(fd):
    os.ftruncate(fd, 64 << 20)


def zero_filled(fd):
    for _ in range(64):
        os.write(fd, bytes(1 << 20))


def growing(fd):
    pass


for _ in range(2):
    for name, prepare in (("sparse", sparse), ("zerofill", zero_filled), ("append", growing)):
        run(name, prepare)
