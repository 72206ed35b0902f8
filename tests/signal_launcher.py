"""``python tests/signal_launcher.py SIGNAL:STEP[:STAGE[:NTH]] COMMAND ARGS...``: ``supcon COMMAND ARGS...`` that
sends itself SIGNAL right after optimizer step STEP of the NTH run of STAGE (see
:class:`supcon.engine.callbacks.SignalAt`), so that a test interrupts a real run at a known step, in a process of
its own, instead of racing a file watcher against it. Under torchrun's elastic agent it arms on the first attempt
only, so that the restarted processes run to the end."""

from __future__ import annotations

import os
import sys

from supcon.cli import main
from supcon.engine.callbacks import SignalAt

if __name__ == "__main__":
    spec, *argv = sys.argv[1:]
    first = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    sys.exit(main(argv, callbacks=[SignalAt.from_spec(spec)] if first else []))
