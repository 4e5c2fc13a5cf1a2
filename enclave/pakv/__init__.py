"""Request-encryption keys for the Protected Auction Key/Value service (and its peers).

This package owns the HPKE key pairs that clients use to encrypt K/V requests (RFC 9458
Oblivious HTTP with the K/V labels): their ids (``keyids``), their rotation (``keyset``),
their persistence (``store``), the wire formats the coordinators use (``formats``), the one
service object (``service``) and its two HTTP front ends: aiohttp routes (``http``, HTTP/1.1
for the enclave app and kms-sim) and an HTTP/2 server (``h2server``, h2 over TLS and h2c)
for the K/V servers' key client, which speaks HTTP/2 only.

It never holds a private half in clear outside memory, and never answers key material to a
caller whose attestation evidence does not match the key set's release policy.
"""
