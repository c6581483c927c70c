"""A pipeline at its push stage that can be SIGKILLed at any moment, for test_faults.py.

    python tests/serving/pusher.py <work dir>      (publishes into <work dir>/repo/digits)

For each line `<SavedModel dir> <seconds>` read on stdin it forks a child that runs the real push
stage on that SavedModel (test_push.push_run: the inputs laid out as the runner hands them over),
and SIGKILLs the child if it still runs after <seconds>; it answers one line, `finished <seconds>`,
`killed <seconds>` or `failed <seconds>` (push raised: its traceback is on stderr). Forking from one
process that imported TensorFlow (push's signature check needs it) costs milliseconds a trial; a
fresh process would spend seconds importing it, and be killed during the import.
"""
import os
import select
import signal
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tensorflow  # noqa: E402,F401 -- imported once here, not in every child

from tests.pipeline.test_push import push_run  # noqa: E402


def push_once(workdir: Path, saved_model: Path, seconds: float) -> str:
    pid = os.fork()
    started = time.perf_counter()  # the child's life as the parent sees it: the span a kill can land in
    if pid == 0:
        os.dup2(2, 1)  # push prints; stdout carries the answers
        try:
            push_run(workdir, saved_model)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    pidfd = os.pidfd_open(pid)
    ended, _, _ = select.select([pidfd], [], [], seconds)
    if not ended:
        os.kill(pid, signal.SIGKILL)  # still our unreaped child: the pid cannot belong to anyone else
    os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    outcome = "killed" if os.WIFSIGNALED(status) else "finished" if os.WEXITSTATUS(status) == 0 else "failed"
    return f"{outcome} {time.perf_counter() - started:.4f}"


def main() -> None:
    workdir = Path(sys.argv[1])
    for line in sys.stdin:
        saved_model, seconds = line.split()
        print(push_once(workdir, Path(saved_model), float(seconds)), flush=True)


if __name__ == "__main__":
    main()
