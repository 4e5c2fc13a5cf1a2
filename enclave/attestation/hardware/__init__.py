"""Evidence providers for real hardware: SEV-SNP and TDX through Linux configfs-tsm (with
the /dev/sev-guest and /dev/tdx_guest ioctls as fallback), Nitro through /dev/nsm.

None of these can run on a machine without the hardware; they are tested against a fake
configfs tree and fake devices that answer with simulated evidence (LIMITATIONS.md).
"""
