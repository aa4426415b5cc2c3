"""Coact's policy core: what a device may do, how risky it is, and why.

Pure functions over plain data, no I/O; imported by both the agent and the relay
(layering: ``coact.shared <- coact.policy <- {coact.agent, coact.relay}``).

- ``coact.policy.actions``  the catalog of actions (``ACTIONS``), their param specs,
  ``validate_params`` and ``spec_as_json_schema``.
- ``coact.policy.document`` policy documents: ``parse_policy`` (TOML text to a frozen
  ``Policy``) and ``render_sandbox_policy`` for ``coact policy init --sandbox``.
- ``coact.policy.decision`` ``decide(policy, action, params)``: allow, deny or
  needs_approval, with reasons; ``is_within`` for lexical path containment.
- ``coact.policy.risk``     ``assess(action, params)``: a level, a 0..100 score, reasons.
- ``coact.policy.paths``    the lexical path rules the others share.
- ``coact.policy.errors``   ``PolicyError`` and ``ParamsError``.

The document format and the decision algorithm are described in ``docs/policy.md``.
"""
