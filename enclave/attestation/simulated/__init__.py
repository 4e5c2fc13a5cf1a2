"""Simulated attestation: fake hardware with fake vendor roots, real evidence formats.

Each platform module (``snp``, ``tdx``, ``nitro``) provides a fake device class with
``load_or_create(hw_dir)`` (keys made once with the real algorithms and kept in
``hw_dir``), ``roots_pem()`` (the fake vendor roots a verifier is given, written by the
simulator to ``STATE/sim-roots/<platform>-roots.pem``) and ``provider(launch)`` (an
``EvidenceProvider`` for one launch identity). The verifier accepts this evidence only
with the simulated roots, and only when the policy names them (``allow_simulated``).
"""
