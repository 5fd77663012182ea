"""Federation: this server as a peer of other Matrix servers (server-server API).

I/O lives here (discovery, the signing HTTP client, key fetching, the PDU intake, the
outbound queue); every rule it applies (PDU checks, authorization, state resolution,
signing and hashing) lives in :mod:`pocketserver.protocol`, pure.
"""
