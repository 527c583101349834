# cython: language_level=3
# The request path: one extension module. The files under _cy/ are included, as uvloop's loop.pyx
# does, so calls between parser, router, balancer, pool and proxy stay C calls.

include "_cy/consts.pxi"
include "_cy/http1.pyx"
include "_cy/pathnorm.pyx"
include "_cy/router.pyx"
include "_cy/balancer.pyx"
include "_cy/filters.pyx"
include "_cy/pool.pyx"
include "_cy/proxy.pyx"
include "_cy/metrics.pyx"
include "_cy/policy.pyx"
include "_cy/tracecontext.pyx"
include "_cy/exchange.pyx"
include "_cy/client.pyx"
include "_cy/upstream.pyx"
include "_cy/mirror.pyx"
include "_cy/plugin.pyx"
include "_cy/auth.pyx"
include "_cy/ratelimit.pyx"
include "_cy/linesink.pyx"
include "_cy/accesslog.pyx"
include "_cy/upstream_events.pyx"
# The test and bench entry points (_cy/testing.pyx), or nothing: written by setup.py from FASTGW_TESTING.
include "_cy/features.pxi"
