"""How pedstream processes start: the CLI, the embedded local stack, benchmarks and Dockerfiles."""
