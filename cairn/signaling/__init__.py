"""
Signaling: PeerAnnounce through an untrusted rendezvous server.

L{cairn.signaling.announce} is the codec and the rendezvous ids,
L{cairn.signaling.server} the C{twistd cairn-signal} service,
L{cairn.signaling.announcer} the node's side (one C{ClientService} per
URL in C{CAIRN_SIGNAL_SERVERS}), and L{cairn.signaling.client} a device's
side (L{discover}).  Wire format: docs/protocol.md §23.
"""
