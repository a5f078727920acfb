"""Environment Flower needs here, in a module that imports nothing heavy.

It must be applied before ``flwr`` is imported: telemetry, update checks and the runtime
dependency installation (which would re-install torch from the network, as a CUDA build) are
read from the environment.
"""

from __future__ import annotations

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}
