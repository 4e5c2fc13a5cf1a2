"""Emergency procedures: the key compromise response and isolation (``response``).

Every procedure here runs only as the executor of an approved quorum proposal
(``emergency.compromise``, ``emergency.rotate``, ``emergency.isolate``,
``emergency.disable_key``; see ``enclave.features.governance``) and is written down as a
runbook in docs/operations.md.
"""
