"""What a model costs.

    counting   MACs (``torch.utils.flop_counter``) and parameters
    rounding   the rounding rules of the three axes, as pure functions (blocks, channels, pixels)
    timing     latency, timed in turns beside the models it is compared with
    latency    latency targets and the measured latency model L(d, w, r)
"""

from .counting import Counts, count, count_macs, count_params, first_conv_in_channels, format_count
from .timing import (
    CostReport,
    Latency,
    check_device,
    cost_report,
    cost_reports_side_by_side,
    machine_stamp,
    measure_latencies,
    measure_latency,
    quartiles,
    time_forward,
    time_in_turns,
    timing_inputs,
)

__all__ = [
    "CostReport", "Counts", "Latency", "check_device", "cost_report", "cost_reports_side_by_side",
    "count", "count_macs", "count_params", "first_conv_in_channels", "format_count",
    "machine_stamp", "measure_latencies", "measure_latency", "quartiles", "time_forward",
    "time_in_turns", "timing_inputs",
]
