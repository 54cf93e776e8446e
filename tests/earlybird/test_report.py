"""The table says when a ticket did not appear, and the speed-up is dense seconds over the method's."""

from types import SimpleNamespace

from ebsparse.earlybird.config import EarlyBirdConfig
from ebsparse.drivers.eb_report import _notes, format_table


def _row(time_s, found=True, **kw):
    return {"params": 1000, "macs": 2e6, "fid": 10.0, "iterations": 100, "time_s": time_s, "ticket_found": found, **kw}


def test_table_marks_missing_ticket_and_measured_speedup():
    table = format_table({"dense": _row(100.0), "eb": _row(40.0, found=False), "ta_eb": _row(50.0)})
    lines = table.splitlines()
    assert "| Unpruned (dense) |" in lines[2] and "1.00x" in lines[2]
    assert "no ticket" in lines[3] and "2.50x" in lines[3]
    assert "no ticket" not in lines[4] and "2.00x" in lines[4]
    assert "n/a" in format_table({"eb": _row(40.0)}).splitlines()[2]  # no dense run: no speed-up claimed


def test_notes_are_honest_about_early_and_missing_tickets():
    eb = EarlyBirdConfig()
    run = SimpleNamespace(eb=eb, T=1000, config=SimpleNamespace(data=SimpleNamespace(type="digits")))
    search = {"pseudo_epoch_steps": 10, "tickets": {
        "eb": {"found": True, "pruning_ratio": 0.3, "epoch": 4, "step": 50, "max_distance_so_far": 0.01, "ema_rate": 0.99},
        "region1": {"found": False, "pruning_ratio": 0.6, "epoch": 9, "step": 100, "settled_later_step": 140}}}
    text = "\n".join(_notes(run, search, {"eb": _row(1.0)}))
    assert "earliest pseudo-epoch the FIFO allows" in text
    assert "**no ticket appeared** by step 100" in text and "settled at step 140" in text


def test_sequential_regions_report_summed_and_region_parallel_time():
    run = SimpleNamespace(eb=EarlyBirdConfig(), T=1000, config=SimpleNamespace(data=SimpleNamespace(type="digits")))
    ta_eb = _row(70.0, region_training="sequential", search_s=10.0, region_train_s=[30.0, 20.0, 10.0])
    text = "\n".join(_notes(run, {"pseudo_epoch_steps": 10, "tickets": {}}, {"dense": _row(80.0), "ta_eb": ta_eb}))
    assert "the time is the sum over regions" in text
    assert "search + the slowest region = 40.0 s" in text and "2.00x vs dense" in text
