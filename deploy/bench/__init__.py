"""Benchmarks behind ``pedstream bench ...``: each measures in one run and returns a JSON-able dict."""
