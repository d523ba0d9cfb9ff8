"""The drift watch: signals per part, a reference per camera, recipe and model, calibrated CUSUM detectors, and
label-free performance estimates (docs/drift.md). A library record hosts; it never changes a verdict."""

from linewatch.watch.cusum import Cusum, average_run_length, threshold_for
from linewatch.watch.reference import Learning, Reference, ReferenceError, SignalReference, calibrate, from_quantiles
from linewatch.watch.signals import IMAGE_SIGNALS, SIGNALS, SKETCH_DIMS, SignalSpec, part_values, sketch
from linewatch.watch.watch import Cbpe, DriftAlarm, DriftWatch, Key

__all__ = [
    "IMAGE_SIGNALS", "SIGNALS", "SKETCH_DIMS", "Cbpe", "Cusum", "DriftAlarm", "DriftWatch", "Key", "Learning",
    "Reference", "ReferenceError", "SignalReference", "SignalSpec", "average_run_length", "calibrate", "from_quantiles",
    "part_values", "sketch", "threshold_for",
]
