"""Latency tables built on the user's own target (DESIGN.md, "Latency tables"): per-kernel p50s
at a grid of channel counts, summed and fitted on whole-model measurements; `lut check` says
how good the predictions are on random sub-networks. Imported where used: it needs torch."""
from edgeprune.targets.lut.build import (TableBuilder, on_multiple, predict_p50, predict_peak_mb, predicted_measurement,
                                         sub_network)
from edgeprune.targets.lut.table import LatencyTable, TableStore

__all__ = ["LatencyTable", "TableBuilder", "TableStore", "on_multiple", "predict_p50", "predict_peak_mb",
           "predicted_measurement", "sub_network"]
