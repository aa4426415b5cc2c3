"""Client-side re-verification of stored audit chains (``coact audit verify``).

Pure: it takes the raw records and batches as read from ClickHouse (or from the
relay's audit API) plus the device public keys the caller trusts, and reports what
does not verify. It trusts nothing the store says about itself: every hash is
recomputed, every batch signature checked against the *given* key (never the key
stored next to the batch), and every chain must start at seq 1, because the relay
never deletes audit records.

Per chain, it names the first record that does not verify; batch findings come on
top of that (a bad signature, a batch that seals a hash no stored record has, a
tail of records no signed batch covers).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from coact.shared.chain import ChainHead, verify_batch_signature, verify_chain
from coact.shared.errors import CanonicalizationError, ChainError, ChainGapError


@dataclass(frozen=True)
class Finding:
    """One thing that does not verify; ``seq`` names the record, when there is one."""

    device_id: str
    seq: int | None
    problem: str


@dataclass(frozen=True)
class VerifyReport:
    chains: int
    records: int
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not self.findings


def _seq_order(record: Mapping[str, Any]) -> tuple[int, int]:
    # A record whose seq is not an int (damaged row) sorts last instead of
    # breaking the sort; verify_chain then reports it.
    seq = record.get("seq")
    if isinstance(seq, int) and not isinstance(seq, bool):
        return (0, seq)
    return (1, 0)


def _check_chain(device_id: str, chain: list[Mapping[str, Any]]) -> Finding | None:
    try:
        verify_chain(chain, device_id=device_id)
    except ChainGapError as exc:
        first = chain[0].get("seq")
        if isinstance(first, int) and first < 1:
            return Finding(device_id, first, f"record has seq {first}: chains start at seq 1")
        return Finding(
            device_id,
            exc.expected_seq,
            f"chain starts at seq {chain[0].get('seq')}, not 1: earlier records are missing",
        )
    except ChainError as exc:
        return Finding(device_id, exc.seq, str(exc))
    except CanonicalizationError as exc:  # older verify_chain lets this escape
        return Finding(device_id, None, f"a record has no canonical form: {exc}")
    return None


def verify_audit(
    records: Iterable[Mapping[str, Any]],
    batches: Iterable[Mapping[str, Any]],
    public_keys: Mapping[str, str],
) -> VerifyReport:
    """Re-check every device chain in ``records`` and every batch in ``batches``.

    ``public_keys`` maps device id to its base64 Ed25519 public key.
    """
    chains: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    total = 0
    for record in records:
        chains[str(record.get("device_id"))].append(record)
        total += 1
    by_device: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for batch in batches:
        by_device[str(batch.get("device_id"))].append(batch)

    findings: list[Finding] = []
    for device_id in sorted(chains.keys() | by_device.keys()):
        chain = sorted(chains.get(device_id, []), key=_seq_order)
        # The chain's first bad record leads; batch findings follow in seq order.
        if chain and (bad := _check_chain(device_id, chain)) is not None:
            findings.append(bad)
        batch_findings = _check_batches(
            device_id, chain, by_device.get(device_id, []), public_keys.get(device_id)
        )
        findings.extend(sorted(batch_findings, key=lambda f: (f.seq is None, f.seq or 0)))
    return VerifyReport(chains=len(chains), records=total, findings=tuple(findings))


def _check_batches(
    device_id: str,
    chain: list[Mapping[str, Any]],
    batches: list[Mapping[str, Any]],
    public_key: str | None,
) -> list[Finding]:
    stored: dict[int, Any] = {}
    for record in chain:
        seq = record.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            stored.setdefault(seq, record.get("hash"))
    findings: list[Finding] = []
    if public_key is None and batches:
        findings.append(Finding(device_id, None, "no public key is known for this device"))
    sealed = 0
    for batch in batches:
        last_seq, head_hash = batch.get("last_seq"), batch.get("head_hash")
        if (
            not isinstance(last_seq, int)
            or isinstance(last_seq, bool)
            or not isinstance(head_hash, str)
        ):
            findings.append(Finding(device_id, None, "a batch row has no valid last_seq/head_hash"))
            continue
        signed = False
        if public_key is not None:
            try:
                verify_batch_signature(
                    public_key,
                    device_id,
                    ChainHead(last_seq, head_hash),
                    str(batch.get("signature")),
                )
                signed = True
            except ChainError:
                findings.append(
                    Finding(
                        device_id,
                        last_seq,
                        f"batch ending at seq {last_seq}: signature does not verify",
                    )
                )
        if last_seq not in stored:
            findings.append(
                Finding(
                    device_id,
                    last_seq,
                    f"batch ending at seq {last_seq} seals a record that is not stored",
                )
            )
        elif stored[last_seq] != head_hash:
            findings.append(
                Finding(
                    device_id,
                    last_seq,
                    f"batch ending at seq {last_seq} sealed hash {head_hash[:12]}…, "
                    f"the stored record has {str(stored[last_seq])[:12]}…",
                )
            )
        elif signed:
            sealed = max(sealed, last_seq)
    if stored and public_key is not None:
        last = max(stored)
        if last > sealed:
            findings.append(
                Finding(
                    device_id,
                    sealed + 1,
                    f"records {sealed + 1}..{last} are not covered by a signed batch",
                )
            )
    return findings
