"""Shell: TPM access (device or swtpm), swtpm processes, EK certificates.

Importing this package pulls in nothing heavy; ``tpm2_pytss`` is imported only
by the modules that talk to a TPM.
"""
