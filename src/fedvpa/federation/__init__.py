"""Flower runtime of fedvpa: moves any ``FederatedMethod`` as Messages.

Public entry points: ``runtime.run_federated`` (simulation), ``registry.register_method``, and the
Flower apps ``server_app:app`` / ``client_app:app`` for ``flwr run``.
"""

from __future__ import annotations
