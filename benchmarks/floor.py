"""The physical floor: the benchmark's shell commands spawned at each second by a bare loop.

No scheduler, no messages, no records: sleep to the second boundary, os.posix_spawn every
job's `bash -c` (with ZCRON_JOB and ZCRON_TICK set as zcron sets them), reap, repeat. A
late loop keeps spawning every tick it owes, so nothing is skipped.

With `parked`, the floor of zcron's own design: each second's shells are spawned as soon as
the previous second is released, parked on a read of a pipe, and released at the tick by
one write each (the last 2 ms spun, as zcron's worker does). What is left is what N
shells waking at once cost on these cores.

    python3 -m benchmarks.floor JOBS OUT [parked]
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


PARK = 'read -r _ || exit 125; eval "$1"'
SPIN_S = 0.002


def parked(jobs: int, out: str) -> None:
    argv = ["/bin/bash", "-c", PARK, "bash", SHELL_LINE.format(out=out)]
    base = {"PATH": "/usr/bin:/bin", "SHELL": "/bin/bash"}
    names = [f"bench-{i:04d}" for i in range(jobs)]
    tick = int(time.time()) + 1
    while True:
        stamp, gates = f"{tick:.6f}", []
        for name in names:
            gate, gates_end = os.pipe()
            env = {**base, "ZCRON_JOB": name, "ZCRON_TICK": stamp}
            os.posix_spawn(argv[0], argv, env, file_actions=[(os.POSIX_SPAWN_DUP2, gate, 0)])
            os.close(gate)
            gates.append(gates_end)
        while (left := tick - time.time()) > SPIN_S:
            reap()
            time.sleep(min(left - SPIN_S, 0.05))
        while time.time() < tick:
            pass
        for gates_end in gates:
            os.write(gates_end, b"\n")
            os.close(gates_end)
        reap()
        tick += 1


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
    (parked if sys.argv[3:] == ["parked"] else main)(int(sys.argv[1]), sys.argv[2])
