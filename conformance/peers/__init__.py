"""Peers the suite plays against an implementation under test (the DUT).

* :mod:`conformance.peers.server_peer` -- a programmable LwM2M Server and the wire recorder both
  server-role peers share (for a client DUT);
* :mod:`conformance.peers.bootstrap_peer` -- a programmable LwM2M Bootstrap-Server (client DUT);
* :mod:`conformance.peers.client_peer` -- a programmable LwM2M Client (server DUT).

Every peer binds loopback on a free port and records every datagram it sends and receives.
"""
