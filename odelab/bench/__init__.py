"""Benchmarks, each runnable as `odelab bench <name>`: a table, JSON under
`runs/bench/`, peers side by side in the same process."""
