#!/usr/bin/env python3
"""Why a store batch writes its payloads on several threads (docs/BENCHMARKS.md, "Join").

Writes 48 files of 1.28 MB (about the genesis's expert payloads), each written and fsynced,
first one after another, then on 4 and 8 threads; five rounds each, in a temporary directory
under DIR (default: the current directory, so that it is the disk a data directory is on).

  python3 scripts/bench-fsync.py [DIR]
"""

import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

FILES, SIZE, ROUNDS = 48, 1_280_000, 5


def write(directory, i, data):
    fd = os.open(os.path.join(directory, str(i)), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def round_of(base, threads, data):
    directory = tempfile.mkdtemp(dir=base)
    try:
        start = time.perf_counter()
        if threads == 1:
            for i in range(FILES):
                write(directory, i, data[i])
        else:
            def worker(k):
                for i in range(k, FILES, threads):
                    write(directory, i, data[i])
            workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
        return time.perf_counter() - start
    finally:
        shutil.rmtree(directory)


def main():
    base = sys.argv[1] if len(sys.argv) > 1 else "."
    data = [os.urandom(SIZE) for _ in range(FILES)]
    mb = FILES * SIZE / 1e6
    for threads in (1, 4, 8):
        runs = sorted(round_of(base, threads, data) for _ in range(ROUNDS))
        median = statistics.median(runs)
        print(f"{FILES} files ({mb:.1f} MB), {threads} thread(s): best {runs[0]:.3f} s, "
              f"median {median:.3f} s ({mb / median:.0f} MB/s)")


if __name__ == "__main__":
    main()
