"""The command line (`main`: run, estimate, status, simulate, demo; thin: it checks input and calls
one function) and where option defaults come from (`config`: flags, RUNNER_* variables, runner.toml)."""
