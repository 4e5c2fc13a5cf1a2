"""Quorum governance: privileged operations run only after M of N admins approved them.

``quorum`` reads the admins and the threshold from the attested launch configuration;
``proposals`` models a proposal; ``approvals`` defines the approval digest admins sign
offline; ``operations`` runs the state machine (propose, approve, execute exactly once).
"""
