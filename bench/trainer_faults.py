"""Page faults and system time of one Trainer stepping alone, as `ebsparse train` runs it: the trainers
of bench/test_train_iteration.py, a few warm-up steps, then timed `train_step`s with the process's
minor page faults and system CPU time per step (getrusage).

Why alone: interleaved with other trainers (as the bench rows are) the heap stays large and hides the
faults a single run takes when glibc returns freed activation memory to the kernel. Run it once with
``EBSPARSE_KEEP_FREED_MEMORY=0`` (glibc's policy) and once without (ebsparse/diffusion/host_memory.py),
each in its own process, alternating a few times: the policy cannot be undone inside a process.

Run: ``python -m bench.trainer_faults [--family digits] [--variant rigl-0.75] [--steps 40]``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time

import torch

from bench import settings
from bench.test_train_iteration import VARIANTS, _trainer

WARMUP = 5


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="digits", choices=sorted(VARIANTS))
    parser.add_argument("--variant", default="rigl-0.75")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args(argv)
    if args.variant not in VARIANTS[args.family]:
        parser.error(f"--variant: expected one of {VARIANTS[args.family]}")
    torch.set_num_threads(settings.threads())
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(args.family, args.variant, tmp)
        for _ in range(WARMUP):
            trainer.train_step()
        before = resource.getrusage(resource.RUSAGE_SELF)
        seconds, cpu_seconds = [], []
        for _ in range(args.steps):
            start, cpu_start = time.perf_counter(), time.process_time()
            trainer.train_step()
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - cpu_start)
        after = resource.getrusage(resource.RUSAGE_SELF)
    n = args.steps
    print(f"{args.family} {args.variant}: step min {1e3 * min(seconds):.1f} ms, median "
          f"{1e3 * statistics.median(seconds):.1f} ms; CPU time min {1e3 * min(cpu_seconds):.1f} ms, median "
          f"{1e3 * statistics.median(cpu_seconds):.1f} ms; minor faults {(after.ru_minflt - before.ru_minflt) / n:.0f} "
          f"a step, system time {1e3 * (after.ru_stime - before.ru_stime) / n:.1f} ms a step")


if __name__ == "__main__":
    main()
