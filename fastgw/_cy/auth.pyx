# Authentication methods: each a request-phase policy that looks for its credential, checks it and
# names the consumer (Exchange.consumer / consumer_name). Alone on a route a method answers 401 for a
# missing or bad credential; a combinator (any-of, all-of) calls authenticate() itself and decides.
#
# authenticate() returns one of:
#   AUTH_OK      the credential is good (the consumer, if the method knows one, is set)
#   AUTH_ABSENT  the request carries no credential of this method
#   AUTH_DENIED  a credential is there and is not good
#   AUTH_PAUSED  asynchronous work started (a JWKS fetch, an auth service call); when it ends the
#                method calls self.auth_done(ex, result), which goes on as the synchronous result
#                would have

cdef enum:
    AUTH_OK = 0
    AUTH_ABSENT = 1
    AUTH_DENIED = 2
    AUTH_PAUSED = 3


cdef class AuthMethod(Policy):
    cdef bytes challenge             # whole "WWW-Authenticate: ...\r\n" line(s) of a 401, or b""

    def __init__(self, str name, str type, str key, config=None, bytes challenge=b""):
        Policy.__init__(self, name, type, key, config)
        self.phases = PH_REQUEST
        self.challenge = challenge

    cdef int authenticate(self, Exchange ex) except -1:
        return AUTH_ABSENT

    cdef int on_request(self, Exchange ex) except -1:
        cdef int r = self.authenticate(ex)
        if r == AUTH_OK:
            return P_CONTINUE
        if r == AUTH_PAUSED:
            return P_PAUSED
        self.refuse(ex, r)
        return P_ANSWERED

    cdef void refuse(self, Exchange ex, int result) except *:
        ex.answer_json(401, b"unauthorized" if result == AUTH_DENIED else b"authentication required",
                       self.challenge, RF_UNAUTHORIZED)

    cdef void auth_done(self, Exchange ex, int result) except *:
        """The end of a paused authenticate(): the exchange goes on, or is refused."""
        if result != AUTH_OK:
            self.refuse(ex, result)
        ex.resume()
