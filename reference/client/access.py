"""Access control for DM operations (Core 1.1.1 §7.3 Access Control; Access Control object §E.3).

* The Security object (0) is never accessible to an LwM2M Server (its DDF: "MUST NOT be accessible
  by any other LwM2M Server" than the Bootstrap-Server) — the client answers 4.01.
* With a single LwM2M Server account the server has full access to everything else and Access
  Control object instances are not consulted (§7.3).
* With more than one account, each object instance is governed by the /2 instance whose Object ID
  (/2/x/0) and Object Instance ID (/2/x/1) name it: the ACL resource instance keyed by the
  server's Short Server ID gives its rights; without one, the Access Control Owner (/2/x/3) has
  full rights, others get the default entry (ACL instance 0), if any; no /2 instance means no
  access. Create rights come from the /2 instance whose Object Instance ID is MAX_ID (65535).
"""
from __future__ import annotations

import enum

from reference.client.store import MAX_ID, ObjectTree

ACL_OBJECT = 2


class AclRight(enum.IntFlag):
    """Bits of the ACL resource (/2/x/2), Core 1.1.1 §E.3."""

    NONE = 0
    READ = 1      # Read, Observe, Discover, Write-Attributes
    WRITE = 2
    EXECUTE = 4
    DELETE = 8
    CREATE = 16
    ALL_INSTANCE = READ | WRITE | EXECUTE | DELETE


class AclRes(enum.IntEnum):
    OBJECT_ID = 0
    INSTANCE_ID = 1
    ACL = 2
    OWNER = 3


def find_acl(tree: ObjectTree, oid: int, iid: int) -> int | None:
    """The /2 instance ID governing ``/oid/iid`` (``iid`` MAX_ID: the object itself), or None."""
    for aiid, inst in tree.data.get(ACL_OBJECT, {}).items():
        if inst.get(AclRes.OBJECT_ID) == oid and inst.get(AclRes.INSTANCE_ID) == iid:
            return aiid
    return None


def rights(tree: ObjectTree, ssid: int, oid: int, iid: int) -> AclRight:
    """Rights of server ``ssid`` on ``/oid/iid`` from the Access Control instances (§7.3)."""
    aiid = find_acl(tree, oid, iid)
    if aiid is None:
        return AclRight.NONE
    inst = tree.data[ACL_OBJECT][aiid]
    acl = inst.get(AclRes.ACL)
    acl = acl if isinstance(acl, dict) else {}
    if ssid in acl:
        return AclRight(int(acl[ssid]) & 31)
    if inst.get(AclRes.OWNER) == ssid:
        return AclRight.ALL_INSTANCE | (AclRight.CREATE if iid == MAX_ID else AclRight.NONE)
    if 0 in acl:
        return AclRight(int(acl[0]) & 31)
    return AclRight.NONE


def next_acl_id(tree: ObjectTree) -> int:
    return tree.free_instance_id(ACL_OBJECT)


def create_acl(tree: ObjectTree, oid: int, iid: int, owner: int,
               entries: dict[int, int] | None = None) -> int:
    """Create the /2 instance for ``/oid/iid`` owned by ``owner``; returns its instance ID."""
    aiid = next_acl_id(tree)
    res: dict = {AclRes.OBJECT_ID: oid, AclRes.INSTANCE_ID: iid, AclRes.OWNER: owner}
    res[AclRes.ACL] = dict(entries or {})
    tree.create_instance(ACL_OBJECT, aiid, {int(k): v for k, v in res.items()})
    return aiid


def delete_acl_for(tree: ObjectTree, oid: int, iid: int) -> None:
    aiid = find_acl(tree, oid, iid)
    if aiid is not None:
        tree.delete_instance(ACL_OBJECT, aiid)
