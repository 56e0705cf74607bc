"""Automatic call distribution: a pure, clock-injected decision engine."""
