"""
The node's side of the two PairRequest methods that run no exchange
(docs/protocol.md §20.3.2, §20.3.4): a link's proof, checked against the
link book, and a request filed for the operator's approval.

PSK and PIN run a SPAKE2 exchange: L{cairn.pairing.exchange}.
"""

from twisted.internet import defer
from twisted.logger import Logger

from cairn.pairing import messages, proofs
from cairn.pairing.interfaces import PENDING
from cairn.pairing.messages import APPROVAL, LINK
from cairn.wire.constants import MessageType, PairRejectCode

#: Pairing's log lines keep one namespace whichever module writes them
#: (operators and tests filter on it).
log = Logger(namespace="cairn.pairing.service")


def link_method(service, session, request, source):
    """
    Pair C{session} by a link (C{request.link_id} and its proof) for a
    L{cairn.pairing.service.PairingService}; a wrong link or proof counts
    against C{source}.
    """
    code = service.links.get(request.link_id)
    refusal = service.links.refusal(code)
    if refusal is not None:
        if code is None:
            service.sources.failed(source)
        service.refuse(session, LINK, *refusal)
        return None
    client_proof, server_proof = proofs.link_proofs(code.key, session.result.handshake_hash)
    if not proofs.equal(request.proof, client_proof):
        service.links.failed(request.link_id, code)
        service.sources.failed(source)
        service.refuse(session, LINK, PairRejectCode.BAD_PROOF, "wrong link proof")
        return None

    def spent(refusal):
        if refusal is not None:  # another node paired with it first
            service.refuse(session, LINK, *refusal)
            return None
        return service.pair_session(session, LINK, request.name, server_proof)

    # Spent once in the deployment (another node may have used it first).
    return service.links.spend(request.link_id, code).addCallback(spent)


class ApprovalMethod:
    """
    Requests waiting for the operator (PairChallenge "approval") for a
    L{cairn.pairing.service.PairingService}: which sessions were told to
    wait, and the answer each gets once the operator decides.
    """

    def __init__(self, service):
        self.service = service
        #: Session ids told to wait for the operator's approval.
        self._awaiting = set()

    @defer.inlineCallbacks
    def file(self, session, request, record):
        """File C{session}'s request (C{record}: its peer's trust record or None) and tell it to wait."""
        service = self.service
        peer_id = session.remote_peer_id
        yield service.pending.file(session, request.name)
        if record is None or record.state != PENDING:
            log.info(
                "pairing request from {peer_id} {name}pending approval (cairn-server approve {peer_id})",
                peer_id=peer_id,
                name=f"({request.name}) " if request.name else "",
            )
        if not service.trust.is_paired(peer_id):  # approve() confirms by itself
            self._awaiting.add(session.session_id)
            service.send_reply(session, MessageType.PAIR_CHALLENGE, {"method": APPROVAL})

    def waiting(self, session) -> bool:
        """Whether C{session} was told to wait for the operator."""
        return session.session_id in self._awaiting

    def confirm(self, session):
        """The operator approved: C{session} is paired."""
        self._awaiting.discard(session.session_id)
        self.service.send_reply(session, MessageType.PAIR_CONFIRM, messages.pair_confirm(APPROVAL))

    def refuse(self, session):
        """The operator rejected C{session}'s request."""
        self._awaiting.discard(session.session_id)
        self.service.refuse(session, APPROVAL, PairRejectCode.REJECTED_BY_OPERATOR, "rejected by the operator")

    def forget(self, session):
        """Drop what is kept for C{session} (it ended)."""
        self._awaiting.discard(session.session_id)
