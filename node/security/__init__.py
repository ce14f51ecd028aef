"""Trust between tiers: node identity (PKI, mutual TLS), sharing rules enforced before
data leaves a node, grants and return flows, and the tamper-evident audit chain."""
