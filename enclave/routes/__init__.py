"""HTTP routes of the enclave service, one module per concern, each adding a RouteTableDef."""
