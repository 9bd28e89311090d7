"""Tests of proxy/api/ (the route handlers)."""
