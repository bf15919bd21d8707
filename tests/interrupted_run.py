"""`python tests/interrupted_run.py --model=... [--key=value ...]`: run_talkingface.py with the
reduced-width networks of tests/narrow_networks.py, for the plumbing tests' child processes (the
interrupted-run tests, and the ranks of the torchrun tests): a narrow step and checkpoint take a
fraction of the official ones' time. With PAUSE_AFTER_CHECKPOINT=k in the environment the run
stops moving right after checkpoint k is written, so that the test can kill -9 it exactly there."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import narrow_networks  # noqa: E402
from talkingface.trainer.trainer import Trainer  # noqa: E402

narrow_networks.install()

PAUSE_AT = int(os.environ.get("PAUSE_AFTER_CHECKPOINT", "0"))

if PAUSE_AT:
    save_checkpoint = Trainer.save_checkpoint

    def save_checkpoint_then_pause(self):
        save_checkpoint(self)
        while self.global_step == PAUSE_AT:
            time.sleep(1)            # until the test's SIGKILL

    Trainer.save_checkpoint = save_checkpoint_then_pause

if __name__ == "__main__":
    from run_talkingface import main
    sys.exit(main(sys.argv[1:]))
