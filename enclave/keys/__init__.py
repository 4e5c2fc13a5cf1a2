"""The key hierarchy: metadata model, entropy, key material and KeyHierarchy over the HSM.

Public API: ``metadata`` (KeyMetadata, KeyVersion, states), ``entropy`` (EntropySource),
``material`` (Ciphertext, SymmetricKey, ...), ``hierarchy`` (KeyHierarchy), ``errors``.
"""
