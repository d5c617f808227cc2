"""Runs one torchrun rank's command (``rank_exit.py DIR COMMAND...``) and writes its exit status
to DIR/exit.RANK, for tests that must see how every rank ended (torchrun does not say)."""
import os
import signal
import subprocess
import sys


def main() -> int:
    folder, command = sys.argv[1], sys.argv[2:]
    child = subprocess.Popen(command)
    # a signal torchrun forwards to this process goes on to the rank (one sent to the whole
    # process group reaches the rank directly as well: the rank's handler takes both)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, lambda number, frame: child.send_signal(number))
    status = child.wait()
    with open(os.path.join(folder, f"exit.{os.environ['RANK']}"), "w") as f:
        f.write(str(status))
    return status if status >= 0 else 128 - status


if __name__ == "__main__":
    sys.exit(main())
