"""Remote policy servers in the action expert's place: openpi (websocket) and GR00T (ZMQ).

    refusals.py   why a tick publishes nothing: server_unreachable, server_error, bad_reply
                  (by cause: pickled, not_msgpack, ...), reply_timeout, bad_observation
    codec.py      msgpack with numpy arrays as each protocol puts them; strict, never pickle
    mapping.py    our views, state and prompt -> the server's keys; its actions -> our 7
    openpi.py     openpi's websocket protocol: the connection and a server
    gr00t.py      GR00T's ZMQ REQ/REP protocol: the connection and a server
    client.py     RemoteClient: the connection's state machine (connect, backoff, reconnect)
    policy.py     RemotePolicy behind the model interface; remote_runner: the expert's runner
                  (staleness rules, stamps, sequence, refusals) around it
    reference.py  the sim cell's scripted demonstrator as a server's policy (serve_policy)

The policy_client node (nodes/policy_client.py) is the shell; docs/remote_policy.md the guide.
"""
