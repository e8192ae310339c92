"""Back-sync (SPEC §8, issue 19): a manager moves a deal in a CRM, the platform hears it.

Pure building blocks, each tested on its own, and the two places they are wired:
`receive` (the route `POST /webhook/crm/{name}`: verify, parse, store, answer) and
`delivery` (the worker's step: decide once, then the signed callback). README "Back-sync".

- `events`: the neutral values: `InboundRequest` (what the route received), `DealMoved`
  (what one CRM event says), `Refused` / `Unauthorized` / `Malformed` (safe to log);
- `form`: PHP-style form bodies (`leads[status][0][id]=…`), as amoCRM and Bitrix24 send;
- `amocrm`, `bitrix24`, `hubspot`, `pipedrive`: each CRM's verification and parsing;
- `inbound`: one entry point over them, by CRM kind;
- `stage_read`: the stage of a deal whose event does not carry it (Bitrix24), read with
  the adapter's `get_deal`;
- `statuses`: stage → order status, the inverse of `order_stages`;
- `echo`: whether an event reports a move the bridge itself made (not forwarded);
- `decide`: the policy over one event: the callback to send, or why none;
- `callback`: the signed `order.status_changed` request to the platform;
- `config`: the settings these read (callback URL and secret, per-CRM event secrets).
"""
