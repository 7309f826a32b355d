"""`python -m diffxas.app.sweep`: the same as `python -m diffxas.app.sweep.cli`."""

import runpy

runpy.run_module("diffxas.app.sweep.cli", run_name="__main__", alter_sys=True)
