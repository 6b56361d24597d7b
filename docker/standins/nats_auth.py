"""
Make NATS operator-mode (JWT) authentication for a trial cluster under
systemd, where `nsc` (the NATS tool for it) cannot be downloaded: an
operator, the system account, an account "CAIRN" with JetStream, and a user
of it, signed with the `nats-jwt` library (PyPI; not a dependency of
cairn).  Writes into DIRECTORY:

  nats-auth.conf  operator, system account and memory resolver, to
                  `include` from nats-server.conf
  nats.creds      the user's credentials (JWT and seed) for the cairn nodes,
                  mode 0600

    python3 nats_auth.py DIRECTORY

A stand-in for `nsc` on a test machine (see README.rst), not a way to run
a real deployment's accounts: the operator and account seeds are not kept.
"""

import os
import sys

from nats_jwt.v2 import claims
from nats_jwt.v2.operator_claims import OperatorClaims
from nats_jwt.v2.snippets import Operator

NO_LIMIT = -1
_serialize = claims.serialize


def _serialize_as_nats_reads(value):
    # nats-jwt 0.2.2 writes the account's JetStream memory limit as
    # "memory_storage"; NATS reads "mem_storage" (and, missing it, allows no
    # memory storage: cairn's presence bucket then fails with "insufficient
    # memory resources available").
    return _serialize(value).replace(b'"memory_storage":', b'"mem_storage":')


claims.serialize = _serialize_as_nats_reads


def main(directory):
    operator = Operator()
    operator.set_claims(OperatorClaims(operator.key_pair.public_key.decode(), "cairn-trial"))
    system = operator.create_account("SYS")
    cairn = operator.create_account("CAIRN")
    limits = cairn.claims.nats.limits
    limits.disk_storage = limits.memory_storage = limits.streams = limits.consumer = NO_LIMIT
    operator.claims.nats.system_account = system.claims.sub
    user = cairn.create_user("cairn-nodes")

    accounts = {a.claims.sub: a.jwt for a in (system, cairn)}
    with open(os.path.join(directory, "nats-auth.conf"), "w") as f:
        f.write(f"operator: {operator.jwt}\n")
        f.write(f"system_account: {system.claims.sub}\n")
        f.write("resolver: MEMORY\n")
        f.write("resolver_preload: {\n")
        for subject, token in accounts.items():
            f.write(f"  {subject}: {token}\n")
        f.write("}\n")
    creds = os.path.join(directory, "nats.creds")
    fd = os.open(creds, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(
            "-----BEGIN NATS USER JWT-----\n"
            f"{user.jwt}\n"
            "------END NATS USER JWT------\n\n"
            "-----BEGIN USER NKEY SEED-----\n"
            f"{user.key_pair.seed.decode()}\n"
            "------END USER NKEY SEED------\n"
        )


if __name__ == "__main__":
    main(sys.argv[1])
