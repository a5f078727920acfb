"""Federated methods (FedVPA-GP, FedVPL, baselines) behind one interface the runtime drives.

``BUILTIN_METHODS`` maps each built-in name to an importable factory reference; the federation
registry reads it, so ``method = "fedvpa-gp"`` works in any process (server, Ray actor,
SuperNode) without import-order tricks.
"""

BUILTIN_METHODS = {
    "fedavg-bt": "fedvpa.methods.reward_heads:FedAvgBT",
    "fedbiscuit": "fedvpa.methods.reward_heads:FedBiscuit",
    "fedvpl": "fedvpa.methods.variational:fedvpl",
    "fedvpl+ortho": "fedvpa.methods.variational:fedvpl_ortho",
    "fedvpl+gp": "fedvpa.methods.variational:fedvpl_gp",
    "fedvpa-gp": "fedvpa.methods.variational:fedvpa_gp",
}
