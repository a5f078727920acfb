"""The variational selector: small modules and pure maths."""

from fedvpa.model.config import ModelConfig
from fedvpa.model.vpl import VariationalPreferenceModel

__all__ = ["ModelConfig", "VariationalPreferenceModel"]
