"""The demo stories behind ``stockade demo``: real software TPMs, a real verifier process, real
agents and containers, each step checked. The end-to-end tests and benchmarks drive them too.

``stories.run_demo`` runs them all; ``cluster`` holds the process launchers the later stories
(and the tests) share: ``VerifierProcess``, ``AgentProcess``, ``LogMonitorProcess``.
"""
