"""CloudTrail events of IAM calls, from SQS: the freshness path (polling is the safety net)."""
