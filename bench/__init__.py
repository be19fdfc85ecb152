"""Benchmarks: each prints a ratio against a bare baseline measured in the same run."""

import os

# The benchmarks run daemons in-process on gpiozero's own mock pins.
os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")
