"""Client side of the K/V request keys: public-key fetch and checks, OHTTP encapsulation
with the K/V labels (``ohttp``), and the helper an attested K/V server uses to fetch its
private keys over HTTP/2 and decrypt requests (``server``)."""
