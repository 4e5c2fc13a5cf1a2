"""Backup, restore and cross-region replication of the KMS state.

``bundle`` makes and opens encrypted, signed bundles (``create_bundle``, ``verify_bundle``,
``restore_bundle``); ``manifest`` is their key-free description; ``custodians`` is the
custodians' side of the M-of-N backup key (reusing the sealing quorum code);
``replication`` releases a bundle's key to an attested secondary KMS.
"""
