"""Coact's shared core: what the agent and the relay must agree on, with no I/O.

Layering (enforced by ``tests/test_layering.py``)::

    coact.shared  <-  coact.policy  <-  { coact.agent, coact.relay }  <-  coact.cli

``shared`` imports nothing of Coact; ``policy`` imports only ``shared``; the agent
and the relay never import each other and meet only in these protocol types and
over the wire. ``coact.cli`` is the console entry point that wires them together.
"""
