"""mdp: the microscopy data playbook as a Dagster platform."""

__version__ = "0.1.0"
