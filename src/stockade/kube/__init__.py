"""Kubernetes: no workload ever lands on an unattested node (node controller, kubelet CSR
approver, validating admission webhook, scheduler extender). Every decision asks
:mod:`stockade.kube.trust`, which fails closed."""
