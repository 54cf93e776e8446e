"""Metrics: params/MACs with the papers' counting rules, FID (torch-fidelity, local weights), and a
fast domain FID for the embedded digits. Only the counters are imported eagerly; FID modules load
scipy/torch-fidelity when used."""

from .counting import MacCount, count_macs, count_params

__all__ = ["MacCount", "count_macs", "count_params"]
