"""Features served on top of the bootstrapped runtime; each module's ``install(app)`` adds
its routes, middlewares and ``cleanup_ctx`` entries (``enclave.app._features``)."""
