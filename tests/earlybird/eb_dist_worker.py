"""One rank of the two-process gloo test. spawn pickles the worker by module name, so this file is
imported as a top-level module (the test puts its folder on ``sys.path``, which spawn passes on)."""

import os
import sys

import torch


def run_rank(rank, world, init_file, run_dir, config_path, overrides):
    import torch.distributed as dist

    from ebsparse.diffusion.config import load_config
    from ebsparse.drivers.eb_pipeline import EBRun

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        EBRun(load_config(config_path, overrides), run_dir, ta_eb=True, progress=False, fid=False,
              log=lambda s: None).run()
    finally:
        dist.destroy_process_group()
    # As in tests/s2s/s2s_dist_worker.py: the run is on disk, and the interpreter's teardown could abort.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
