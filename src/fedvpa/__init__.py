"""fedvpa."""
