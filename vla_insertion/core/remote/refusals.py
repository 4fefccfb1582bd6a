"""Why a remote policy's tick publishes nothing: the refusal reasons and their exceptions.

Each is a `core.expert.staleness.PolicyRefusal`: the runner counts it as `drops.<reason>` like
the staleness rules, and the tick publishes nothing (the executor's watchdog holds the arm when
no chunk comes for `chunk_timeout_s`).

    server_unreachable  no connection: never made, refused, closed, or dropped after a timeout
    server_error        the server said it failed (openpi: a text frame; GR00T: an `error` map)
    bad_reply           a reply that is not a chunk: not msgpack, pickled, a bad array, a missing
                        key, a wrong shape, non-finite values (`BadReply.cause` says which)
    reply_timeout       no reply within reply_timeout_s (the connection is dropped: a late reply
                        would answer the next request)
"""
from __future__ import annotations

from vla_insertion.core.expert.staleness import BAD_OBSERVATION, PolicyRefusal

SERVER_UNREACHABLE = 'server_unreachable'
SERVER_ERROR = 'server_error'
BAD_REPLY = 'bad_reply'
REPLY_TIMEOUT = 'reply_timeout'
# What a remote policy adds to the staleness rules' reasons (reported from 0 by the runner).
REMOTE_REFUSALS = (SERVER_UNREACHABLE, SERVER_ERROR, BAD_REPLY, REPLY_TIMEOUT, BAD_OBSERVATION)

# Causes of a bad reply (BadReply.cause, counted as `bad_reply.<cause>` in /diagnostics).
PICKLED = 'pickled'            # pickle bytes, or an array that only pickle could rebuild
NOT_MSGPACK = 'not_msgpack'    # not one complete msgpack value
OVERSIZED = 'oversized'        # more bytes than max_reply_bytes
BAD_ARRAY = 'bad_array'        # an array map or .npy that does not describe a numeric array
MISSING_KEY = 'missing_key'    # the mapping's action key is not in the reply
BAD_SHAPE = 'bad_shape'        # not (horizon, dims), fewer actions or dims than mapped
NON_FINITE = 'non_finite'      # NaN or inf among the mapped actions
BAD_TYPE = 'bad_type'          # a reply that is not a map of arrays where one is expected
REPLY_CAUSES = (PICKLED, NOT_MSGPACK, OVERSIZED, BAD_ARRAY, MISSING_KEY, BAD_SHAPE, NON_FINITE,
                BAD_TYPE)


class ServerUnreachable(PolicyRefusal):
    def __init__(self, detail: str) -> None:
        super().__init__(SERVER_UNREACHABLE, detail)


class ServerError(PolicyRefusal):
    def __init__(self, detail: str) -> None:
        super().__init__(SERVER_ERROR, detail)


class ReplyTimeout(PolicyRefusal):
    def __init__(self, detail: str) -> None:
        super().__init__(REPLY_TIMEOUT, detail)


class BadReply(PolicyRefusal):
    """A reply that does not decode into a chunk; `cause` is one of REPLY_CAUSES."""

    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(BAD_REPLY, f'{cause}: {detail}')
        self.cause = cause


class BadObservation(PolicyRefusal):
    """Our inputs cannot be mapped (a view that does not decode, a missing state part)."""

    def __init__(self, detail: str) -> None:
        super().__init__(BAD_OBSERVATION, detail)
