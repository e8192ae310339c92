"""Other platforms' webhooks (`[source.NAME]`), served at `POST /webhook/source/NAME`.

`config` reads the sections, `auth` checks a request, `body` decodes it, `mapping` turns
it into the canonical payment. From the stored event on, nothing differs from the
payment route: the same log, worker, CRMs and journal. The event keeps the raw body and
the source's name, and the worker maps it again on every attempt, so a corrected mapping
applies to events still queued.
"""
