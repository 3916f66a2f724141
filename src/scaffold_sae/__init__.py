"""scaffold-sae: sparse autoencoders with a rank-r computational scaffold."""

import os

# Idle OpenMP threads that spin steal the few cores a CPU run has; must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
