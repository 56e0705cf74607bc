"""Automatic call distribution: a pure, clock-injected decision engine.

``AcdEngine.handle(event, now_ms) -> list[Action]`` plus ``next_deadline()``; the event/action contract the PBX
adapter follows is documented in :mod:`ccpbx.acd.engine`. Modules: ``model`` (configuration values),
``events`` (events, actions, queue-log records), ``engine`` (state, indexes, routing), ``strategies``,
``stats`` (counters, estimated wait, snapshots), ``erlang`` (Erlang B/C/A), ``simulate`` (a discrete-event
simulation driving the real engine).
"""
