"""Hostile-input properties: every parser of untrusted bytes ends, fast, with bounded output."""
