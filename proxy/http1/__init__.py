"""HTTP/1.1 pieces both sides share: header rules (what is forwarded, what a run's response carries)."""
