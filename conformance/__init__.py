"""Conformance tests, one module per spec family; run with ``diffrl conform``."""
