"""iam-key-exporter: a Prometheus exporter for AWS IAM access keys."""

__version__ = "0.1.0"
