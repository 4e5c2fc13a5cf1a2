"""The HSM layer: PKCS#11 (SoftHSM2 locally) behind one worker thread.

Public API: ``token`` (SoftHsmToken.provision, find_softhsm_library), ``config`` (HsmConfig,
HsmPin), ``backend`` (HsmBackend, KekRef), ``counter`` (HsmMonotonicCounter), ``errors``.
"""
