"""Applications: command line, TOML configuration, the pipeline, demo, sweeps, energy design."""
