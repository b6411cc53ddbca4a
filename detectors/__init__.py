"""Edge inference: backends, model adapters, pipeline stages, tiling, alert rules, hard-example mining."""
