"""`make bench` (`python -m bench`): the figures of SPEC §12, measured against the real server.

Not part of the test run. Every server is a `crm-bridge serve` subprocess (or the empty
Litestar endpoint it is compared with) on loopback, every CRM the stateful fake amoCRM of
`tests/fakes`, every load generator a separate process; nothing leaves the machine.

    config      bench TOML, subprocess environments and commands
    procs       servers as subprocesses: start, wait until ready, RSS, stop
    bodies      signed payment bodies with unique payment ids and customers
    wrk         closed-loop load with wrk (a Lua script signs each request)
    loadgen     open-loop load: requests at fixed times, latency from the scheduled time
    intake      sections 1-2: webhooks/s (closed loop), p50/p99 at a fixed rate
    calls       section 3: CRM calls per payment, by customer history
    burst       sections 4-5: burst drain against a rate-limited fake; resident memory
    report      the table on stdout and tests/bench/results/latest.json
"""
