"""Kernel-era facts: the KVM functions tdptrace probes, their parameters, SPTE encoding, symbols, tracefs.

Nothing here reads a capture or draws anything; every kernel-version difference lives in this package.
"""
