"""The ccpbx command line (click)."""
