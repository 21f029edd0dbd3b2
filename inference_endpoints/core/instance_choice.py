"""The cheapest instance a request fits on, for the create form's "use the cheapest that fits"."""

from __future__ import annotations

from collections.abc import Mapping

from inference_endpoints.core.catalog import InstanceSpec
from inference_endpoints.core.validation import (
    CheckpointView,
    check_fit,
    check_precision,
    check_quantization,
)


def cheapest_fitting_instance(checkpoint: CheckpointView, instances: Mapping[str, InstanceSpec],
                              max_context: int, precision: str, quantization: str) -> InstanceSpec | None:
    """The lowest-priced instance (CPU included) that accepts the precision and quantization and
    fits the weights plus a KV cache for `max_context`; ties go to the smaller name. None if none."""
    catalog = dict(instances)
    fitting = []
    for spec in catalog.values():
        if check_precision(precision, spec) or check_quantization(quantization, checkpoint, spec):
            continue
        fit, problems = check_fit(checkpoint, spec, catalog, max_context, precision, quantization)
        if fit.fits and not problems:
            fitting.append(spec)
    return min(fitting, key=lambda s: (s.price_per_hour, s.name), default=None)
