"""The KMS HTTP API: authentication, default-deny declarations, strict input models, routes
over ``enclave.kms.service.KmsService``, and the mapping of every error to problem+json.
Installed by ``enclave.features.kms_api``."""
