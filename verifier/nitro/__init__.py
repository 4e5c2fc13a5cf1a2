"""AWS Nitro Enclaves attestation documents: ``abi`` (COSE_Sign1 and payload bytes),
``verify`` (chain to the pinned AWS Nitro root, ES384 signature, claims) and ``validate``
(PCRs against a policy)."""
