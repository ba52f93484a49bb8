"""Test helpers: the reference implementation (moshi 0.2.13) as an oracle."""
