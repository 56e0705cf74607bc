"""Example IVR flows, wired in the demo configuration: ``bank`` (dial 700) and ``after_hours`` (dial 701).

Copy one into your ``[ivr] paths`` directory and edit it; a changed file is used by the next call.
"""
