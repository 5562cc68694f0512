"""
Worker groups: any number of processes, on any machines, share the work of
following a database (or a server's databases), with leases and heartbeats
kept in a CouchDB database, and take over a crashed worker's share.
"""

from txchanges.group._config import GroupError
from txchanges.group._coordinator import LeaseLost
from txchanges.group._service import GroupService, GroupStats
from txchanges.group._units import LeaseExpired

__all__ = ["GroupService", "GroupStats", "GroupError", "LeaseExpired", "LeaseLost"]
