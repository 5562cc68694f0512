"""
Which live worker each unit of a group goes to: balanced rendezvous
hashing, computed alike by every worker from the same list of members.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence

__all__ = ["assign", "score"]


def score(member: str, unit: str) -> int:
    """
    How much *member* wants *unit*: a hash of both, the same in every
    process and on every machine.
    """
    digest = hashlib.blake2b(f"{member}\x00{unit}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign(units: Sequence[str], members: Collection[str]) -> dict[str, str]:
    """
    Give every unit to one member, evenly: each member gets ``len(units) //
    len(members)`` units or one more.

    Every (unit, member) pair is taken in the order of its :func:`score`,
    highest first, and a unit goes to the member of the first pair that
    still has room. A pair's score does not depend on who else is a member,
    so a member that joins or leaves moves few units besides its own share.

    :return: The member of each unit; ``{}`` when there is no member.
    """
    if not members:
        return {}
    ordered = sorted(set(members))
    base, extra = divmod(len(units), len(ordered))
    pairs = sorted(((score(m, u), u, m) for u in units for m in ordered), reverse=True)
    owner: dict[str, str] = {}
    load = dict.fromkeys(ordered, 0)
    extras = 0
    for _, unit, member in pairs:
        if unit in owner:
            continue
        have = load[member]
        if have < base or (have == base and extras < extra):
            owner[unit] = member
            load[member] = have + 1
            if have == base:
                extras += 1
            if len(owner) == len(units):
                break
    return owner
