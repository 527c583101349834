# Consumers: the named identities of `consumers:` (docs/auth.md), compiled once per config into a
# table the auth methods look credentials up in. A Consumer is what Exchange.consumer holds; its
# name bytes are what rate limiting keys by and what goes upstream in X-Consumer-Name.

cdef class Consumer:
    cdef readonly str name
    cdef readonly bytes name_bytes
    cdef readonly frozenset groups
    cdef readonly bytes groups_bytes     # "a,b" (sorted): the X-Consumer-Groups value
    cdef readonly object metadata

    def __init__(self, str name, groups=(), metadata=None):
        self.name = name
        self.name_bytes = name.encode()
        self.groups = frozenset(groups)
        self.groups_bytes = ",".join(sorted(self.groups)).encode()
        self.metadata = dict(metadata or {})

    def __repr__(self):
        return f"Consumer({self.name!r})"


cdef class ConsumerTable:
    """Every consumer by name, and the JWT bindings: (issuer, subject) -> consumer, with
    (issuer, None) for a consumer bound to every subject of an issuer. The API keys and basic-auth
    users live with the methods that check them (they are built from `credentials` here)."""
    cdef readonly dict by_name
    cdef readonly dict jwt
    cdef dict implicit

    def __init__(self, by_name=None, jwt=None):
        self.by_name = dict(by_name or {})
        self.jwt = dict(jwt or {})
        self.implicit = {}

    def implied(self, str name):
        """The consumer of that name, or one made for it (an htpasswd user no consumer names): one
        record per name, so every method of a config names the same object."""
        c = self.by_name.get(name)
        if c is None:
            c = self.implicit.get(name)
            if c is None:
                c = self.implicit[name] = Consumer(name)
        return c

    cpdef object for_jwt(self, str issuer, str subject):
        """The consumer a verified token's `iss` and `sub` name, or None."""
        c = self.jwt.get((issuer, subject))
        if c is None:
            c = self.jwt.get((issuer, None))
        return c

    def get(self, str name):
        return self.by_name.get(name)

    def __len__(self):
        return len(self.by_name)
