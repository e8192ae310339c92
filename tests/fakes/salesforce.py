"""A stateful fake of one Salesforce org's REST API (what the bridge uses of it): the OAuth
token endpoint, SOQL queries, SOSL searches, sObject rows and describes, the UI API's stage
values per record type, Composite and Composite Batch, the daily API allocation.

It answers like Salesforce where the bridge depends on it:
- errors are arrays of `{message, errorCode, fields}`; record checks are
  `tests.fakes.salesforce_org`, SOQL/SOSL semantics `tests.fakes.salesforce_soql`;
- OAuth 2.0 (https://help.salesforce.com/s/articleView?id=xcloud.remoteaccess_oauth_jwt_flow.htm):
  the JWT bearer grant checks the RS256 signature against the app's certificate, `iss`
  (consumer key), `aud` (`audience`), `exp` and that `sub` is a pre-approved user; the
  client-credentials grant checks id and secret and is refused on the generic login hosts
  (it needs the My Domain URL). Neither answers a refresh token or `expires_in`; a session
  lives `session_timeout` seconds after its last use, then → 401 INVALID_SESSION_ID;
- the daily allocation (`daily_limit`): every `/services/data/vXX.X/…` call counts one
  (a Composite one in all, a Composite Batch one per sub-request; the versions list and the
  token endpoint nothing) and the answer carries `Sforce-Limit-Info: api-usage=N/LIMIT`;
  once spent → 403 REQUEST_LIMIT_EXCEEDED, nothing applied
  (https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/headers_api_usage.htm);
- Composite (https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_composite_composite_post.htm):
  up to 25 sub-requests (5 queries), sObject and Query resources only, `@{ref.path}`
  references, `allOrNone` rolls every write back and answers the other sub-requests 400
  PROCESSING_HALTED; Composite Batch: up to 25 independent sub-requests (Search allowed),
  `haltOnError` → 412 BATCH_PROCESSING_HALTED for the rest;
- query answers page by `query_batch_size` rows through `nextRecordsUrl`;
- sObject Collections (https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_composite_sobjects_collections_create.htm,
  …_collections_delete.htm): `POST /composite/sobjects` creates up to 200 records of any
  type, `DELETE /composite/sobjects?ids=…` deletes up to 200; HTTP 200 with one
  `{id, success, errors}` per record; `allOrNone` rolls every record back when one fails
  (the others answer ALL_OR_NONE_OPERATION_ROLLED_BACK). Composite takes them as
  sub-requests.

Set up and inspect (no call is logged, no allocation used): `add_contact`, `add_deal`,
`move_deal`, `add_note`, `contacts()`, `contact(id)`, `deals()`, `deal(id)`,
`deal_field`, `contact_field`, `deal_contacts`, `notes(deal)`, `searches()`; orders:
`add_company`, `companies()`, `add_product` (a Product2 with an entry in a price book),
`line_items(deal)`. Credentials:
`private_key_pem` (what the bridge signs with; `private_key_file` holds it),
`issue_session()`, `expire_sessions()`, `tokens_minted`. `refusals` lists every error
answered, sub-requests' too (what a conformance check wants empty). Faults, the call log
and the ASGI side are `FakeService`'s.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bridge.settings import CrmConfig, load_file_config
from tests.fakes.salesforce_org import (
    ACCOUNT_INN,
    ORG_ID,
    RECORD_TYPES,
    STANDARD_PRICEBOOK,
    USER_ID,
    Org,
    sf_datetime,
)
from tests.fakes.salesforce_soql import Evaluator, parse_soql, run_sosl, sf_error
from tests.fakes.service import ApiError, FakeRequest, FakeResponse, FakeService, JSONDict

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "etc" / "crm-salesforce.example.toml"
VERSIONS = ("64.0", "65.0", "66.0", "67.0", "68.0")
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
LOGIN_HOSTS = ("login.salesforce.com", "test.salesforce.com")
SITE, YANDEX, PARTNERS = (rt.id for rt in RECORD_TYPES)
V = r"/services/data/v(\d+\.\d)"
ID = r"([A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?)"
_REFERENCE = re.compile(r"@\{([A-Za-z0-9_]+)\.([^}]+)\}")
_HALTED = "The transaction was rolled back since another operation in the same transaction failed."
_BATCH_HALTED = [
    {
        "errorCode": "BATCH_PROCESSING_HALTED",
        "message": "The transaction was rolled back since a previous request was unsuccessful.",
    }
]


class FakeSalesforce(FakeService):
    """The org of `etc/crm-salesforce.example.toml` (or `config`), empty of records."""

    name = "fake Salesforce"
    success_content_type = "application/json;charset=UTF-8"

    def __init__(
        self,
        config: CrmConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        daily_limit: int = 15_000,
        session_timeout: float = 7200,
        consumer_key: str = "3MVG9fake.consumer.key",
        client_secret: str = "fake-client-secret",  # noqa: S107
        usernames: tuple[str, ...] = ("bridge-integration@example.com",),
        audience: str = "https://login.salesforce.com",
        client_credentials: bool = True,
        index_lag: float = 0.0,
        record_types: bool = True,
        query_batch_size: int = 2000,
    ) -> None:
        super().__init__(rate_limit=1_000_000, monotonic=monotonic)  # no per-second limit
        self.config = config or load_file_config(EXAMPLE_CONFIG).crm["salesforce"]
        self.org = Org(self.config, clock, index_lag=index_lag, record_types=record_types)
        self.clock = clock
        self.daily_limit, self.api_used = daily_limit, 0
        self.session_timeout = session_timeout
        self.consumer_key, self.client_secret = consumer_key, client_secret
        self.usernames, self.audience = usernames, audience.rstrip("/")
        self.client_credentials = client_credentials
        self.query_batch_size = query_batch_size
        self.tokens_minted = 0
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._sessions: dict[str, float] = {}  # token → last used
        self._key_file: str | None = None
        self._cursors: dict[str, list[JSONDict]] = {}
        self._extra_calls = 0
        # Every refusal (a whole request's or a sub-request's): a conformance check for
        # tests, which expect none where the bridge's requests are well-formed.
        self.refusals: list[tuple[str, str, Any]] = []
        self.routes = [
            ("POST", re.compile(r"/services/oauth2/token"), self._token),
            ("GET", re.compile(r"/services/data/?"), self._versions),
            ("GET", re.compile(rf"{V}/query/?"), self._query),
            ("GET", re.compile(rf"{V}/query/([A-Za-z0-9]+-\d+)"), self._query_more),
            ("GET", re.compile(rf"{V}/search/?"), self._search),
            ("GET", re.compile(rf"{V}/limits/?"), self._limits),
            ("GET", re.compile(rf"{V}/sobjects/(\w+)/describe/?"), self._describe),
            ("POST", re.compile(rf"{V}/sobjects/(\w+)/?"), self._create),
            ("GET", re.compile(rf"{V}/sobjects/(\w+)/{ID}"), self._read),
            ("PATCH", re.compile(rf"{V}/sobjects/(\w+)/{ID}"), self._update),
            ("DELETE", re.compile(rf"{V}/sobjects/(\w+)/{ID}"), self._delete),
            (
                "GET",
                re.compile(rf"{V}/ui-api/object-info/Opportunity/picklist-values/{ID}/StageName"),
                self._stage_values,
            ),
            ("POST", re.compile(rf"{V}/composite/?"), self._composite),
            ("POST", re.compile(rf"{V}/composite/sobjects/?"), self._collection_create),
            ("DELETE", re.compile(rf"{V}/composite/sobjects/?"), self._collection_delete),
            ("POST", re.compile(rf"{V}/composite/batch/?"), self._batch),
        ]

    # ---- credentials ----------------------------------------------------------------

    @property
    def private_key_pem(self) -> bytes:
        """The key whose certificate is uploaded to the External Client App."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def private_key_file(self) -> str:
        """`private_key_pem` in a file of its own (what SALESFORCE_PRIVATE_KEY_FILE names),
        written once and removed when the interpreter exits."""
        if self._key_file is None:
            handle, name = tempfile.mkstemp(prefix="fake-salesforce-", suffix=".key")
            with os.fdopen(handle, "wb") as file:
                file.write(self.private_key_pem)
            atexit.register(os.unlink, name)
            self._key_file = name
        return self._key_file

    @property
    def client_id(self) -> str:
        """The consumer key, by the name every fake's OAuth client id has."""
        return self.consumer_key

    def issue_session(self) -> str:
        token = f"{ORG_ID}!AQ{secrets.token_urlsafe(24)}"
        with self._lock:
            self._sessions[token] = self.clock()
        return token

    def expire_sessions(self) -> None:
        """Every session times out (or an admin revoked them): the next call answers 401."""
        with self._lock:
            self._sessions = dict.fromkeys(self._sessions, float("-inf"))

    def authorise(self, request: FakeRequest) -> FakeResponse | None:
        if not re.match(V, request.path):
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        used = self._sessions.get(token) if scheme.lower() == "bearer" else None
        if used is None or self.clock() - used >= self.session_timeout:
            return sf_error(401, "INVALID_SESSION_ID", "Session expired or invalid").response
        self._sessions[token] = self.clock()  # a session lives on while it is used
        version = re.match(V, request.path)
        if version is not None and version.group(1) not in VERSIONS:
            return sf_error(404, "NOT_FOUND", "The requested resource does not exist").response
        return None

    # ---- setup and inspection -------------------------------------------------------

    def add_contact(self, *, updated_at: float | None = None, **values: Any) -> str:
        """A contact as typed in Salesforce (fields by API name); returns its id."""
        with self._lock:
            row = self.org.create("Contact", {"LastName": "Contact", **values}, seeded=True)
            if updated_at is not None:
                row["LastModifiedDate"] = sf_datetime(updated_at)
            return str(row["Id"])

    def add_deal(
        self,
        contact_id: str | None = None,
        *,
        name: str = "Сделка",
        record_type: str | None = SITE,
        stage: str | None = None,
        updated_at: float | None = None,
        deleted: bool = False,
        **values: Any,
    ) -> str:
        """An opportunity of `record_type` (its first stage unless `stage`), linked to
        `contact_id` by a primary contact role."""
        with self._lock:
            stage = stage or self.org.stages_of(record_type)[0]
            body = {"Name": name, "StageName": stage, "CloseDate": "2026-12-31", **values}
            if record_type is not None and self.org.record_types:
                body["RecordTypeId"] = record_type
            deal = self.org.create("Opportunity", body, seeded=True)
            if contact_id is not None:
                role = {"OpportunityId": deal["Id"], "ContactId": contact_id, "IsPrimary": True}
                self.org.create("OpportunityContactRole", role)
            if updated_at is not None:
                deal["LastModifiedDate"] = sf_datetime(updated_at)
            deal["IsDeleted"] = deleted
            return str(deal["Id"])

    def move_deal(
        self, deal_id: str, stage: str, *, record_type: str | None = None, deleted: bool = False
    ) -> None:
        """What a manager does: move the opportunity to another stage (or record type),
        or delete it."""
        with self._lock:
            body: dict[str, Any] = {"StageName": stage}
            if record_type is not None:
                body["RecordTypeId"] = record_type
            self.org.update("Opportunity", deal_id, body)
            if deleted:
                self.org.delete("Opportunity", deal_id)

    def add_note(self, deal_id: str, body: str, title: str = "Заметка") -> str:
        with self._lock:
            return str(
                self.org.create("Note", {"ParentId": deal_id, "Title": title, "Body": body})["Id"]
            )

    def add_company(self, name: str, inn: str = "", **values: Any) -> str:
        """An Account as typed in Salesforce, its INN in the configured field."""
        with self._lock:
            inn_field = self.config.order_fields.company_inn or ACCOUNT_INN
            body = {"Name": name, **values}
            if inn_field and inn:
                body[inn_field] = inn
            return str(self.org.create("Account", body, seeded=True)["Id"])

    def companies(self) -> list[JSONDict]:
        return self._public_rows("Account")

    def add_product(
        self, code: str, name: str, price: float, pricebook: str = STANDARD_PRICEBOOK
    ) -> str:
        """An active product with an active entry in `pricebook`; returns the entry id."""
        with self._lock:
            product = self.org.create(
                "Product2", {"Name": name, "ProductCode": code, "IsActive": True}
            )
            entry = {
                "Pricebook2Id": pricebook,
                "Product2Id": product["Id"],
                "UnitPrice": price,
                "IsActive": True,
            }
            return str(self.org.create("PricebookEntry", entry)["Id"])

    def line_items(self, deal_id: str) -> list[JSONDict]:
        with self._lock:
            return [_public(row) for row in self.org.lines_of(deal_id)]

    def contacts(self) -> list[JSONDict]:
        return self._public_rows("Contact")

    def deals(self) -> list[JSONDict]:
        return self._public_rows("Opportunity")

    def _public_rows(self, sobject: str) -> list[JSONDict]:
        with self._lock:
            return [_public(row) for row in self.org.rows(sobject)]

    def contact(self, contact_id: str) -> JSONDict:
        with self._lock:
            return _public(self.org.records["Contact"][contact_id])

    def deal(self, deal_id: str) -> JSONDict:
        with self._lock:
            return _public(self.org.records["Opportunity"][deal_id])

    def deal_field(self, deal_id: str, name: str) -> Any:
        return self.deal(deal_id).get(name)

    def contact_field(self, contact_id: str, name: str) -> Any:
        return self.contact(contact_id).get(name)

    def deal_contacts(self, deal_id: str) -> list[str]:
        with self._lock:
            roles = self.org.rows("OpportunityContactRole")
            return sorted(str(r["ContactId"]) for r in roles if r["OpportunityId"] == deal_id)

    def notes(self, deal_id: str) -> list[str]:
        """Note bodies on the opportunity, oldest first."""
        with self._lock:
            rows = [r for r in self.org.rows("Note") if r["ParentId"] == deal_id]
            return [str(r["Body"] or "") for r in sorted(rows, key=lambda r: r["Id"])]

    def searches(self) -> int:
        """SOSL searches received, alone or inside a Composite Batch."""
        return sum(
            1
            for call in self.calls
            if "/search" in call.path
            or (call.path.endswith("/composite/batch") and "/search?" in json.dumps(call.json))
        )

    # ---- the allocation and the answers' shape ------------------------------------

    def _serve(self, request: FakeRequest) -> FakeResponse:
        counted = re.match(V, request.path) is not None
        if counted and self.api_used >= self.daily_limit:
            self.throttled += 1
            response = sf_error(
                403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."
            ).response
        else:
            self._extra_calls = 0
            response = super()._serve(request)
            if response.status >= 400:
                self.refusals.append((request.method, request.path, response.body))
            if counted and response.status != 401:
                self.api_used += 1 + self._extra_calls
        if counted:
            usage = f"api-usage={self.api_used}/{self.daily_limit}"
            response.headers["Sforce-Limit-Info"] = usage
        return response

    def _headers(self, response: FakeResponse) -> dict[str, str]:
        headers = dict(response.headers)
        if response.body is not None:  # Salesforce's errors are plain JSON too
            headers.setdefault("content-type", self.success_content_type)
        return headers

    # ---- OAuth ----------------------------------------------------------------------

    def _token(self, request: FakeRequest) -> FakeResponse:
        if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
            return _oauth_error("invalid_request", "must use application/x-www-form-urlencoded")
        form = dict(parse_qsl(request.body.decode(), keep_blank_values=True))
        grant = form.get("grant_type")
        if grant == JWT_GRANT:
            refused = self._check_jwt(form.get("assertion", ""))
        elif grant == "client_credentials":
            refused = self._check_client(form, request)
        else:
            refused = _oauth_error("unsupported_grant_type", "grant type not supported")
        if refused is not None:
            return refused
        self.tokens_minted += 1
        token = self.issue_session()
        signature = base64.b64encode(secrets.token_bytes(32)).decode()
        answer = {
            "access_token": token,
            "scope": "api",
            "instance_url": self._instance_url(request),
            "id": f"{self.audience}/id/{ORG_ID}/{USER_ID}",
            "token_type": "Bearer",
            "issued_at": str(int(self.clock() * 1000)),
            "signature": signature,
        }
        return FakeResponse(200, answer)

    def _instance_url(self, request: FakeRequest) -> str:
        """The org's own host: the one asked, unless that was a generic login host."""
        if urlsplit(request.origin).hostname in LOGIN_HOSTS:
            return "https://example.my.salesforce.com"
        return request.origin

    def _check_jwt(self, assertion: str) -> FakeResponse | None:
        try:
            header_b64, payload_b64, signature_b64 = assertion.split(".")
            header = json.loads(_unb64(header_b64))
            claims = json.loads(_unb64(payload_b64))
            signed = f"{header_b64}.{payload_b64}".encode()
            if header.get("alg") != "RS256":
                raise ValueError("alg")
            self._key.public_key().verify(
                _unb64(signature_b64), signed, padding.PKCS1v15(), hashes.SHA256()
            )
        except (ValueError, InvalidSignature, TypeError):
            return _oauth_error("invalid_grant", "invalid assertion")
        if claims.get("iss") != self.consumer_key:
            return _oauth_error("invalid_client_id", "client identifier invalid")
        if str(claims.get("aud", "")).rstrip("/") != self.audience:
            return _oauth_error("invalid_grant", "audience is invalid")
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= self.clock() or exp > self.clock() + 300:
            return _oauth_error("invalid_grant", "expired authorization code")
        if claims.get("sub") not in self.usernames:
            return _oauth_error("invalid_grant", "user hasn't approved this consumer")
        return None

    def _check_client(self, form: dict[str, str], request: FakeRequest) -> FakeResponse | None:
        if urlsplit(request.origin).hostname in LOGIN_HOSTS:
            # [UNSURE of the wording] the flow is refused outside the org's My Domain.
            return _oauth_error("invalid_grant", "request not supported on this domain")
        if (
            form.get("client_id") != self.consumer_key
            or form.get("client_secret") != self.client_secret
        ):
            return _oauth_error("invalid_client", "invalid client credentials")
        if not self.client_credentials:
            return _oauth_error("invalid_grant", "no client credentials user enabled")
        return None

    # ---- REST resources -------------------------------------------------------------

    def _versions(self, request: FakeRequest) -> FakeResponse:
        body = [{"label": f"v{v}", "url": f"/services/data/v{v}", "version": v} for v in VERSIONS]
        return FakeResponse(200, body)

    def _limits(self, request: FakeRequest, version: str) -> FakeResponse:
        remaining = max(self.daily_limit - self.api_used - 1, 0)
        return FakeResponse(
            200, {"DailyApiRequests": {"Max": self.daily_limit, "Remaining": remaining}}
        )

    def _query(self, request: FakeRequest, version: str) -> FakeResponse:
        soql = request.one("q")
        if not soql:
            raise sf_error(400, "MALFORMED_QUERY", "A query string has to be specified")
        rows = Evaluator(self.org).run(parse_soql(soql))
        return FakeResponse(200, self._page(version, rows))

    def _query_more(self, request: FakeRequest, version: str, locator: str) -> FakeResponse:
        rows = self._cursors.pop(locator, None)
        if rows is None:
            raise sf_error(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return FakeResponse(200, self._page(version, rows))

    def _page(self, version: str, rows: list[JSONDict]) -> JSONDict:
        batch, rest = rows[: self.query_batch_size], rows[self.query_batch_size :]
        answer: JSONDict = {"totalSize": len(rows), "done": not rest, "records": batch}
        if rest:
            locator = f"01gQy{secrets.token_hex(6)}-{self.query_batch_size}"
            self._cursors[locator] = rest
            answer["nextRecordsUrl"] = f"/services/data/v{version}/query/{locator}"
        return answer

    def _search(self, request: FakeRequest, version: str) -> FakeResponse:
        sosl = request.one("q")
        return FakeResponse(200, {"searchRecords": run_sosl(self.org, sosl)})

    def _describe(self, request: FakeRequest, version: str, sobject: str) -> FakeResponse:
        return FakeResponse(200, self.org.describe(self.org.canonical_object(sobject)))

    def _stage_values(self, request: FakeRequest, version: str, record_type: str) -> FakeResponse:
        return FakeResponse(200, self.org.stage_values(record_type))

    def _create(self, request: FakeRequest, version: str, sobject: str) -> FakeResponse:
        row = self.org.create(self.org.canonical_object(sobject), request.json())
        location = f"/services/data/v{version}/sobjects/{sobject}/{row['Id']}"
        return FakeResponse(
            201, {"id": row["Id"], "success": True, "errors": []}, {"Location": location}
        )

    def _read(
        self, request: FakeRequest, version: str, sobject: str, record_id: str
    ) -> FakeResponse:
        canonical = self.org.canonical_object(sobject)
        row = self.org.live(canonical, record_id)
        wanted = [n for v in request.all("fields") for n in v.split(",") if n]
        names = [self.org.canonical_field(canonical, n) for n in wanted] or [
            f.name for f in self.org.fields[canonical]
        ]
        body: JSONDict = {"attributes": {"type": canonical, "url": row["__url"]}}
        body.update({name: row.get(name) for name in names})
        return FakeResponse(200, body)

    def _update(
        self, request: FakeRequest, version: str, sobject: str, record_id: str
    ) -> FakeResponse:
        self.org.update(self.org.canonical_object(sobject), record_id, request.json())
        return FakeResponse(204)

    def _delete(
        self, request: FakeRequest, version: str, sobject: str, record_id: str
    ) -> FakeResponse:
        self.org.delete(self.org.canonical_object(sobject), record_id)
        return FakeResponse(204)

    # ---- sObject Collections --------------------------------------------------------

    def _collection_create(self, request: FakeRequest, version: str) -> FakeResponse:
        body = request.json()
        _known_keys(body, {"allOrNone", "records"})
        records = body.get("records")
        if not isinstance(records, list) or not 0 < len(records) <= 200:
            raise sf_error(400, "INVALID_INPUT", "records takes 1 to 200 records")
        all_or_none = body.get("allOrNone") is True
        before = self.org.snapshot()
        results: list[JSONDict] = []
        for record in records:
            kind = (
                (record.get("attributes") or {}).get("type") if isinstance(record, dict) else None
            )
            if not isinstance(kind, str):
                raise sf_error(400, "INVALID_INPUT", "each record needs attributes.type")
            values = {k: v for k, v in record.items() if k != "attributes"}
            try:
                row = self.org.create(self.org.canonical_object(kind), values)
            except ApiError as error:
                results.append({"success": False, "errors": _collection_errors(error)})
                continue
            results.append({"id": row["Id"], "success": True, "errors": []})
        return FakeResponse(200, self._settled(results, all_or_none, before))

    def _collection_delete(self, request: FakeRequest, version: str) -> FakeResponse:
        ids = [i for value in request.all("ids") for i in value.split(",") if i]
        if not 0 < len(ids) <= 200:
            raise sf_error(400, "INVALID_INPUT", "ids takes 1 to 200 record ids")
        all_or_none = request.one("allOrNone") == "true"
        before = self.org.snapshot()
        results: list[JSONDict] = []
        for record_id in ids:
            sobject = next(
                (name for name, rows in self.org.records.items() if record_id in rows), None
            )
            try:
                if sobject is None:
                    raise sf_error(404, "ENTITY_IS_DELETED", "entity is deleted")
                self.org.delete(sobject, record_id)
            except ApiError as error:
                results.append(
                    {"id": record_id, "success": False, "errors": _collection_errors(error)}
                )
                continue
            results.append({"id": record_id, "success": True, "errors": []})
        return FakeResponse(200, self._settled(results, all_or_none, before))

    def _settled(self, results: list[JSONDict], all_or_none: bool, before: Any) -> list[JSONDict]:
        """With allOrNone one refused record rolls the others back."""
        if not all_or_none or all(r["success"] for r in results):
            return results
        self.org.restore(before)
        rolled = [
            {
                "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                "message": "Record rolled back because not all records were valid and the"
                " request was using AllOrNone header",
                "fields": [],
            }
        ]
        return [
            r if not r["success"] else {**r, "id": None, "success": False, "errors": rolled}
            for r in results
        ]

    # ---- Composite and Composite Batch ----------------------------------------------

    def _composite(self, request: FakeRequest, version: str) -> FakeResponse:
        body = request.json()
        _known_keys(body, {"allOrNone", "collateSubrequests", "compositeRequest"})
        steps = body.get("compositeRequest") if isinstance(body, dict) else None
        if not isinstance(steps, list) or not 0 < len(steps) <= 25:
            raise sf_error(400, "INVALID_INPUT", "compositeRequest takes 1 to 25 sub-requests")
        for step in steps:
            _known_keys(step, {"body", "httpHeaders", "method", "referenceId", "url"})
        refs = [step.get("referenceId") if isinstance(step, dict) else None for step in steps]
        if any(not isinstance(r, str) or not re.fullmatch(r"[A-Za-z0-9_]+", r) for r in refs):
            raise sf_error(
                400,
                "INVALID_INPUT",
                "each sub-request needs a referenceId of letters, digits and _",
            )
        if len(set(refs)) != len(refs):
            raise sf_error(400, "INVALID_INPUT", "Duplicate ReferenceId provided in the request")
        if sum(1 for step in steps if "/query" in str(step.get("url", ""))) > 5:
            raise sf_error(400, "INVALID_INPUT", "A composite request can include up to 5 queries")
        all_or_none = body.get("allOrNone") is True
        before = self.org.snapshot()
        done: dict[str, Any] = {}
        results: list[JSONDict] = []
        failed = False
        for step in steps:
            ref = step["referenceId"]
            if failed and all_or_none:
                results.append(_halted(ref))
                continue
            status, answer, headers = self._sub_request(step, version, done)
            if status < 400:
                done[ref] = answer
            else:
                failed = True
            results.append(_sub_result(ref, status, answer, headers))
        if failed and all_or_none:
            self.org.restore(before)
            results = [
                r if r["httpStatusCode"] >= 400 else _halted(r["referenceId"]) for r in results
            ]
        return FakeResponse(200, {"compositeResponse": results})

    def _sub_request(
        self, step: JSONDict, version: str, done: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        try:
            url = _resolve(str(step.get("url", "")), done)
            body = _resolve(step.get("body"), done)
        except KeyError as missing:
            message = f"Invalid reference specified. No value for {missing.args[0]} found."
            return 400, [{"errorCode": "PROCESSING_HALTED", "message": message}], {}
        parts = urlsplit(url)
        if not re.match(rf"{V}/(sobjects|query|composite/sobjects)(/|$)", parts.path):
            message = f"The composite request does not support this resource: {parts.path}"
            return 400, [{"errorCode": "INVALID_INPUT", "message": message}], {}
        return self._dispatch(str(step.get("method", "")).upper(), parts.path, parts.query, body)

    def _batch(self, request: FakeRequest, version: str) -> FakeResponse:
        body = request.json()
        _known_keys(body, {"batchRequests", "haltOnError"})
        steps = body.get("batchRequests") if isinstance(body, dict) else None
        if not isinstance(steps, list) or not 0 < len(steps) <= 25:
            raise sf_error(400, "INVALID_INPUT", "batchRequests takes 1 to 25 sub-requests")
        halt = body.get("haltOnError") is True
        results: list[JSONDict] = []
        halted = False
        for step in steps:
            _known_keys(
                step, {"method", "url", "richInput", "binaryPartName", "binaryPartNameAlias"}
            )
            url = str(step.get("url", ""))
            found = re.fullmatch(r"/?(v\d+\.\d/.*)", url)
            if halted:
                results.append({"statusCode": 412, "result": _BATCH_HALTED})
                continue
            if found is None:
                raise sf_error(400, "INVALID_BATCH_REQUEST", f"Invalid url: {url}")
            parts = urlsplit(f"/services/data/{found.group(1)}")
            payload = step.get("richInput")
            status, answer, _ = self._dispatch(
                str(step.get("method", "")).upper(), parts.path, parts.query, payload
            )
            results.append({"statusCode": status, "result": answer})
            halted = halt and status >= 400
        self._extra_calls = len(steps) - 1  # each sub-request counts against the allocation
        has_errors = any(r["statusCode"] >= 400 for r in results)
        return FakeResponse(200, {"hasErrors": has_errors, "results": results})

    def _dispatch(
        self, method: str, path: str, query: str, body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        """Run one sub-request through the same routes as a top-level request."""
        raw = json.dumps(body).encode() if body is not None else b""
        sub = FakeRequest(
            method, path, parse_qsl(query, keep_blank_values=True), {}, raw, self.origin
        )
        for route_method, pattern, handler in self.routes:
            match = pattern.fullmatch(path)
            if match is None or route_method != method:
                continue
            try:
                response = handler(sub, *match.groups())
            except ApiError as error:
                response = error.response
            return response.status, response.body, dict(response.headers)
        return (
            404,
            [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}],
            {},
        )


def _collection_errors(error: ApiError) -> list[JSONDict]:
    """A record's refusal as sObject Collections word it (`statusCode`, not `errorCode`)."""
    items = error.response.body if isinstance(error.response.body, list) else []
    return [
        {
            "statusCode": item.get("errorCode"),
            "message": item.get("message"),
            "fields": item.get("fields", []),
        }
        for item in items
    ]


def _known_keys(value: Any, known: set[str]) -> None:
    """Salesforce's JSON reader refuses a field the request type does not have."""
    if not isinstance(value, dict):
        raise sf_error(400, "JSON_PARSER_ERROR", "Cannot deserialize instance: expected an object")
    unknown = sorted(set(value) - known)
    if unknown:
        message = f'Unrecognized field "{unknown[0]}" (not marked as ignorable)'
        raise sf_error(400, "JSON_PARSER_ERROR", message)


def _resolve(value: Any, done: dict[str, Any]) -> Any:
    """`@{ref.id}` / `@{ref.records[0].Id}` replaced by what the sub-request `ref` answered."""
    if isinstance(value, str):
        return _REFERENCE.sub(lambda m: str(_path(done[m.group(1)], m.group(2))), value)
    if isinstance(value, dict):
        return {key: _resolve(item, done) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve(item, done) for item in value]
    return value


def _path(answer: Any, path: str) -> Any:
    current = answer
    for name, index in re.findall(r"([A-Za-z0-9_]+)(?:\[(\d+)\])?", path):
        current = current[name]
        if index:
            current = current[int(index)]
    return current


def _halted(ref: str) -> JSONDict:
    return _sub_result(ref, 400, [{"errorCode": "PROCESSING_HALTED", "message": _HALTED}])


def _sub_result(
    ref: str, status: int, body: Any, headers: dict[str, str] | None = None
) -> JSONDict:
    """One Composite sub-request's answer."""
    return {
        "body": body,
        "httpHeaders": headers or {},
        "httpStatusCode": status,
        "referenceId": ref,
    }


def _public(row: JSONDict) -> JSONDict:
    return {key: value for key, value in row.items() if not key.startswith("__")}


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _oauth_error(error: str, description: str) -> FakeResponse:
    return FakeResponse(400, {"error": error, "error_description": description})
