# Shared constants of the request path.

# Header kinds: what the proxy must do with a field, decided once per field while parsing.
cdef enum HeaderKind:
    HK_OTHER = 0
    HK_HOST
    HK_CONTENT_LENGTH
    HK_TRANSFER_ENCODING
    HK_CONNECTION
    HK_KEEP_ALIVE
    HK_PROXY_CONNECTION
    HK_TE
    HK_TRAILER
    HK_UPGRADE
    HK_EXPECT
    HK_X_FORWARDED_FOR
    HK_X_FORWARDED_PROTO
    HK_X_FORWARDED_HOST
    HK_X_REQUEST_ID
    HK_DROP          # dropped by policy: underscore names in drop mode

# Body framing of one message.
cdef enum Framing:
    FR_NONE = 0      # no body
    FR_LENGTH        # Content-Length
    FR_CHUNKED       # Transfer-Encoding: chunked
    FR_CLOSE         # until the peer closes (responses only)

cdef enum:
    PARSE_INCOMPLETE = -1
    PARSE_ERROR = -2
    MAX_CONNECTION_TOKENS = 16
    MAX_HOST_LEN = 255
    MAX_CHUNK_EXT = 4096           # one chunk-size line's extension
    MAX_CHUNK_EXT_TOTAL = 16384    # all chunk extensions of one message
    MAX_SPANS = 64
    MAX_REQUEST_ID_LEN = 200
