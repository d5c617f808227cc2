"""Runs main.py as one torchrun rank (``rank_probe.py DIR OPTIONS...``) and writes DIR/rank.RANK.pt:
the rank's moving average of the weights when training ended, and the gradient all-reduces DDP
made during each micro-batch (a communication hook counts them), for tests that must see inside
every rank. Rank 1's loss is NaN at micro-batch NAN_MICRO (rank 0's is not)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository

import torch  # noqa: E402
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

import main  # noqa: E402
import trainer  # noqa: E402

NAN_MICRO = 3  # the micro-batch whose loss is NaN on rank 1 only
REDUCES = [0]  # all-reduces so far
PER_MICRO = []  # [micro-batch index, all-reduces so far when it began]


def counting_hook(state, bucket):
    REDUCES[0] += 1
    return allreduce_hook(state, bucket)


def probe() -> None:
    """Patch DDP to count its all-reduces and the Trainer to note micro-batches and dump its average."""
    ddp_init = DistributedDataParallel.__init__
    micro_loss, fit = trainer.Trainer._micro_loss, trainer.Trainer.fit

    def init(self, *args, **kwargs):
        ddp_init(self, *args, **kwargs)
        self.register_comm_hook(None, counting_hook)

    def noted_micro_loss(self, batch, micro):
        PER_MICRO.append([micro, REDUCES[0]])
        loss = micro_loss(self, batch, micro)
        return loss * float("nan") if micro == NAN_MICRO and os.environ["RANK"] == "1" else loss

    def dumped_fit(self):
        status = fit(self)
        ends = [*PER_MICRO[1:], [None, REDUCES[0]]]  # the count when the next one began
        counts = [later[1] - now[1] for now, later in zip(PER_MICRO, ends, strict=True)]
        probe = {"ema": self.ema.module.state_dict(), "micro": [m for m, _ in PER_MICRO], "reduces": counts}
        torch.save(probe, os.path.join(sys.argv[1], f"rank.{os.environ['RANK']}.pt"))
        return status

    DistributedDataParallel.__init__ = init
    trainer.Trainer._micro_loss, trainer.Trainer.fit = noted_micro_loss, dumped_fit


if __name__ == "__main__":
    probe()
    sys.exit(main.main(sys.argv[2:]))
