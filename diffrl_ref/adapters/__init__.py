"""Adapters that plug third-party implementations into the conformance suite."""
