"""
The reusable parts of the management API's OpenAPI document: responses,
the peer id parameter and body, and the helpers that refer to them
(L{cairn.management.openapi_schemas} has the schemas,
L{cairn.management.openapi} the paths and the document).
"""

PEER_ID = {
    "type": "string",
    "description": (
        "Base58 multihash (0x12 0x20 + sha256 of the Ed25519 public key): 46 characters starting"
        " with Qm. Not every such string decodes to a sha2-256 multihash; one that does not is a 400."
    ),
    "pattern": "^Qm[1-9A-HJ-NP-Za-km-z]{44}$",
    "examples": ["QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"],
}

TIME = {"type": ["number", "null"], "description": "Unix time in seconds."}


def ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema, description):
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def errors(*codes):
    return {str(code): {"$ref": f"#/components/responses/{ERROR_RESPONSES[code]}"} for code in codes}


ERROR_RESPONSES = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "NotFound",
    413: "PayloadTooLarge",
    500: "InternalError",
    507: "InsufficientStorage",
}

RESPONSES = {
    "BadRequest": json_content(ref("Error"), "Malformed request: bad JSON, missing or invalid field."),
    "Unauthorized": {
        "description": "Missing or invalid bearer token.",
        "headers": {
            "WWW-Authenticate": {"schema": {"type": "string", "const": 'Bearer realm="cairn"'}},
        },
        "content": {"application/json": {"schema": ref("Error")}},
    },
    "NotFound": json_content(ref("Error"), "No such peer in the required state, or no such endpoint."),
    "PayloadTooLarge": json_content(ref("Error"), "The request body is over 64 KiB."),
    "InternalError": json_content(ref("Error"), "Unexpected failure (logged on the server; no details sent)."),
    "InsufficientStorage": json_content(
        ref("Error"), "Done in part: a store was full; the error says what was done and what was not."
    ),
}

PEER_ID_PARAMETER = {
    "name": "peer_id",
    "in": "path",
    "required": True,
    "schema": ref("PeerId"),
}

PEER_ID_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": ref("PeerIdRequest"),
            "example": {"peer_id": "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"},
        }
    },
}
