"""Reference values as reviewed data (``measurements/*.json``) and the simulated measurement.

``measurements.compute`` defines the simulated launch measurement of this tree; the JSON
files beside this module are reviewed verifier policies (see README.md). This package never
imports the enclave or the host, and never decides acceptance itself: the verifier does.
"""

from measurements.compute import (
    DEFAULT_LAUNCH_CONFIG,
    MEASUREMENT_BYTES,
    MeasuredTree,
    MeasurementError,
    canonical_launch_config,
    code_digest,
    launch_config_for,
    measured_files,
    simulated_measurement,
)

__all__ = [
    "DEFAULT_LAUNCH_CONFIG",
    "MEASUREMENT_BYTES",
    "MeasuredTree",
    "MeasurementError",
    "canonical_launch_config",
    "code_digest",
    "launch_config_for",
    "measured_files",
    "simulated_measurement",
]
