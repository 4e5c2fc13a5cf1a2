"""Seal-key providers: ``simulated`` (fake chip secret on disk), ``snp_derived`` (the
SEV-SNP firmware's derived key through /dev/sev-guest) and ``quorum`` (a random seal secret
split M-of-N among custodians, for TDX and Nitro, which have no hardware sealing)."""
