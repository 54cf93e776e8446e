"""The table says when a ticket did not appear, and the speed-up is dense seconds over the method's."""

from types import SimpleNamespace

from ebsparse.earlybird.config import EarlyBirdConfig
from ebsparse.drivers.eb_report import _notes, format_table


def _row(time_s, found=True, **kw):
    return {"params": 1000, "macs": 2e6, "fid": 10.0, "iterations": 100, "time_s": time_s, "ticket_found": found, **kw}


def test_table_marks_missing_ticket_and_measured_speedup():
    ta_eb = _row(50.0, found=False, no_ticket=["region1"], region_params_sum=1700,
                 regions=[{"name": "region0", "search_steps": 40}, {"name": "region1", "search_steps": 90}])
    table = format_table({"dense": _row(100.0), "eb": _row(40.0, found=False, search_steps=60), "ta_eb": ta_eb})
    lines = table.splitlines()
    assert "#params stored" in lines[0] and "FID (clipped)" in lines[0]
    assert "| Unpruned (dense) |" in lines[2] and "1.00x" in lines[2]
    assert "no ticket by step 60" in lines[3] and "2.50x" in lines[3]
    assert "no ticket: region1 by step 90" in lines[4] and "2.00x" in lines[4]
    assert "| 1.00K | 1.70K |" in lines[4]  # timestep-weighted params, then the stored sum
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


def test_ta_eb_notes_give_each_chain_and_the_one_device_time():
    from ebsparse.earlybird.accounting import region_parallel_totals

    run = SimpleNamespace(eb=EarlyBirdConfig(), T=1000, config=SimpleNamespace(data=SimpleNamespace(type="digits")))
    rows = [{"name": f"region{i}", "ticket_found": True, "search_steps": s, "train_steps": n, "iterations": s + n,
             "search_s": s / 10, "train_s": t, "time_s": s / 10 + t} for i, (s, n, t) in
            enumerate([(50, 100, 30.0), (100, 50, 20.0), (100, 50, 10.0)])]
    ta_eb = {**_row(0.0), **region_parallel_totals(rows), "region_training": "sequential"}
    assert ta_eb["time_s"] == 35.0 and ta_eb["one_device_s"] == 70.0
    text = "\n".join(_notes(run, {"pseudo_epoch_steps": 10, "tickets": {}}, {"dense": _row(80.0), "ta_eb": ta_eb}))
    assert "region0: 50 + 100 steps, 5.0 + 30.0 s" in text
    assert "one device, regions one after another: 70.0 s (1.14x vs dense)" in text
