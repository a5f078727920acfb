"""fedvpa: federated, personalised preference alignment (FedVPA-GP) on Flower."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fedvpa")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
