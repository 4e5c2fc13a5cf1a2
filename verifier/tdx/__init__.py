"""Intel TDX: quote v4/v5 parsing (abi), verification (verify, collateral, tcb) and policy
checks (validate)."""
