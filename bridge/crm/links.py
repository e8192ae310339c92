"""Links to a contact and a deal in a CRM's own web UI, for `crm-bridge show`.

Built from the section's `base_url` (the account's address), so no call is made:
- amoCRM / Kommo: `https://ACCOUNT.amocrm.ru/contacts/detail/ID`, `/leads/detail/ID`;
- Pipedrive: `https://COMPANY.pipedrive.com/person/ID`, `/deal/ID`;
- Bitrix24: `https://PORTAL/crm/contact/details/ID/`, `/crm/deal/details/ID/`;
- HubSpot: the API host is shared by every account, so the UI link needs the account's
  id: `options.portal_id` (`https://app.hubspot.com/contacts/PORTAL/record/0-1/ID`,
  deals `0-3`); without it there is no link.
"""

from __future__ import annotations

from bridge.settings import CrmConfig


def record_links(config: CrmConfig, contact_id: str | None, deal_id: str | None) -> dict[str, str]:
    """{"contact": url, "deal": url} for the ids given (only those the CRM can link)."""
    base = config.base_url.rstrip("/")
    templates: dict[str, str] = {}
    if config.kind == "amocrm":
        templates = {"contact": f"{base}/contacts/detail/{{}}", "deal": f"{base}/leads/detail/{{}}"}
    elif config.kind == "pipedrive":
        templates = {"contact": f"{base}/person/{{}}", "deal": f"{base}/deal/{{}}"}
    elif config.kind == "bitrix24":
        templates = {
            "contact": f"{base}/crm/contact/details/{{}}/",
            "deal": f"{base}/crm/deal/details/{{}}/",
        }
    elif config.kind == "hubspot":
        portal = config.options.get("portal_id")
        if portal:
            app = f"https://app.hubspot.com/contacts/{portal}/record"
            templates = {"contact": f"{app}/0-1/{{}}", "deal": f"{app}/0-3/{{}}"}
    links: dict[str, str] = {}
    for name, value in (("contact", contact_id), ("deal", deal_id)):
        if value and name in templates:
            links[name] = templates[name].format(value)
    return links
