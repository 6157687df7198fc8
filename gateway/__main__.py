import os
import sys

# One BLAS thread per process, set before numpy loads: the embedded classifier runs one
# small prompt at a time, and a second BLAS thread only fights the event loop and the other
# requests for the cores (measured: MiniLM p95 17 ms -> 650 ms on a busy 2-core machine).
# Scale out with `serve --workers` instead. `train` is batch work that both cores speed up.
# An explicit setting in the environment wins.
if sys.argv[1:2] != ["train"]:
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

from gateway.cli import main

raise SystemExit(main())
