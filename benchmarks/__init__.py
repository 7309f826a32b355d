"""diffxas benchmarks: ``python -m benchmarks.run --suite quick|full`` (see README.md)."""
