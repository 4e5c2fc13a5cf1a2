"""The KMS core: keys, their lifecycle, cryptographic operations and attested release."""
