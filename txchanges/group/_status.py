"""
``txchanges group status``: a group's members, units, owners and
checkpoint ages, read from its documents.
"""

from __future__ import annotations

import json
from typing import Any

from txchanges.group._couchstore import CouchLeaseStore
from txchanges.group._lease import config_id, lease_id, member_id

__all__ = ["group_status"]


def _age(now: float, then: Any) -> str:
    # Ages are by the writer's clock against the reader's: a hint for people.
    return f"{max(0.0, now - then):.1f}s ago" if isinstance(then, (int, float)) else "-"


async def group_status(store: CouchLeaseStore, now: float) -> str:
    """
    :param now: The wall-clock time the ages are counted to.
    :return: The report, as lines of text; one saying so when the group has
        no documents.
    """
    docs = await store.read()
    config = docs.get(config_id(store.group))
    if config is None:
        return f"group {store.group!r}: no such group in {store.db.url}\n"
    units = int(config.body.get("units", 0))
    lines = [f"group {store.group!r} in {store.db.url}: {units} units, {config.body.get('kind')} of {config.body.get('target')}"]
    members = sorted((d.body for k, d in docs.items() if k.startswith(member_id(store.group, ""))), key=lambda b: str(b.get("worker")))
    lines.append(f"members ({len(members)}):")
    for body in members:
        lines.append(
            f"  {body.get('worker')}  host {body.get('host', '-')} pid {body.get('pid', '-')}  "
            f"units {len(body.get('units') or [])}  heartbeat {_age(now, body.get('written_at'))}"
        )
    lines.append("units:")
    for unit in range(units):
        lease = docs.get(lease_id(store.group, str(unit)))
        if lease is None:
            lines.append(f"  {unit:>3}  never owned")
            continue
        body = lease.body
        holder = body.get("holder") or "(free)"
        checkpoint = body.get("checkpoint")
        shown = "-" if checkpoint is None else (json.dumps(checkpoint) if not isinstance(checkpoint, str) else checkpoint)
        if len(shown) > 40:
            shown = shown[:37] + "..."
        lines.append(
            f"  {unit:>3}  {holder}  lease written {_age(now, body.get('written_at'))}  "
            f"checkpoint {shown} ({_age(now, body.get('checkpoint_at'))})"
        )
    return "\n".join(lines) + "\n"
