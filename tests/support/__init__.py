"""The tests' shared harness: one way to run the ``stockade`` CLI (:mod:`support.cli`), one
launcher for ``stockade verifier serve`` (:mod:`support.verifier_serve`), and the Kubernetes
API emulator (:mod:`support.kube_emulator`). ``tests`` is on pytest's ``pythonpath``, so a
test imports ``from support.cli import run_stockade``.
"""
