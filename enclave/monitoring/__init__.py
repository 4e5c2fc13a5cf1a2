"""Monitoring: Prometheus metrics, alerts (levels, rules, anomaly detection, sinks) and the
enclave's routine jobs.

The seed's "Monitoring and Alert System": the metrics collector (``metrics``), anomaly
detection (``anomaly``), the alert manager and its sinks (``alerts``, ``webhook``), the rules
that turn events into alerts (``rules``) and the daily/weekly/monthly jobs (``jobs``). No
module here holds global state, and nothing here ever puts a secret into a metric label, a
log line, an alert or a report.
"""
