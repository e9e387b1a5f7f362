"""The monodyn application: CLI, workspace cache, preprocessing stages, camera paths, evaluation."""

import os

# OpenMP threads that wait for work sleep instead of spinning. With the default (spinning), torch on a
# 2-core machine that is also running anything else was measured 5-10x slower per training step with 2 threads
# than with 1; with passive waiting 2 threads are never slower than 1. It must be set before torch loads
# OpenMP, hence here, at the package's import; a value the user exported wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
