"""The audit trail: hash-chained records, group-committed, with signed checkpoints."""
