"""Tests of proxy/stream/ (the pump and its compiled text path)."""
