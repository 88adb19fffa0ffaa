"""The option lists of the device models: the values a field or flag may take, defined once.

Plain tuples and no torch, so that the command line builds its choices (and ``--help``) without
importing the simulators; :mod:`device_models.nonidealities` validates against the same tuples.
"""

from __future__ import annotations

#: how a device with variability is programmed inside its own window (:class:`~device_models.nonidealities.DeviceVariability`)
VARIABILITY_MODES = ("own_range", "memtorch_clip")
#: ADC transfer functions
ADC_METHODS = ("linear",)
#: how an ADC's full-scale range is set: the largest possible tile current, or calibrated per tile / column
ADC_RANGES = ("worst", "calibrated", "calibrated_column")
#: the stages a non-ideality acts at, in pipeline order
STAGES = ("device", "program", "read", "circuit")
#: drift compensation of the read outputs
DRIFT_COMPENSATIONS = ("none", "global")
#: what the programming-noise sigma scales: the device's window, its state, or a measured curve
PROGRAMMING_NOISE_MODES = ("window", "state", "measured")
#: solvers of a crossbar with line resistance
IR_DROP_SOLVERS = ("auto", "exact", "approx")
