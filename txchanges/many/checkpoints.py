"""TEMPORARY: replaced by the stores' branch at merge."""
from __future__ import annotations
from typing import Any, Collection, Mapping, Protocol
from twisted.internet.defer import Deferred, succeed
__all__ = ["CheckpointsStore", "MemoryCheckpoints"]
class CheckpointsStore(Protocol):
    complete: bool
    def describe(self) -> str: ...
    def prepare(self, identity: str) -> "Deferred[None]": ...
    def load(self) -> "Deferred[dict[str, Any]]": ...
    def get(self, name: str) -> "Deferred[Any]": ...
    def save(self, seqs: Mapping[str, Any], removed: Collection[str]) -> "Deferred[None]": ...
class MemoryCheckpoints:
    complete = True
    def __init__(self) -> None:
        self.seqs: dict[str, Any] = {}
    def describe(self) -> str:
        return "memory"
    def prepare(self, identity: str) -> "Deferred[None]":
        return succeed(None)
    def load(self) -> "Deferred[dict[str, Any]]":
        return succeed(dict(self.seqs))
    def get(self, name: str) -> "Deferred[Any]":
        return succeed(self.seqs.get(name))
    def save(self, seqs: Mapping[str, Any], removed: Collection[str]) -> "Deferred[None]":
        self.seqs.update(seqs)
        for n in removed:
            self.seqs.pop(n, None)
        return succeed(None)
