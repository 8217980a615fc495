"""The physical floor: the benchmark's shell commands spawned at each second by a bare loop.

No scheduler, no messages, no records: sleep to the second boundary, os.posix_spawn every
job's `bash -c` (with ZCRON_JOB and ZCRON_TICK set as zcron sets them), reap, repeat. A
late loop keeps spawning every tick it owes, so nothing is skipped.

    python3 -m benchmarks.floor JOBS OUT
"""

from __future__ import annotations

import os
import sys
import time

from benchmarks.common import SHELL_LINE


def reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def main(jobs: int, out: str) -> None:
    line = SHELL_LINE.format(out=out)
    argv = ["/bin/bash", "-c", line]
    base = {"PATH": "/usr/bin:/bin", "SHELL": "/bin/bash"}
    names = [f"bench-{i:04d}" for i in range(jobs)]
    tick = int(time.time()) + 1
    while True:
        while (left := tick - time.time()) > 0:
            reap()
            time.sleep(min(left, 0.05))
        stamp = f"{tick:.6f}"
        for name in names:
            os.posix_spawn(argv[0], argv, {**base, "ZCRON_JOB": name, "ZCRON_TICK": stamp})
        reap()
        tick += 1


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
