"""Relying-party side of trust: the cluster CA that issues node certificates for
TPM-resident keys (``ca``), and what the cluster gives nodes in good standing.

Submodules are imported explicitly (``from stockade.cluster.ca import ClusterCa``);
this package imports nothing, so the verifier and the CLI can use one part
without loading the others.
"""
